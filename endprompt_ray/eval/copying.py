"""Copy accuracy: does a model continue a span it has already seen, at a given length? The skill under every
retrieval evaluation, measured without any prompt format.

Held-out copy documents (corpora/copying.py, a seed no recipe trains on) are scored teacher-forced: the share of
the repeated span's tokens, after its first, that are the model's argmax. The first token of the repeat cannot be
known (nothing marks where a repeat starts), every later one can, by looking back. A model that does not copy
scores what the word statistics allow (about 1 / vocabulary for random words, ~10% on digits); one that copies
scores near 100%.
"""

from __future__ import annotations

import numpy as np
import torch

from endprompt_ray.corpora.copying import copy_document, word_pieces
from endprompt_ray.data.dataset import bos_prefix

COPY_EVAL_SEED = 104729  # apart from every recipe's copy documents (their seeds are spec.seed + small offsets)


@torch.no_grad()
def copy_accuracy(model, tokenizer, lengths, samples: int = 16, seed: int = COPY_EVAL_SEED) -> dict[int, float]:
    """Teacher-forced accuracy (%) on repeated-span tokens, by document length in tokens."""
    words, head = word_pieces(tokenizer), len(bos_prefix(tokenizer))
    device = next(model.parameters()).device
    model.eval()
    scores = {}
    for length in lengths:
        rng = np.random.default_rng(seed + length)
        hits = total = 0
        for _ in range(samples):
            text, (_, span, repeat) = copy_document(rng, words, length - head)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"][:length]
            logits = model(torch.tensor([ids], device=device)).logits[0]
            # the token at position p is predicted by the logits at p - 1; score repeat[1:] against the ids
            first, last = head + repeat + 1, head + repeat + span
            predicted = logits[first - 1:last - 1].argmax(-1).tolist()
            hits += sum(int(a == b) for a, b in zip(predicted, ids[first:last]))
            total += last - first
        scores[int(length)] = round(100.0 * hits / total, 1)
    return scores
