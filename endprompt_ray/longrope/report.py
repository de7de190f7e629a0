"""What a LongRoPE search leaves behind: progress lines, MLflow, the best factors file, a config snippet for
`endprompt extend`, and plots.

After every generation (so an interrupted search still leaves its best so far): one console line; on the MLflow
parent run the best perplexity so far and the generation's best (step = generation), and a child run per generation
with its candidates as a table; under <output_dir>/<name>/ the search state, every candidate (candidates.csv) and
the best factors (best_factors.yaml). At the end: extend_longrope.yaml, factors.png (the best factors per frequency
next to PI, NTK and YaRN) and best_ppl.png (best so far per generation), also logged to the parent run.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from endprompt_ray.longrope.evolution import Evolution
from endprompt_ray.plotting import pyplot
from endprompt_ray.runtime.tracking import experiment_id
from dataclasses import dataclass

RUN_NAME_TAG = "endprompt.run_name"
STATE_FILE, RUN_FILE = "search_state.json", "search_run.json"


class SearchReporter:
    """Called by the Searcher in the driver each time a generation is complete; holds only plain data, since Tune
    pickles the Searcher with it."""

    def __init__(self, run_dir: str, uri: str, run_id: str, generations: int):
        self.run_dir, self.uri, self.run_id, self.generations = run_dir, uri, run_id, generations
        self.started = time.time()
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    @classmethod
    def open(cls, spec, plan) -> "SearchReporter":
        """A new MLflow parent run for the search, its params, and the run file (a resumed search keeps its run)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(spec.uri)
        experiment = experiment_id(client, spec.experiment)
        run_id = client.create_run(experiment, run_name=spec.name,
                                   tags={RUN_NAME_TAG: spec.name, "endprompt.kind": "longrope-search"}).info.run_id
        params = {f"search.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                  for k, v in asdict(spec).items()}
        params.update({"search.window": str(plan.window), "search.scale": str(plan.scale),
                       "search.fitness": plan.fitness, "search.critical_dim": str(plan.space.critical_dim),
                       "search.upper": str(plan.space.upper), "search.lower": str(plan.space.lower)})
        client.log_batch(run_id, params=[Param(key, value[:6000]) for key, value in params.items()])
        run_dir = spec.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STATE_FILE).unlink(missing_ok=True)  # a previous search's state must not pass for this one's
        (run_dir / RUN_FILE).write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": spec.uri}))
        return cls(str(run_dir), spec.uri, run_id, spec.iterations)

    def generation_done(self, evo: Evolution) -> None:
        from mlflow.entities import Metric

        g, run_dir = evo.generation, Path(self.run_dir)
        (run_dir / STATE_FILE).write_text(json.dumps(evo.state_dict()))
        rows = candidate_rows(evo)
        write_csv(run_dir / "candidates.csv", rows)
        this = [r for r in rows if r["generation"] == g]
        best, gen_best = evo.curve[-1], min(r["ppl"] for r in this)
        failed = sum(1 for r in rows if math.isinf(r["ppl"]))
        now = int(time.time() * 1000)
        values = {"best_ppl": best, "generation_best_ppl": gen_best, "evaluations": float(len(rows))}
        self.client.log_batch(self.run_id, metrics=[Metric(k, _finite(v), now, g) for k, v in values.items()])
        experiment = self.client.get_run(self.run_id).info.experiment_id
        child = self.client.create_run(experiment, run_name=f"generation-{g}",
                                       tags={"mlflow.parentRunId": self.run_id}).info.run_id
        self.client.log_batch(child, metrics=[Metric("best_ppl", _finite(gen_best), now, 0),
                                              Metric("candidates", float(len(this)), now, 0)])
        table = run_dir / "generations" / f"generation-{g:03d}.csv"
        write_csv(table, this)
        self.client.log_artifact(child, str(table))
        self.client.set_terminated(child)
        write_best(run_dir, evo)
        print(f"[longrope search] generation {g}/{self.generations}: best so far {best:.4f} | this generation "
              f"{gen_best:.4f} | {len(rows)} evaluated ({failed} failed) | {time.time() - self.started:.0f} s",
              flush=True)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e30  # MLflow stores no infinities


def candidate_rows(evo: Evolution) -> list[dict]:
    return [{"generation": c.generation, "origin": c.origin, "ppl": c.ppl,
             "factors": " ".join(f"{f:g}" for f in evo.space.factors(c.genome))}
            for c in evo.candidates.values() if c.ppl is not None]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["generation", "origin", "ppl", "factors"])
        writer.writeheader()
        writer.writerows(rows)


def seed_scores(evo: Evolution) -> dict[str, float]:
    """The fitness of each seed (PI, NTK, YaRN, ...) as evaluated in generation 0."""
    return {c.origin: c.ppl for c in evo.candidates.values()
            if c.generation == 0 and c.origin not in ("mutation", "crossover") and c.ppl is not None}


