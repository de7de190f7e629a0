"""The toy base: a small Llama pretrained by the project at a short window on text that requires retrieval.

A random model scores 0 at every length, so nothing about context extension can be seen on it. The toy base
retrieves at its window (256 tokens) and fails far beyond it, which is exactly what an extension method must fix.
Its corpus is built from the two probes the project evaluates with, so the skill is learnable in minutes on a CPU:

    passkey episodes   Landmark Attention's passkey prompt with its answer ("... The pass key is 12345.")
    station reports    demo-corpus documents that state a code at the head and repeat it at the end

Each document is a run of episodes at least one window long (a sample is a document's first window), so no window
is padded or packed. Pretraining goes through the project's own pipeline (Ray Data -> Ray Train + DeepSpeed ->
export) as `full_length` at the window with RoPE unscaled. The result is shipped in `assets/tiny-base/`;
`python -m endprompt_ray.toybase` rebuilds it deterministically and reports its scores.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .demo_corpus import generate_documents, make_document
from .modeling import TOY_BASE, TOY_BASE_DIR, TinySpec


@dataclass(frozen=True)
class ToyBaseSpec:
    model: TinySpec = field(default_factory=lambda: TinySpec(hidden_size=128, intermediate_size=340,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=4, max_position_embeddings=256))
    documents: int = 24000  # one training window each
    passkey_share: float = 0.9  # of episodes; the rest are station reports (the report_code probe's format)
    max_report_sentences: int = 8  # reports short enough that head and end share a window
    steps: int = 1500
    micro_batch_size: int = 8  # per worker, 2 workers
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0


# ---- corpus ----------------------------------------------------------------------------------------------------------

def passkey_episode(rng: np.random.Generator, window_words: int) -> str:
    """A passkey prompt with its answer, in the evaluation's exact format. Half the episodes draw their filler
    uniformly up to a window (the distances evaluated), half log-uniformly (short copies teach the skill fast)."""
    from .eval.passkey import passkey_prompt

    key = int(rng.integers(10_000, 100_000))
    if rng.random() < 0.5:
        words = int(rng.integers(0, window_words + 1))
    else:
        words = int(np.expm1(rng.uniform(0, np.log1p(window_words))))
    return f"{passkey_prompt(key, float(rng.random()), words)} {key}."


def episodes(rng: np.random.Generator, spec: ToyBaseSpec):
    window_words = spec.model.max_position_embeddings // 2  # a filler word is one or two tokens
    while True:
        if rng.random() < spec.passkey_share:
            yield passkey_episode(rng, window_words)
        else:
            yield make_document(rng, int(rng.integers(1, spec.max_report_sentences + 1)))


def toy_documents(spec: ToyBaseSpec, tokenizer, count: int | None = None, seed: int | None = None) -> list[str]:
    """Documents of whole episodes, each at least one window long in `tokenizer`'s tokens (a sample is a
    document's first window, so only a document's last episode can be cut)."""
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    stream, window = episodes(rng, spec), spec.model.max_position_embeddings
    wanted = spec.documents if count is None else count
    out, parts, tokens = [], [], 0
    while len(out) < wanted:
        batch = [next(stream) for _ in range(256)]  # tokenised together: far faster than one call per episode
        for text, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            parts.append(text)
            tokens += len(ids) + 1  # + the newline joining episodes
            if tokens >= window:
                out.append("\n".join(parts))
                parts, tokens = [], 0
                if len(out) == wanted:
                    break
    return out


def build_toy_tokenizer(spec: ToyBaseSpec):
    """Byte-level BPE like the tiny preset's, trained on both episode kinds, with digits split one by one so a key
    is copied digit by digit (as Llama's tokenizer splits numbers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(spec.seed + 1)
    stream = episodes(rng, spec)
    texts = [next(stream) for _ in range(600)] + generate_documents(100, seed=spec.seed + 2)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.model.vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                  special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=spec.model.max_position_embeddings)


# ---- building ----------------------------------------------------------------------------------------------------------

