"""The toy base's pretraining corpus: documents of retrieval episodes, each at least one window long.

`spec` is the toy base's recipe (`models.toy.ToyBaseSpec`): its window, episode mix and seed.
"""

from __future__ import annotations

import numpy as np

from endprompt_ray.corpora.copying import copy_documents
from endprompt_ray.corpora.passkey import passkey_prompt
from endprompt_ray.corpora.recall import recall_episodes
from endprompt_ray.corpora.reports import make_document


def passkey_episode(rng: np.random.Generator, window_words: int) -> str:
    """A passkey prompt with its answer, in the evaluation's exact format. Half the episodes draw their filler
    uniformly up to a window (the distances evaluated), half log-uniformly (short copies teach the skill fast)."""
    key = int(rng.integers(10_000, 100_000))
    if rng.random() < 0.5:
        words = int(rng.integers(0, window_words + 1))
    else:
        words = int(np.expm1(rng.uniform(0, np.log1p(window_words))))
    return f"{passkey_prompt(key, float(rng.random()), words)} {key}."


def episodes(rng: np.random.Generator, spec):
    """The recipe's episodes: `spec.corpus` "episodes" (passkey prompts and station reports, the evaluation's own
    formats) or "recall" (corpora/recall.py: varied facts and spans, no evaluation format)."""
    if spec.corpus == "recall":
        yield from recall_episodes(rng, spec)
        return
    window_words = spec.model.max_position_embeddings // 2  # a filler word is one or two tokens
    while True:
        if rng.random() < spec.passkey_share:
            yield passkey_episode(rng, window_words)
        else:
            yield make_document(rng, int(rng.integers(1, spec.max_report_sentences + 1)))


def toy_documents(spec, tokenizer, count: int | None = None, seed: int | None = None) -> list[str]:
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


def pretraining_documents(spec, tokenizer) -> list[str]:
    """The main stage's corpus: `spec.documents` documents, the recipe's episodes with copy documents
    (corpora/copying.py) at `spec.copy_share`, in a seeded order."""
    copies = round(spec.documents * spec.copy_share)
    documents = toy_documents(spec, tokenizer, count=spec.documents - copies)
    if not copies:
        return documents
    documents += copy_documents(tokenizer, copies, spec.model.max_position_embeddings, seed=spec.seed + 4)
    order = np.random.default_rng(spec.seed + 5).permutation(len(documents))
    return [documents[i] for i in order]
