"""The one forward call training makes, built so the terminal prompt keeps attending to all of segment 1.

transformers infers "packed sequences" from position ids whenever the call has no attention mask and no cache
(exactly the training call): a jump in position ids is read as a document boundary, attention is cut there, and
EndPrompt silently degrades to two unrelated snippets. We therefore always pass an explicit all-ones attention mask
(eager, SDPA, flex), and on transformers' flash-attention path, which drops an all-ones mask and would re-infer
boundaries from position ids at batch size 1, explicit cumulative sequence lengths that make every row one whole
sequence. Under sequence parallelism each rank holds 1/N of the sequence, but attention runs on the whole
gathered sequence (sequence_parallel.py), so the lengths are the whole sequence's.
"""

from __future__ import annotations

import torch
from endprompt_ray.models.attention import uses_flash_path


def attention_kwargs(input_ids: torch.Tensor, attn_implementation: str, sequence_parallel: int = 1) -> dict:
    """`input_ids`: this rank's [batch, sequence / sequence_parallel] shard."""
    batch, local_length = input_ids.shape
    length = local_length * sequence_parallel
    kwargs = {"attention_mask": torch.ones(batch, local_length, dtype=torch.long, device=input_ids.device)}
    if uses_flash_path(attn_implementation):
        cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=input_ids.device)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=length, max_length_k=length)
    return kwargs


def training_forward(model, batch: dict[str, torch.Tensor], attn_implementation: str):
    """Forward with loss; `model` may be a DeepSpeed engine or a plain Hugging Face model."""
    return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                 use_cache=False, **attention_kwargs(batch["input_ids"], attn_implementation))
