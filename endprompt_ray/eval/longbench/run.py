"""Run LongBench (v1, English) from local JSONL files: prompts, middle truncation to the window, greedy generation."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import greedy_generate, load_model_and_tokenizer
from endprompt_ray.eval.io import iter_jsonl, write_jsonl
from endprompt_ray.eval.longbench.config import CATEGORIES, DATASETS, MAX_NEW_TOKENS, PROMPTS, STOP_AT_NEWLINE
from endprompt_ray.eval.longbench.metrics import score_dataset


@dataclass
class LongBenchSettings:
    data_dir: str  # the LongBench folder (holding data/<dataset>.jsonl) or the data folder itself
    datasets: list[str] | None = None  # None: every English dataset whose file exists
    max_samples: int | None = None  # first N lines of each file; None: all
    context_length: int | None = None  # prompt + output budget; None: the model's max_position_embeddings
    batch_size: int = 1
    progress: bool = True


@dataclass
class LongBenchResult:
    scores: dict[str, float]  # dataset -> score (0-100)
    categories: dict[str, float]  # category -> mean over its evaluated datasets
    avg: float  # mean over evaluated datasets
    macro_avg: float  # mean over evaluated categories
    covered: dict[str, list[str]]  # category -> datasets its average covers
    skipped: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


REQUIRED = ("context", "input", "answers")


def data_folder(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise EvalInputError(f"LongBench folder {p} does not exist; pass the folder that holds data/<dataset>.jsonl")
    return p / "data" if (p / "data").is_dir() else p


def load_rows(path: Path, limit: int | None = None) -> list[dict]:
    """JSONL rows with context/input/answers; a malformed line is an error naming the file and line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing or not isinstance(row["answers"], list):
            raise EvalInputError(f"{path}:{lineno}: a LongBench row needs {', '.join(REQUIRED)} (answers a list); "
                                 f"missing or malformed: {', '.join(missing) or 'answers'}")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def truncate_middle(prompt: str, tokenizer, max_tokens: int) -> str:
    """Keep the first and last max_tokens/2 tokens: instructions sit at both ends of LongBench prompts."""
    if max_tokens < 8:
        raise EvalInputError(f"a LongBench prompt budget of {max_tokens} tokens is too small; raise context_length")
    ids = tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
    while len(ids) > max_tokens:
        half = max_tokens // 2
        prompt = (tokenizer.decode(ids[:half], skip_special_tokens=True)
                  + tokenizer.decode(ids[len(ids) - half:], skip_special_tokens=True))
        new = tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
        max_tokens -= max(1, len(new) - max_tokens)  # decoding and re-encoding can merge differently at the cut
        ids = new
    return prompt


def _window(model, settings: LongBenchSettings) -> int:
    if settings.context_length:
        return settings.context_length
    window = getattr(model.config, "max_position_embeddings", None)
    if not window:
        raise EvalInputError("the model config has no max_position_embeddings; set context_length (--longbench-length)")
    return int(window)


def run_longbench(model, tokenizer, settings: LongBenchSettings, output_dir: str | Path) -> LongBenchResult:
    folder = data_folder(settings.data_dir)
    unknown = [d for d in settings.datasets or [] if d not in DATASETS]
    if unknown:
        raise EvalInputError(f"unknown LongBench dataset(s) {', '.join(unknown)}; "
                             f"English datasets: {', '.join(DATASETS)}")
    skipped, todo = {}, []
    for dataset in settings.datasets or DATASETS:
        path = folder / f"{dataset}.jsonl"
        if path.is_file():
            todo.append((dataset, path))
        else:
            skipped[dataset] = f"no file {path}"
    if not todo:
        raise EvalInputError(f"no LongBench data found under {folder} (expected <dataset>.jsonl files, e.g. "
                             f"{folder / 'hotpotqa.jsonl'})")
    rows = {dataset: load_rows(path, settings.max_samples) for dataset, path in todo}
    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    window = _window(model, settings)
    newline = tokenizer.encode("\n", add_special_tokens=False)[-1:]

    out = Path(output_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    scores = {}
    for dataset, data in rows.items():
        if not data:
            skipped[dataset] = "file has no rows"
            continue
        max_new = MAX_NEW_TOKENS[dataset]
        prompts = [truncate_middle(PROMPTS[dataset].format(**r), tokenizer, window - max_new) for r in data]
        stop = dataset in STOP_AT_NEWLINE
        preds = greedy_generate(model, tokenizer, prompts, max_new, settings.batch_size,
                                stop_token_ids=newline if stop else (), min_new_tokens=1 if stop else 0,
                                desc=f"LongBench {dataset}", progress=settings.progress)
        scores[dataset], per_sample = score_dataset(dataset, preds, [r["answers"] for r in data],
                                                    [r.get("all_classes") for r in data])
        write_jsonl(out / "predictions" / f"{dataset}.jsonl",
                    ({"_id": r.get("_id"), "pred": pred, "answers": r["answers"], "score": s,
                      "all_classes": r.get("all_classes"), "length": r.get("length")}
                     for r, pred, s in zip(data, preds, per_sample)))
    covered = {c: [d for d in ds if d in scores] for c, ds in CATEGORIES.items()}
    covered = {c: ds for c, ds in covered.items() if ds}
    categories = {c: round(float(np.mean([scores[d] for d in ds])), 2) for c, ds in covered.items()}
    result = LongBenchResult(scores, categories, round(float(np.mean(list(scores.values()))), 2),
                             round(float(np.mean(list(categories.values()))), 2), covered, skipped)
    return _write(result, out, {**dataclasses.asdict(settings), "context_length": window})


def _write(result: LongBenchResult, out: Path, settings: dict) -> LongBenchResult:
    result.files = {"predictions": out / "predictions", "summary_csv": out / "summary.csv",
                    "summary_json": out / "summary.json"}
    with open(result.files["summary_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "dataset", "score"])
        for category, datasets in result.covered.items():
            w.writerows([category, d, result.scores[d]] for d in datasets)
            w.writerow([category, "average", result.categories[category]])
        w.writerow(["all", "average over datasets", result.avg])
        w.writerow(["all", "average over categories", result.macro_avg])
    summary = {**dataclasses.asdict(result), "files": {k: str(v) for k, v in result.files.items()},
               "settings": settings}
    result.files["summary_json"].write_text(json.dumps(summary, indent=2, default=str))
    return result


def format_longbench(result: LongBenchResult) -> str:
    lines = [f"{'dataset':<22}{'score':>8}"]
    for category, datasets in result.covered.items():
        lines += [f"{d:<22}{result.scores[d]:>8.2f}" for d in datasets]
        lines.append(f"{'[' + category + ']':<22}{result.categories[category]:>8.2f}")
    lines.append(f"average over {len(result.scores)} dataset(s) {result.avg:.2f}; over {len(result.categories)} "
                 f"categories {result.macro_avg:.2f}")
    lines += [f"skipped {d}: {why}" for d, why in result.skipped.items()]
    return "\n".join(lines)


def log_longbench_to_mlflow(result: LongBenchResult, artifact_path: str = "longbench") -> None:
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_longbench_to_mlflow needs an active MLflow run")
    metrics = {f"longbench/{d}": s for d, s in result.scores.items()}
    metrics.update({f"longbench/category/{c}": s for c, s in result.categories.items()})
    metrics.update({"longbench/avg": result.avg, "longbench/macro_avg": result.macro_avg})
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(result.files["summary_csv"]), artifact_path=artifact_path)
    mlflow.log_artifact(str(result.files["summary_json"]), artifact_path=artifact_path)
