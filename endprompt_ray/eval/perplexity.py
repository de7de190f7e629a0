"""Perplexity by length on held-out documents: the metric PoSE, YaRN and LongRoPE report.

For each length n, every held-out document with at least n tokens (special tokens included, as the model receives
text) gives one window: its first n tokens. Documents with fewer tokens are counted as skipped at that length and
reported. Perplexity at n is exp(mean NLL over every predicted token of every window); the tail loss is the mean NLL
of the last `tail_tokens` predicted tokens of each window, the part that has the longest context behind it.

Held-out text is the user's files (a .txt/.md file is one document, a .jsonl line is one document from its
`text_field`, a folder holds such files), or by default the demo corpus generator with a held-out seed (training
reads seed 0): single long station reports (`demo_corpus.make_document`) with enough body sentences to exceed the
largest length, so every window is one coherent document (not several documents joined by EOS).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from endprompt_ray.corpora.reports import make_document
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import load_model_and_tokenizer, pick_device, resolve_tokenizer
from endprompt_ray.eval.io import iter_jsonl, write_jsonl
from endprompt_ray.plotting import pyplot

HELDOUT_SEED = 1234  # the demo corpus used for training is seed 0
DEMO_DOCUMENTS = 8
DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")
_LOGIT_ELEMENTS = 2 ** 26  # logits materialised at once (256 MiB in float32) while the loss is computed in chunks
# Model types whose logits are exactly lm_head(last hidden state): their full-length logits need never exist at once.
_PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})


@dataclass
class PerplexitySettings:
    lengths: list[int]
    documents_path: str | None = None  # held-out file or folder; None: the demo corpus with a held-out seed
    text_field: str = "text"  # the field holding a document in .jsonl files
    num_documents: int | None = DEMO_DOCUMENTS  # first N documents of the files (None: all) or N demo documents
    tail_tokens: int = 32
    batch_size: int = 1  # windows per forward pass
    seed: int = HELDOUT_SEED  # demo corpus only
    progress: bool = True

    def validate(self) -> None:
        if not self.lengths or any(not isinstance(n, int) or n < 2 for n in self.lengths):
            raise EvalInputError(f"lengths must be integers >= 2 (tokens), got {self.lengths!r}")
        if not 1 <= self.tail_tokens < min(self.lengths):
            raise EvalInputError(f"tail_tokens must be in [1, {min(self.lengths) - 1}] (below the shortest length, "
                                 f"whose windows predict {min(self.lengths) - 1} tokens), got {self.tail_tokens}")
        if self.batch_size < 1 or (self.num_documents is not None and self.num_documents < 1):
            raise EvalInputError(f"batch_size and num_documents must be at least 1, got {self.batch_size} and "
                                 f"{self.num_documents}")


@dataclass
class PerplexityResult:
    ppl: dict[int, float]  # length -> exp(mean NLL per predicted token)
    nll: dict[int, float]  # length -> mean NLL (nats per token)
    tail_nll: dict[int, float]  # length -> mean NLL of the last tail_tokens predicted tokens of each window
    tail_ppl: dict[int, float]  # exp(tail_nll)
    windows: dict[int, int]  # length -> documents evaluated (one window each)
    skipped_documents: dict[int, int]  # length -> documents shorter than the length, not evaluated there
    tail_tokens: int
    source: str  # where the held-out text came from
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("ppl", "nll", "tail_nll", "tail_ppl", "windows", "skipped_documents"):
            out[name] = {str(n): v for n, v in out[name].items()}
        out["files"] = {k: str(v) for k, v in self.files.items()}
        return out


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, row in iter_jsonl(path):
        text = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise EvalInputError(f"{path}:{lineno}: expected a JSON object with a string {text_field!r} field; fix "
                                 "the line or set text_field (--ppl-text-field) to the field holding the document")
        docs.append(text)
    return docs


def read_documents(path: str | Path, text_field: str = "text", limit: int | None = None) -> list[str]:
    """Documents from a .txt/.md file (one document), a .jsonl file (one per line) or a folder of such files."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix not in DOCUMENT_SUFFIXES:
        raise EvalInputError(f"held-out documents {p}: unsupported file type {p.suffix or '(none)'}; use "
                             f"{', '.join(DOCUMENT_SUFFIXES)} or a folder of them")
    if not p.exists():
        raise EvalInputError(f"held-out documents {p} do not exist; point documents_path (--ppl-documents) at a "
                             f"{', '.join(DOCUMENT_SUFFIXES)} file or a folder of them")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in DOCUMENT_SUFFIXES) if p.is_dir() else [p]
    docs: list[str] = []
    for f in files:
        docs += _jsonl_documents(f, text_field) if f.suffix == ".jsonl" else [f.read_text("utf-8", errors="replace")]
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise EvalInputError(f"held-out documents {p} hold no document ({', '.join(DOCUMENT_SUFFIXES)} files)")
    return docs[:limit]