def pretrain_overrides(spec: ToyBaseSpec, init_dir: Path, corpus: Path, output_dir: Path) -> list[str]:
    """The pretraining run as ordinary `--set` overrides: contiguous windows, RoPE unscaled, no extension."""
    window = spec.model.max_position_embeddings
    return [f"run.name={TOY_BASE}-build", f"run.output_dir={output_dir}", f"run.seed={spec.seed}",
            f"model.name_or_path={init_dir}", "method.kind=full_length", f"method.physical_length={window}",
            f"method.target_length={window}", "method.short_docs=skip", "rope.type=none",
            f"data.paths=[{corpus}]", "data.batch_size=256", f"train.max_steps={spec.steps}",
            f"train.micro_batch_size={spec.micro_batch_size}", f"train.learning_rate={spec.learning_rate}",
            f"train.warmup_steps={spec.warmup_steps}", f"train.checkpoint_every={spec.steps}", "train.report_every=50",
            "train.gradient_checkpointing=false", "eval.enabled=false"]


def build_toy_base(destination: Path = TOY_BASE_DIR, spec: ToyBaseSpec = ToyBaseSpec(),
                   work_dir: Path | None = None) -> Path:
    """Generate the corpus, pretrain through `run_extend`, and write the exported model to `destination`."""
    from .config import load_config
    from .modeling import build_tiny_model
    from .pipeline import run_extend

    work = Path(work_dir or tempfile.mkdtemp(prefix="toy-base-"))
    tokenizer = build_toy_tokenizer(spec)
    init_dir = work / "init"
    build_tiny_model(tokenizer, spec.model).save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in toy_documents(spec, tokenizer)))
    result = run_extend(load_config(None, pretrain_overrides(spec, init_dir, corpus, work / "outputs")))
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(result.model_dir, destination)
    (destination / "toy_base.json").write_text(json.dumps({"spec": asdict(spec), "final_loss":
                                                           result.final_metrics.get("loss")}, indent=2))
    return destination


# ---- scoring and the command ------------------------------------------------------------------------------------------

def score_toy_base(model_dir: Path, out_dir: Path, lengths=(256, 2048), samples: int = 8) -> dict:
    """Passkey accuracy (%) and perplexity by length: the window it must pass and 8x the window it must fail."""
    from .eval.generation import load_model_and_tokenizer
    from .eval.passkey import PasskeySettings, run_passkey
    from .eval.perplexity import PerplexitySettings, run_perplexity

    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    passkey = run_passkey(model, tokenizer, PasskeySettings(lengths=list(lengths), num_samples=samples,
                                                            batch_size=8), out_dir / "passkey")
    ppl = run_perplexity(model, tokenizer, PerplexitySettings(lengths=list(lengths), batch_size=4), out_dir / "ppl")
    return {"passkey": {int(n): v for n, v in passkey.by_length.items()},
            "passkey_by_depth": {int(n): {f"{d:g}": v for d, v in by.items()} for n, by in passkey.accuracy.items()},
            "ppl": {int(n): round(v, 3) for n, v in ppl.ppl.items()},
            "tail_ppl": {int(n): round(v, 3) for n, v in ppl.tail_ppl.items()}}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m endprompt_ray.toybase", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=TOY_BASE_DIR, help=f"model directory (default {TOY_BASE_DIR})")
    parser.add_argument("--steps", type=int, default=ToyBaseSpec.steps, help="pretraining steps")
    parser.add_argument("--score-only", action="store_true", help="score the model in --output without training")
    args = parser.parse_args(argv)
    from .pipeline import quiet_logs

    started = time.perf_counter()
    if not args.score_only:
        quiet_logs(Path(tempfile.gettempdir()) / "toy-base-build.log")
        build_toy_base(args.output, ToyBaseSpec(steps=args.steps))
    scores = score_toy_base(args.output, Path(tempfile.mkdtemp(prefix="toy-base-scores-")))
    record = args.output / "toy_base.json"
    if record.exists():  # the build's record carries the scores it was shipped with
        record.write_text(json.dumps({**json.loads(record.read_text()), "scores": scores}, indent=2))
    print(json.dumps({"model_dir": str(args.output), **scores, "wall_time_s": round(time.perf_counter() - started)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
