"""The toy base: a small Llama pretrained by the project at a short window on text that requires retrieval.

A random model scores 0 at every length, so nothing about context extension can be seen on it. The toy base
retrieves at its window (256 tokens) and fails far beyond it, which is exactly what an extension method must fix.
Its corpus is built from the two probes the project evaluates with, so the skill is learnable in minutes on a CPU:

    passkey episodes   Landmark Attention's passkey prompt with its answer ("... The pass key is 12345.")
    station reports    demo-corpus documents that state a code at the head and repeat it at the end

Each document is a run of episodes at least one window long (a sample is a document's first window), so no window
is padded or packed. Pretraining goes through the project's own pipeline (Ray Data -> Ray Train + DeepSpeed ->
export) as `full_length` at the window with RoPE unscaled. The result is shipped in `assets/tiny-base/`;
`python -m endprompt_ray.jobs.toybase` runs the recipe (deterministically: the same weights bit for bit on a
machine, whatever else runs on it) and reports its scores; the shipped weights come from the recipe's first version.

The recall recipe (`--recipe recall`, shipped in `assets/tiny-base-recall/`) holds every evaluation format out: a
copy warm-up at 32 tokens (corpora/copying.py), then copy documents and recall episodes (corpora/recall.py) at the
window, so what it learns to retrieve is whatever recurs, not one template.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from endprompt_ray.config.loader import load_config
from endprompt_ray.corpora.copying import copy_documents
from endprompt_ray.corpora.toy import pretraining_documents
from endprompt_ray.eval.copying import copy_accuracy
from endprompt_ray.eval.generation import load_model_and_tokenizer
from endprompt_ray.eval.heldout import HELDOUT_PROBES
from endprompt_ray.eval.suites import SuiteOptions, evaluate_suites
from endprompt_ray.jobs.extend import quiet_logs, run_extend
from endprompt_ray.models.loading import TOY_BASE, TOY_BASES, build_tiny_model
from endprompt_ray.models.toy import RECALL_SPEC, ToyBaseSpec, build_toy_tokenizer
from endprompt_ray.resources import RECALL_BASE_DIR, TOY_BASE_DIR


RECIPES = {"episodes": ToyBaseSpec(), "recall": RECALL_SPEC}


# ---- building ----------------------------------------------------------------------------------------------------------

def pretrain_overrides(spec: ToyBaseSpec, init_dir: Path, corpus: Path, output_dir: Path, stage: str = "main"
                       ) -> list[str]:
    """A pretraining stage as ordinary `--set` overrides: contiguous windows, RoPE unscaled, no extension. `stage`
    "copy" is the copy warm-up (its own window, steps and batch), "main" the recipe's main stage."""
    window, steps, micro, name = (spec.model.max_position_embeddings, spec.steps, spec.micro_batch_size, "build")
    if stage == "copy":
        window, steps, micro, name = spec.copy_window, spec.copy_steps, spec.copy_micro_batch_size, "copy-warmup"
    return [f"run.name={TOY_BASE}-{name}", f"run.output_dir={output_dir}", f"run.seed={spec.seed}",
            f"model.name_or_path={init_dir}", "method.kind=full_length", f"method.physical_length={window}",
            f"method.target_length={window}", "method.short_docs=skip", "rope.type=none",
            f"data.paths=[{corpus}]", "data.batch_size=256", f"train.max_steps={steps}",
            f"train.micro_batch_size={micro}", f"train.learning_rate={spec.learning_rate}",
            f"train.warmup_steps={spec.warmup_steps}", f"train.checkpoint_every={steps}", "train.report_every=50",
            "train.gradient_checkpointing=false", "eval.enabled=false"]


def _write_corpus(path: Path, documents: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in documents))
    return path


