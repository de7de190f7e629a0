"""The training loss, optionally computed in chunks over the sequence so full logits never exist at once.

Full-length training at the paper's scale (L = 65536, Llama-3's 128K vocabulary) would materialise 65536 x 128256
fp32 logits, about 33.6 GB per sample, before the loss. With `train.loss_chunk_size` set, the model runs up to its
last hidden state (the head computes logits for one position only) and the head plus cross-entropy run chunk by
chunk under activation checkpointing: only the hidden states are kept for backward, and each chunk's logits are
recomputed there, so peak logits memory is one chunk's. Loss and gradients equal the plain ones (tested): the sum of
per-token cross-entropies over all chunks divided by the number of trained tokens, as Hugging Face's causal-LM loss
(labels shifted by one, -100 ignored).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from endprompt_ray.training.forward import attention_kwargs, training_forward

IGNORE_INDEX = -100


def training_loss(model, batch: dict[str, torch.Tensor], attn_implementation: str, chunk_size: int = 0):
    """Mean next-token loss of `batch`; `model` is a DeepSpeed engine or a Hugging Face causal LM.
    chunk_size 0: the model's own loss (full logits); > 0: chunked as described above."""
    if chunk_size <= 0:
        return training_forward(model, batch, attn_implementation).loss
    module = getattr(model, "module", model)  # the Hugging Face model inside a DeepSpeed engine
    captured = {}
    handle = module.get_decoder().register_forward_hook(
        lambda _mod, _args, output: captured.__setitem__("hidden", output.last_hidden_state))
    try:  # through the engine, so DeepSpeed's forward bookkeeping (ZeRO-3 gathering) runs as usual
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, logits_to_keep=1,
              **attention_kwargs(batch["input_ids"], attn_implementation))
    finally:
        handle.remove()
    return chunked_lm_loss(captured["hidden"], module.get_output_embeddings(), batch["labels"], chunk_size)


def chunked_lm_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk_size: int):
    """Causal-LM loss of `head(hidden)` against `labels` (unshifted, as given to the model), `chunk_size` positions
    at a time."""
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # position t predicts token t + 1
    count = (targets != IGNORE_INDEX).sum()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk_size):
        part = targets[:, start:start + chunk_size]
        if (part != IGNORE_INDEX).any():
            total = total + checkpoint(_chunk_loss_sum, hidden[:, start:start + chunk_size], head, part,
                                       use_reentrant=False)
    return total / count.clamp(min=1)


def _chunk_loss_sum(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # fp32 for the softmax, as the model's own loss does
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
