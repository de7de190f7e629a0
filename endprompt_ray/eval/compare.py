"""Evaluation after training: each suite (passkey, perplexity, RULER) on the extended model and, for the
before/after comparison, on the base model as it was and with RoPE scaling alone (no training).

Every variant is loaded once and its suites run on the loaded model through the one suite runner (`eval.suites`,
which resets a dynamic-NTK rotary cache before each suite). The trained model's scores are logged under
the suites' own metric names (`passkey/acc/2048`, `ppl/2048`, `ruler/avg`), the comparison rows under
`compare/<variant>/...`; the table and its figure go to MLflow as artifacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from endprompt_ray.config.schema import EvalSuite, ExtendConfig
from endprompt_ray.eval.generation import load_model_and_tokenizer
from endprompt_ray.eval.heldout import HELDOUT_PROBES, IN_DISTRIBUTION_PROBES
from endprompt_ray.eval.suites import SuiteOptions, evaluate_suites, log_suites, suite_scores, suite_settings
from endprompt_ray.models.loading import load_config, load_model, load_tokenizer
from endprompt_ray.plotting import pyplot
from endprompt_ray.rope.scaling import describe, extension_window, scaled_config

SUITES = get_args(EvalSuite)  # the job's suites (eval.suites), in the order it runs them and the table's


@dataclass
class EvalReport:
    lengths: list[int]
    scores: dict[str, dict[str, dict[int, float]]]  # variant -> suite row ("passkey", "ppl", ...) -> length -> value
    labels: dict[str, str]  # variant -> row label
    ruler: dict = field(default_factory=dict)  # the trained model's RULER summary, as before
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"lengths": self.lengths, "labels": self.labels, "ruler": self.ruler,
                "scores": {v: {s: {str(n): x for n, x in by.items()} for s, by in suites.items()}
                           for v, suites in self.scores.items()},
                "files": {k: str(p) for k, p in self.files.items()}}


def eval_lengths(cfg: ExtendConfig, original_window: int | None = None) -> list[int]:
    """eval.lengths, else the window the scaling extends, half the target and the target (1x, 4x, 8x for 256 -> 2048).

    The window is rope.extension_window of the base model's config unless given: not the exported config's
    max_position_embeddings, which is the target for most types but stays the original window for dynamic NTK."""
    if original_window is None:
        original_window = extension_window(load_config(cfg.model.name_or_path, cfg.model.tiny), cfg.rope)
    L = cfg.method.target_length
    return sorted(set(cfg.eval.lengths or [n for n in (original_window, L // 2, L) if 0 < n <= L]))


def suite_options(cfg: ExtendConfig) -> SuiteOptions:
    """The suites' options from the `eval` section; RULER runs at eval.lengths, else at the target only."""
    e = cfg.eval
    return SuiteOptions(seed=cfg.run.seed, batch_size=e.batch_size, passkey_samples=e.passkey_samples,
                        passkey_depths=e.passkey_depths or None, ppl_documents=e.ppl_documents,
                        ppl_num_documents=e.ppl_num_documents, ruler_tasks=e.tasks or None,
                        ruler_samples=e.num_samples, essay_path=e.essay_path, squad_path=e.squad_path,
                        hotpotqa_path=e.hotpotqa_path,
                        overrides={"ruler": {"lengths": e.lengths or [cfg.method.target_length]}})


def ruler_settings(cfg: ExtendConfig):
    return suite_settings("ruler", suite_options(cfg), cfg.eval.lengths or [cfg.method.target_length])


def _variants(cfg: ExtendConfig, model_dir: Path):
    """(name, label, loader) for each model to evaluate; loaders run one at a time so one model is in memory."""
    name, tiny = cfg.model.name_or_path, cfg.model.tiny
    steps = cfg.train_steps
    base_config = load_config(name, tiny)
    scaled = scaled_config(base_config, cfg.method.target_length, cfg.rope)
    scaling = describe(base_config, cfg.method.target_length, cfg.rope)  # s, not transformers' dynamic factor
    out = []
    if cfg.eval.compare:
        out.append(("base", "base (no scaling)",
                    lambda: load_model_and_tokenizer(load_model(name, tiny=tiny), load_tokenizer(name, tiny))))
        if steps:
            out.append(("rope_only", f"rope only ({scaling})",
                        lambda: load_model_and_tokenizer(load_model(name, config=scaled, tiny=tiny),
                                                         load_tokenizer(name, tiny))))
    label = f"{cfg.method.kind} ({scaling}, {steps} steps)" if steps else f"rope only ({scaling})"
    out.append((final_variant(cfg), label, lambda: load_model_and_tokenizer(str(model_dir))))
    return out