def demo_documents(tokenizer, num_documents: int, min_tokens: int, seed: int = HELDOUT_SEED) -> list[str]:
    """Station reports from the demo generator, each sized to about 1.2 x min_tokens tokens."""
    calibration = 100  # body sentences whose tokens set the document size; a separate stream from the documents'
    sample = make_document(np.random.default_rng(seed + 1), calibration)
    per_sentence = len(tokenizer(sample, add_special_tokens=True, verbose=False)["input_ids"]) / calibration
    rng = np.random.default_rng(seed)
    return [make_document(rng, math.ceil(1.2 * min_tokens / per_sentence) + 1) for _ in range(num_documents)]


def held_out_texts(tokenizer, settings: PerplexitySettings) -> tuple[list[str], str]:
    """(documents, a description of where they came from)."""
    if settings.documents_path is not None:
        docs = read_documents(settings.documents_path, settings.text_field, settings.num_documents)
        return docs, f"{len(docs)} document(s) from {settings.documents_path}"
    count = settings.num_documents or DEMO_DOCUMENTS
    docs = demo_documents(tokenizer, count, max(settings.lengths), settings.seed)
    return docs, f"{count} demo-corpus station reports (held-out seed {settings.seed}; training uses seed 0)"


def windows(token_ids: Sequence[Sequence[int]], length: int) -> tuple[list[int], np.ndarray]:
    """(indices of the documents with at least `length` tokens, their first `length` tokens as [docs, length])."""
    docs = [i for i, ids in enumerate(token_ids) if len(ids) >= length]
    return docs, np.array([token_ids[i][:length] for i in docs], dtype=np.int64).reshape(len(docs), length)


def _plain_head(model) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (model_type in _PLAIN_HEAD_TYPES and getattr(model, "base_model", model) is not model
            and model.get_output_embeddings() is not None)


