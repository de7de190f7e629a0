"""The two RULER figures: needle retrieval by depth and length, and score per task per length."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from endprompt_ray.plotting import pyplot

DEPTH_BINS = np.arange(0, 101, 10)


def niah_heatmap(needles: Sequence[tuple[int, float, bool]], lengths: Sequence[int], path: str | Path) -> Path:
    """needles: (length, depth percent, retrieved) for every needle a niah_* question asked for."""
    plt = pyplot()
    hits = np.zeros((len(DEPTH_BINS), len(lengths)))
    total = np.zeros_like(hits)
    column = {length: j for j, length in enumerate(lengths)}
    for length, depth, found in needles:
        i = int(np.abs(DEPTH_BINS - depth).argmin())
        hits[i, column[length]] += found
        total[i, column[length]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(total > 0, 100 * hits / total, np.nan)
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 5))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto", origin="upper")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
    ax.set_yticks(range(len(DEPTH_BINS)), [f"{d}%" for d in DEPTH_BINS])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth in context")
    ax.set_title("NIAH: needles retrieved (%)" if needles else "NIAH: no niah_* task was evaluated")
    fig.colorbar(image, ax=ax, label="retrieved (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def score_curves(scores: Mapping[str, Mapping[int, float]], averages: Mapping[int, float], lengths: Sequence[int],
                 path: str | Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(len(lengths))
    for task, by_length in scores.items():
        ax.plot(x, [by_length.get(n, np.nan) for n in lengths], marker="o", linewidth=1, alpha=0.8, label=task)
    ax.plot(x, [averages.get(n, np.nan) for n in lengths], marker="s", color="black", linewidth=2.5, label="average")
    ax.set_xticks(x, [str(n) for n in lengths])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("score")
    ax.set_title("RULER score per task and length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
