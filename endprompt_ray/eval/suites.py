"""The one evaluation-suite runner: a registry of suites by name, run one after another on one model.

Every entry point (the job's before/after evaluation, the evaluate command, the LongRoPE comparison, the toy-base
scorer) runs its suites through `evaluate_suites`, which is the one place that

- sorts the lengths ascending (every suite then scores its lengths from the shortest up), and
- puts a dynamic-NTK rotary module back at its original frequencies before each suite: transformers keeps such a
  module scaled for the longest call it has seen, so without the reset a suite that follows one at a longer length
  would score at that length's frequencies.

A suite is one `Suite` entry in `SUITES`. To add one, write (or reuse) five small functions and register them:

    SUITES["my_probe"] = Suite(
        settings=lambda options, lengths: MyProbeSettings(lengths=lengths, num_samples=options.passkey_samples,
                                                          batch_size=options.batch_size, seed=options.seed,
                                                          progress=options.progress),
        run=run_my_probe,                     # run_my_probe(model, tokenizer, settings, out_dir) -> result
        scores=probe_scores("my_probe"),      # result -> {row: {length: value}} for the comparison table
        log=log_my_probe_to_mlflow,           # (result, artifact_path or None for the suite's default)
        format=format_my_probe)               # result -> the text table the evaluate command prints

`model` is a loaded model (its tokenizer beside it) or a model directory (tokenizer None: each suite loads it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import is_model_path
from endprompt_ray.eval.heldout import HeldoutSettings, run_heldout
from endprompt_ray.eval.longbench import LongBenchSettings, format_longbench, log_longbench_to_mlflow, run_longbench
from endprompt_ray.eval.passkey import PasskeySettings, format_passkey, log_passkey_to_mlflow, run_passkey
from endprompt_ray.eval.perplexity import (DEMO_DOCUMENTS, PerplexitySettings, format_perplexity,
                                           log_perplexity_to_mlflow, run_perplexity)
from endprompt_ray.eval.ruler import RulerSettings, format_table, log_ruler_to_mlflow, run_ruler
from endprompt_ray.rope.scaling import reset_dynamic_rope

Scores = dict[str, dict[int, float]]  # row key (e.g. "passkey", "passkey_early", "ppl") -> length -> value


@dataclass
class SuiteOptions:
    """Everything a suite's settings are built from; each entry point fills it from its own inputs.

    The defaults are the suites' own settings defaults, so an entry point that sets nothing gets what calling
    `run_passkey(..., PasskeySettings(lengths=...))` and friends would."""
    seed: int = 42  # passkey, report_code and RULER samples
    batch_size: int = 1  # prompts (or perplexity windows) per forward call
    progress: bool = True  # progress bars
    passkey_samples: int = 5  # per length and depth (passkey, report_code)
    passkey_depths: list[float] | None = None  # None: passkey's default depths (report_code always uses depth 0)
    ppl_documents: str | None = None  # held-out text; None: the demo corpus with its held-out seed
    ppl_text_field: str = "text"
    ppl_num_documents: int | None = DEMO_DOCUMENTS
    ppl_tail_tokens: int = 32
    ruler_tasks: list[str] | None = None  # None: every task whose data is available
    ruler_samples: int = 10  # per task and length
    essay_path: str | None = None
    squad_path: str | None = None
    hotpotqa_path: str | None = None
    ruler_workers: int | None = None  # Ray actors for RULER (None: automatic)
    longbench_dir: str | None = None  # LongBench folder (needed by the longbench suite)
    longbench_datasets: list[str] | None = None
    longbench_samples: int | None = None
    longbench_length: int | None = None  # None: the model's window
    # per suite, settings fields that replace what the options give, e.g. {"passkey": {"batch_size": 8}} or
    # {"ruler": {"lengths": [65536]}} (lengths are sorted as everywhere)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    settings: Callable[[SuiteOptions, list[int]], Any]  # (options, ascending lengths) -> the suite's settings
    run: Callable[[Any, Any, Any, Path], Any]  # (model, tokenizer, settings, out_dir) -> result
    scores: Callable[[Any], Scores]  # result -> per-length rows for the comparison table
    log: Callable[[Any, str | None], None]  # (result, artifact path or None: the suite's default) into the active run
    format: Callable[[Any], str]  # result -> printed table


def probe_scores(name: str) -> Callable[[Any], Scores]:
    """Rows of a retrieval probe whose result has by_length / early_by_length / late_by_length (a PasskeyResult)."""
    def scores(result) -> Scores:
        return {name: dict(result.by_length), f"{name}_early": dict(result.early_by_length),  # needle in 1st half
                f"{name}_late": dict(result.late_by_length)}
    return scores


def _logger(log: Callable[..., None]) -> Callable[[Any, str | None], None]:
    """A suite's MLflow logger that keeps its own default artifact path when given None."""
    return lambda result, artifact_path=None: (log(result, artifact_path=artifact_path) if artifact_path
                                                else log(result))