def token_nll(model, input_ids):
    """Float32 NLL of tokens 1..n-1 of each row given the tokens before it: a [batch, n - 1] tensor.

    Logits become float32 only a chunk of positions at a time; for plain-head models (llama, mistral, qwen, phi3)
    the head runs per chunk too, so a 64K window never holds its full logits."""
    import torch
    import torch.nn.functional as F

    mask = torch.ones_like(input_ids)  # explicit: without a mask transformers may infer packed sequences
    targets, predicted = input_ids[:, 1:], input_ids.shape[1] - 1
    if _plain_head(model):
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        head = model.get_output_embeddings()
        logits_at, vocab = (lambda s, e: head(hidden[:, s:e])), head.weight.shape[0]
    else:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        logits_at, vocab = (lambda s, e: logits[:, s:e]), logits.shape[-1]
    step = max(1, _LOGIT_ELEMENTS // (input_ids.shape[0] * vocab))
    return torch.cat([F.cross_entropy(logits_at(s, min(s + step, predicted)).float().transpose(1, 2),
                                      targets[:, s:s + step], reduction="none")
                      for s in range(0, predicted, step)], dim=1)


def window_records(model, token_ids: Sequence[Sequence[int]], settings: PerplexitySettings) -> list[dict]:
    """One record per (length, document) window: its mean NLL over all predicted tokens and over the tail."""
    import torch
    from tqdm.auto import tqdm

    device = pick_device(model)
    if next(model.parameters()).device != device:
        model.to(device)
    records = []
    with torch.inference_mode():
        for length in sorted(set(settings.lengths)):
            docs, ids = windows(token_ids, length)
            for start in tqdm(range(0, len(docs), settings.batch_size), desc=f"perplexity @ {length}",
                              disable=not settings.progress, unit="batch"):
                batch = torch.from_numpy(ids[start:start + settings.batch_size]).to(device)
                nll = token_nll(model, batch).double().cpu().numpy()
                records += [{"length": length, "document": doc, "tokens": nll.shape[1], "nll": float(row.mean()),
                             "tail_nll": float(row[-settings.tail_tokens:].mean())}
                            for doc, row in zip(docs[start:start + settings.batch_size], nll)]
    return records


def summarize(records: Sequence[dict], lengths: Sequence[int], num_documents: int, tail_tokens: int,
              source: str) -> PerplexityResult:
    """Per-length perplexity from window records; every window of a length predicts the same number of tokens, so
    the mean over all tokens is the mean of the window means."""
    by_length = {n: [r for r in records if r["length"] == n] for n in sorted(set(lengths))}
    nll = {n: float(np.mean([r["nll"] for r in rs])) for n, rs in by_length.items() if rs}
    tail = {n: float(np.mean([r["tail_nll"] for r in rs])) for n, rs in by_length.items() if rs}
    return PerplexityResult(ppl={n: math.exp(v) for n, v in nll.items()}, nll=nll, tail_nll=tail,
                            tail_ppl={n: math.exp(v) for n, v in tail.items()},
                            windows={n: len(rs) for n, rs in by_length.items()},
                            skipped_documents={n: num_documents - len(rs) for n, rs in by_length.items()},
                            tail_tokens=tail_tokens, source=source)


def run_perplexity(model, tokenizer, settings: PerplexitySettings, output_dir: str | Path) -> PerplexityResult:
    """Perplexity of `model` (a loaded causal LM or a model directory) by length; writes files under output_dir."""
    settings.validate()
    tokenizer = resolve_tokenizer(model, tokenizer)
    texts, source = held_out_texts(tokenizer, settings)
    token_ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    if max(map(len, token_ids)) < min(settings.lengths):
        raise EvalInputError(f"no held-out document reaches {min(settings.lengths)} tokens (the longest has "
                             f"{max(map(len, token_ids))}); supply longer documents or evaluate shorter lengths")
    model, tokenizer = load_model_and_tokenizer(model, tokenizer)
    records = window_records(model, token_ids, settings)
    result = summarize(records, settings.lengths, len(texts), settings.tail_tokens, source)
    return write_outputs(result, records, output_dir, dataclasses.asdict(settings))


def ppl_curve(result: PerplexityResult, path: str | Path) -> Path:
    plt = pyplot()
    lengths = sorted(result.ppl)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lengths, [result.ppl[n] for n in lengths], marker="o", label="all tokens")
    ax.plot(lengths, [result.tail_ppl[n] for n in lengths], marker="s", label=f"last {result.tail_tokens} tokens")
    ax.set_xscale("log", base=2)
    values = [*result.ppl.values(), *result.tail_ppl.values()]
    if max(values) > 10 * min(values):  # beyond-window blow-ups span decades; a flat curve reads better linear
        ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity by context length")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_outputs(result: PerplexityResult, records: Sequence[dict], output_dir: str | Path,
                  settings: dict) -> PerplexityResult:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.files = {"windows": out / "windows.jsonl", "summary_json": out / "summary.json", "plot": out / "ppl.png"}
    write_jsonl(result.files["windows"], records)
    ppl_curve(result, result.files["plot"])
    result.files["summary_json"].write_text(json.dumps({**result.to_dict(), "settings": settings}, indent=2))
    return result


def format_perplexity(result: PerplexityResult) -> str:
    lines = [f"{'length':>8}{'windows':>9}{'skipped':>9}{'ppl':>12}{'tail ppl':>12}{'tail nll':>10}"]
    for n in sorted(result.windows):
        if n in result.ppl:
            lines.append(f"{n:>8}{result.windows[n]:>9}{result.skipped_documents[n]:>9}{result.ppl[n]:>12.3f}"
                         f"{result.tail_ppl[n]:>12.3f}{result.tail_nll[n]:>10.4f}")
        else:
            lines.append(f"{n:>8}{0:>9}{result.skipped_documents[n]:>9}{'-':>12}{'-':>12}{'-':>10}")
    lines.append(f"tail: the last {result.tail_tokens} tokens of each window; skipped: documents shorter than the "
                 f"length; text: {result.source}")
    return "\n".join(lines)


def log_perplexity_to_mlflow(result: PerplexityResult, artifact_path: str = "perplexity") -> None:
    """Metrics ppl/<length>, ppl_tail/<length>, ppl/windows/<length> and the files into the active run."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_perplexity_to_mlflow needs an active MLflow run: call it inside "
                           "`with mlflow.start_run():`")
    metrics = {f"ppl/{n}": v for n, v in result.ppl.items()}
    metrics.update({f"ppl_tail/{n}": v for n, v in result.tail_ppl.items()})
    metrics.update({f"ppl/windows/{n}": v for n, v in result.windows.items()})
    mlflow.log_metrics(metrics)
    mlflow.set_tag("ppl.source", result.source[:4900])
    for path in result.files.values():
        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