def final_variant(cfg: ExtendConfig) -> str:
    """The exported model's row: rope_only exports the scaled weights without training."""
    return "trained" if cfg.train_steps else "rope_only"


def run_suites(cfg: ExtendConfig, model, tokenizer, lengths: list[int], out_dir: Path) -> dict:
    """{suite: result} for the configured suites on one loaded model (the runner resets dynamic NTK before each)."""
    return evaluate_suites(model, tokenizer, [s for s in SUITES if s in cfg.eval.suites], lengths, out_dir,
                           suite_options(cfg))


def evaluate_after_training(cfg: ExtendConfig, model_dir: Path) -> EvalReport:
    """Run the suites on every variant, write the comparison table and figure, log all of it to the active run."""
    import mlflow

    lengths = eval_lengths(cfg)
    root = cfg.run_dir / "eval"
    report = EvalReport(lengths=lengths, scores={}, labels={})
    for variant, label, load in _variants(cfg, model_dir):
        model, tokenizer = load()
        results = run_suites(cfg, model, tokenizer, lengths, root / variant)
        del model
        report.scores[variant], report.labels[variant] = suite_scores(results), label
        if variant == final_variant(cfg):
            log_suites(results, artifact_root="eval")
            if "ruler" in results:
                r = results["ruler"]
                report.ruler = {"overall": r.overall, "averages": r.averages, "covered_tasks": list(r.covered_tasks),
                                "skipped": dict(r.skipped), "files": {k: str(v) for k, v in r.files.items()}}
        else:
            mlflow.log_metrics({f"compare/{variant}/{suite}/{n}": value for suite, by in report.scores[variant].items()
                                for n, value in by.items() if value == value})  # NaN: nothing to log
    report.files = write_comparison(report, root)
    for path in report.files.values():
        mlflow.log_artifact(str(path), artifact_path="eval")
    return report


# ---- the before/after table and figure ---------------------------------------------------------------------------

def format_comparison(report: EvalReport) -> str:
    """One row per variant: passkey accuracy (%), perplexity and RULER average at each length."""
    columns = [(suite, n) for suite in SUITES for n in report.lengths
               if any(n in s.get(suite, {}) for s in report.scores.values())]
    width = max(len(label) for label in report.labels.values()) + 2
    titles = {"ppl": "PPL", "ruler": "RULER"}  # a retrieval probe: "<name> %"
    headers = [f"{titles.get(s, s + ' %')} @{n}" for s, n in columns]
    cell = max([16] + [len(h) + 2 for h in headers])
    lines = ["".ljust(width) + "".join(h.rjust(cell) for h in headers)]
    for variant, suites in report.scores.items():
        cells = []
        for suite, n in columns:
            value = suites.get(suite, {}).get(n)
            cells.append("-" if value is None else f"{value:.1f}" if suite != "ppl" else f"{value:.2f}")
        lines.append(report.labels[variant].ljust(width) + "".join(c.rjust(cell) for c in cells))
    shown = {s for s, _ in columns}
    if shown & set(IN_DISTRIBUTION_PROBES):
        lines.append(f"{', '.join(p for p in IN_DISTRIBUTION_PROBES if p in shown)}: the formats the shipped "
                     "tiny-base was pretrained on (in-distribution for tiny-base only; held out for tiny-base-recall)")
    if shown & set(HELDOUT_PROBES):
        lines.append(f"{', '.join(p for p in HELDOUT_PROBES if p in shown)}: held out (no corpus of the project "
                     "contains these formats)")
    return "\n".join(lines)


def write_comparison(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"comparison_table": out_dir / "comparison.txt", "comparison_json": out_dir / "comparison.json"}
    files["comparison_table"].write_text(format_comparison(report) + "\n")
    files["comparison_json"].write_text(json.dumps(report.to_dict(), indent=2))
    panels = [s for s in SUITES if s != "ruler" and any(s in v for v in report.scores.values())]
    if panels:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, suite in zip(axes[0], panels):
            for variant, suites in report.scores.items():
                points = sorted(suites.get(suite, {}).items())
                ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=report.labels[variant])
            ax.set_xscale("log", base=2)
            ax.set_xticks(report.lengths, [str(n) for n in report.lengths])
            ax.set_xlabel("context length (tokens)")
            if suite != "ppl":
                held = "held out" if suite in HELDOUT_PROBES else "in-distribution for tiny-base only"
                ax.set_ylabel(f"{suite} accuracy (%)")
                ax.set_title(f"{suite} ({held})", fontsize=9)
                ax.set_ylim(-5, 105)
            else:
                ax.set_ylabel("perplexity (log scale)")
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle("before / after context extension")
        fig.tight_layout()
        files["comparison_plot"] = out_dir / "comparison.png"
        fig.savefig(files["comparison_plot"], dpi=120)
        plt.close(fig)
    return files