def _probe(probe: str) -> Suite:
    return Suite(
        settings=lambda o, lengths: PasskeySettings(
            lengths=lengths, depths=o.passkey_depths if probe == "passkey" else None, num_samples=o.passkey_samples,
            batch_size=o.batch_size, seed=o.seed, probe=probe, progress=o.progress),
        run=run_passkey, scores=probe_scores(probe), log=_logger(log_passkey_to_mlflow), format=format_passkey)


def _heldout(probe: str) -> Suite:
    """A held-out retrieval probe (eval/heldout.py): a format no generated training corpus contains."""
    return Suite(
        settings=lambda o, lengths: HeldoutSettings(
            lengths=lengths, probe=probe, depths=o.passkey_depths, num_samples=o.passkey_samples,
            batch_size=o.batch_size, seed=o.seed, progress=o.progress),
        run=run_heldout, scores=probe_scores(probe), log=_logger(log_passkey_to_mlflow), format=format_passkey)


SUITES: dict[str, Suite] = {  # in this order the evaluate command runs and prints them
    "ruler": Suite(
        settings=lambda o, lengths: RulerSettings(
            lengths=lengths, tasks=o.ruler_tasks, num_samples=o.ruler_samples, batch_size=o.batch_size, seed=o.seed,
            essay_path=o.essay_path, squad_path=o.squad_path, hotpotqa_path=o.hotpotqa_path, workers=o.ruler_workers,
            progress=o.progress),
        run=run_ruler, scores=lambda r: {"ruler": dict(r.averages)}, log=_logger(log_ruler_to_mlflow),
        format=lambda r: "RULER\n" + format_table(r)),
    "passkey": _probe("passkey"),
    "report_code": _probe("report_code"),
    "locker": _heldout("locker"),
    "ticket_qa": _heldout("ticket_qa"),
    "ppl": Suite(
        settings=lambda o, lengths: PerplexitySettings(
            lengths=lengths, documents_path=o.ppl_documents, text_field=o.ppl_text_field,
            num_documents=o.ppl_num_documents, tail_tokens=o.ppl_tail_tokens, batch_size=o.batch_size,
            progress=o.progress),
        run=run_perplexity, scores=lambda r: {"ppl": dict(r.ppl)}, log=_logger(log_perplexity_to_mlflow),
        format=lambda r: "Perplexity\n" + format_perplexity(r)),
    "longbench": Suite(  # one window (its own truncation), no lengths: nothing for the per-length table
        settings=lambda o, lengths: LongBenchSettings(o.longbench_dir, o.longbench_datasets, o.longbench_samples,
                                                      o.longbench_length, o.batch_size),
        run=run_longbench, scores=lambda r: {}, log=_logger(log_longbench_to_mlflow),
        format=lambda r: "LongBench\n" + format_longbench(r)),
}


def check_suites(names: Sequence[str], where: str = "suites") -> None:
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise EvalInputError(f"unknown suite(s) {', '.join(unknown)} in {where}; choose from {', '.join(SUITES)}")


def suite_settings(name: str, options: SuiteOptions, lengths: Sequence[int]):
    """The settings `name` runs with: built from the options at the ascending lengths, then its overrides."""
    check_suites([name])
    settings = SUITES[name].settings(options, sorted(set(lengths)))
    settings = dataclasses.replace(settings, **options.overrides.get(name, {}))
    if getattr(settings, "lengths", None):
        settings = dataclasses.replace(settings, lengths=sorted(set(settings.lengths)))
    return settings


def evaluate_suites(model, tokenizer, names: Sequence[str], lengths: Sequence[int], out_dir: str | Path,
                    options: SuiteOptions | None = None, folders: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{suite: result} for `names`, in that order, each written under out_dir / (folders[name] or name)."""
    check_suites(names)
    options, folders = options or SuiteOptions(), folders or {}
    out_dir, results = Path(out_dir), {}
    for name in names:
        settings = suite_settings(name, options, lengths)
        if not is_model_path(model):  # a directory is loaded fresh by the suite itself
            reset_dynamic_rope(model)
        results[name] = SUITES[name].run(model, tokenizer, settings, out_dir / folders.get(name, name))
    return results


def suite_scores(results: Mapping[str, Any]) -> Scores:
    """The comparison table's rows of every result: {"passkey": {256: 100.0, ...}, "ppl": {...}, ...}."""
    return {row: by for name, result in results.items() for row, by in SUITES[name].scores(result).items()}


def log_suites(results: Mapping[str, Any], artifact_root: str | None = None) -> None:
    """Each result's metrics and files into the active MLflow run, under artifact_root/<suite> when given."""
    for name, result in results.items():
        SUITES[name].log(result, f"{artifact_root}/{name}" if artifact_root else None)


def format_suites(results: Mapping[str, Any]) -> list[str]:
    return [SUITES[name].format(result) for name, result in results.items()]