def write_best(run_dir: Path, evo: Evolution) -> Path:
    """best_factors.yaml: the searched set with the fixed one, readable as rope.factors_file."""
    meta = json.loads((run_dir / "plan.json").read_text())
    best = evo.best()
    searched = [float(f) for f in evo.space.factors(best.genome)]
    fixed = meta.pop("fixed_factors")
    data = {"long_factor": searched if meta["searched"] == "long" else fixed,
            "short_factor": searched if meta["searched"] == "short" else meta.pop("short_factor", None) or None,
            "metadata": {**meta, "ppl": best.ppl, "seeds_ppl": seed_scores(evo),
                         "evaluations": sum(c.ppl is not None for c in evo.candidates.values()),
                         "generations": len(evo.curve), "best_ppl_by_generation": list(evo.curve)}}
    if data["short_factor"] is None:
        del data["short_factor"]
    path = run_dir / "best_factors.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120))
    return path


def write_plan(spec, plan) -> None:
    """What write_best needs beside the search state: the fixed factor set and the extension's numbers."""
    params = plan.config.rope_parameters
    fixed = params["short_factor"] if spec.factors == "long" else params["long_factor"]
    meta = {"model": spec.model, "original_max_position_embeddings": plan.window, "target_length": spec.target_length,
            "scale": plan.scale, "attention_factor": params["attention_factor"], "searched": spec.factors,
            "mode": spec.mode, "fitness": plan.fitness, "critical_dim": plan.space.critical_dim,
            "fixed_factors": fixed, "references": plan.references}
    if spec.factors == "long" and any(f != 1.0 for f in fixed):
        meta["short_factor"] = fixed
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / "plan.json").write_text(json.dumps(meta))


def extend_snippet(spec, factors_path: Path) -> Path:
    rope = {"type": "longrope", "factors_file": str(factors_path)}
    for key in ("factor", "original_max_position_embeddings", "attention_factor"):
        if getattr(spec, key) is not None:
            rope[key] = getattr(spec, key)
    if spec.replace_existing:
        rope["replace_existing"] = True
    snippet = {"model": {"name_or_path": spec.model}, "method": {"target_length": spec.target_length}, "rope": rope}
    path = spec.run_dir / "extend_longrope.yaml"
    path.write_text(f"# the searched factors, for EndPrompt on top of them:\n#   endprompt extend --config {path}\n"
                    + yaml.safe_dump(snippet, sort_keys=False))
    return path


def plot_search(run_dir: Path, evo: Evolution, references: dict) -> dict[str, Path]:
    plt = pyplot()
    files = {"factors_plot": run_dir / "factors.png", "curve_plot": run_dir / "best_ppl.png"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    best = evo.space.factors(evo.best().genome)
    for name, factors in references.items():
        ax.plot(range(len(factors)), factors, marker=".", linestyle="--", label=name)
    ax.plot(range(len(best)), best, marker="o", linewidth=2, color="black", label=f"searched (ppl {evo.best().ppl:.3f})")
    if evo.space.critical_dim:
        ax.axvline(evo.space.critical_dim, color="grey", linestyle=":", label="critical dimension")
    ax.set_xlabel("rotary frequency index i (high frequency -> low)")
    ax.set_ylabel("interpolation factor (frequency divided by)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(files["factors_plot"], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(len(evo.curve)), evo.curve, marker="o", color="black", label="best so far")
    seeds = {k: v for k, v in seed_scores(evo).items() if math.isfinite(v)}
    for i, (name, ppl) in enumerate(seeds.items()):
        ax.axhline(ppl, linestyle="--", linewidth=1, label=f"seed {name} {ppl:.3f}", color=f"C{i}")
    values = [v for v in [*evo.curve, *seeds.values()] if math.isfinite(v)]
    if values and max(values) > 3 * min(values):
        ax.set_yscale("log")
    ax.set_xlabel("generation (0: initial population)")
    ax.set_ylabel("fitness (perplexity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(files["curve_plot"], dpi=120)
    plt.close(fig)
    return files


def finish(spec, plan, started: float):
    """The outputs from the last finished generation's state (also after an interrupted or a resumed search),
    logged to the parent run, which is closed FINISHED, or KILLED when generations remain (resume it)."""
    from mlflow.tracking import MlflowClient


    run_dir = spec.run_dir
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        raise RuntimeError(f"the search finished no generation (no {state_path}); see Ray's logs for the trials")
    evo = Evolution.from_state(json.loads(state_path.read_text()))
    run = json.loads((run_dir / RUN_FILE).read_text())
    files = {"best_factors": write_best(run_dir, evo), "candidates": run_dir / "candidates.csv"}
    files["extend_config"] = extend_snippet(spec, files["best_factors"])
    files.update(plot_search(run_dir, evo, plan.references if spec.factors == "long" else {}))
    client = MlflowClient(run["tracking_uri"])
    for path in files.values():
        client.log_artifact(run["mlflow_run_id"], str(path))
    client.set_terminated(run["mlflow_run_id"], "FINISHED" if evo.finished else "KILLED")  # KILLED: resumable
    best = evo.best()
    scored = [c for c in evo.candidates.values() if c.ppl is not None]
    return SearchResult(best.ppl, [float(f) for f in evo.space.factors(best.genome)], list(evo.curve), len(scored),
                        sum(math.isinf(c.ppl) for c in scored), files, run["mlflow_run_id"],
                        time.perf_counter() - started, evo.finished)


@dataclass
class SearchResult:
    best_ppl: float
    best_factors: list[float]
    curve: list[float]
    evaluations: int
    failures: int
    files: dict
    mlflow_run_id: str
    wall_time_s: float
    complete: bool  # False: interrupted before the last generation (endprompt search-rope --resume)