def build_toy_base(destination: Path = TOY_BASE_DIR, spec: ToyBaseSpec = ToyBaseSpec(),
                   work_dir: Path | None = None) -> Path:
    """Generate the corpora, pretrain through `run_extend` (the copy warm-up first where the recipe has one), and
    write the exported model to `destination`."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="toy-base-"))
    tokenizer = build_toy_tokenizer(spec)
    init_dir = work / "init"
    build_tiny_model(tokenizer, spec.model).save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    warmup_loss = None
    if spec.copy_window:  # one epoch of copy documents: every step sees new ones
        documents = copy_documents(tokenizer, spec.copy_steps * spec.copy_micro_batch_size * 2, spec.copy_window,
                                   seed=spec.seed + 3)
        corpus = _write_corpus(work / "copy_corpus.jsonl", documents)
        warmup = run_extend(load_config(None, pretrain_overrides(spec, init_dir, corpus, work / "copy", "copy")))
        init_dir, warmup_loss = Path(warmup.model_dir), warmup.final_metrics.get("loss")
    corpus = _write_corpus(work / "corpus.jsonl", pretraining_documents(spec, tokenizer))
    result = run_extend(load_config(None, pretrain_overrides(spec, init_dir, corpus, work / "outputs")))
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(result.model_dir, destination)
    record = {"spec": asdict(spec), "final_loss": result.final_metrics.get("loss")}
    if warmup_loss is not None:
        record["copy_warmup_final_loss"] = warmup_loss
    (destination / "toy_base.json").write_text(json.dumps(record, indent=2))
    return destination


# ---- scoring and the command ------------------------------------------------------------------------------------------

def score_toy_base(model_dir: Path, out_dir: Path, lengths=(256, 2048), samples: int = 8) -> dict:
    """Passkey accuracy (%) and perplexity by length: the window it must pass and 8x the window it must fail; the
    held-out probes' accuracy (formats no recipe trains on); and copy accuracy (eval/copying.py), whether the base
    can continue a span at all, at a short length and at these."""
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    batches = {"passkey": {"batch_size": 8}, "ppl": {"batch_size": 4}, **{p: {"batch_size": 8} for p in HELDOUT_PROBES}}
    options = SuiteOptions(passkey_samples=samples, overrides=batches)
    results = evaluate_suites(model, tokenizer, ["passkey", *HELDOUT_PROBES, "ppl"], list(lengths), out_dir, options)
    passkey, ppl = results["passkey"], results["ppl"]
    return {"passkey": {int(n): v for n, v in passkey.by_length.items()},
            "heldout": {p: {int(n): v for n, v in results[p].by_length.items()} for p in HELDOUT_PROBES},
            "passkey_by_depth": {int(n): {f"{d:g}": v for d, v in by.items()} for n, by in passkey.accuracy.items()},
            "copy": copy_accuracy(model, tokenizer, (64, *lengths)),
            "ppl": {int(n): round(v, 3) for n, v in ppl.ppl.items()},
            "tail_ppl": {int(n): round(v, 3) for n, v in ppl.tail_ppl.items()}}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="endprompt build-toy-base", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=None, help="model directory (default: the recipe's shipped "
                        f"base, {TOY_BASE_DIR} or {RECALL_BASE_DIR.name} beside it)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="episodes",
                        help="episodes: the shipped base's corpus (passkey prompts and station reports, the "
                             "evaluation's own formats), shipped as tiny-base; recall: a copy warm-up, then copy "
                             "documents and recall episodes, no evaluation format (corpora/copying.py, recall.py), "
                             "shipped as tiny-base-recall")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the recipe's)")
    parser.add_argument("--copy-steps", type=int, default=None,
                        help="copy warm-up steps, for a recipe that has one (default: the recipe's)")
    parser.add_argument("--score-only", action="store_true", help="score the model in --output without training")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = next(folder for folder, recipe in TOY_BASES.values() if recipe == args.recipe)

    started = time.perf_counter()
    if not args.score_only:
        quiet_logs(Path(tempfile.gettempdir()) / "toy-base-build.log")
        spec = RECIPES[args.recipe]
        build_toy_base(args.output, replace(spec, steps=args.steps or spec.steps,
                                                  copy_steps=args.copy_steps or spec.copy_steps))
    scores = score_toy_base(args.output, Path(tempfile.mkdtemp(prefix="toy-base-scores-")))
    record = args.output / "toy_base.json"
    if record.exists():  # the build's record carries the scores it was shipped with
        record.write_text(json.dumps({**json.loads(record.read_text()), "scores": scores}, indent=2))
    print(json.dumps({"model_dir": str(args.output), **scores, "wall_time_s": round(time.perf_counter() - started)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
