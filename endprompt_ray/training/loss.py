"""The training loss, optionally computed in chunks over the sequence so full logits never exist at once.

Full-length training at the paper's scale (L = 65536, Llama-3's 128K vocabulary) would materialise 65536 x 128256
fp32 logits, about 33.6 GB per sample, before the loss. With `train.loss_chunk_size` set, the model runs up to its
last hidden state (the head computes logits for one position only) and the head plus cross-entropy run chunk by
chunk under activation checkpointing: only the hidden states are kept for backward, and each chunk's logits are
recomputed there, so peak logits memory is one chunk's. Loss and gradients equal the plain ones (tested): the sum of
per-token cross-entropies over all chunks divided by the number of trained tokens, as Hugging Face's causal-LM loss
(labels shifted by one, -100 ignored).
Under sequence parallelism (sequence_parallel.py) this path always runs: the model's own loss would shift the labels
inside each shard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from endprompt_ray.method.anchoring import IGNORE_INDEX
from endprompt_ray.training.forward import attention_kwargs, training_forward
from endprompt_ray.training.sequence_parallel import TARGETS, SequenceParallel, next_token_targets


def training_loss(model, batch: dict[str, torch.Tensor], attn_implementation: str, chunk_size: int = 0,
                  sp: SequenceParallel | None = None):
    """Mean next-token loss of `batch`; `model` is a DeepSpeed engine or a Hugging Face causal LM.
    chunk_size 0: the model's own loss (full logits); > 0: chunked as described above.
    `sp`: `batch` is this rank's shard (sequence_parallel.shard_batch); the result is N times this shard's summed
    loss over the tokens trained on in the whole SP group of N ranks (why N: sequence_parallel.py), so the group's
    results add up to N times the sample's token-weighted mean (`SequenceParallel.sample_loss` gives the mean)."""
    if sp is None and chunk_size <= 0:
        return training_forward(model, batch, attn_implementation).loss
    module = getattr(model, "module", model)  # the Hugging Face model inside a DeepSpeed engine
    if sp and not module.training:
        raise RuntimeError("a sharded batch needs the model in train mode: in eval mode the Ulysses attention steps "
                           "aside and each rank would attend within its own shard only")
    captured = {}
    handle = module.get_decoder().register_forward_hook(
        lambda _mod, _args, output: captured.__setitem__("hidden", output.last_hidden_state))
    try:  # through the engine, so DeepSpeed's forward bookkeeping (ZeRO-3 gathering) runs as usual
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=1,
              **attention_kwargs(batch["input_ids"], attn_implementation, sp.size if sp else 1))
    finally:
        handle.remove()
    targets = batch[TARGETS] if sp else next_token_targets(batch["labels"])
    total, count = lm_loss_sum(captured["hidden"], module.get_output_embeddings(), targets, chunk_size)
    if sp:
        return sp.size * total / sp.total(count).clamp(min=1)
    return total / count.clamp(min=1)


def lm_loss_sum(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_size: int):
    """(summed cross-entropy of `head(hidden)` against `targets` (already shifted), number of trained targets).
    chunk_size > 0: `chunk_size` positions at a time, each recomputed in backward. Every chunk runs even when all its
    targets are ignored, so every rank calls the head equally often (ZeRO-3 gathers its weights collectively)."""
    count = (targets != IGNORE_INDEX).sum()
    if chunk_size <= 0:
        return _chunk_loss_sum(hidden, head, targets), count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk_size):
        total = total + checkpoint(_chunk_loss_sum, hidden[:, start:start + chunk_size], head,
                                   targets[:, start:start + chunk_size], use_reentrant=False)
    return total, count


def _chunk_loss_sum(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # fp32 for the softmax, as the model's own loss does
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
