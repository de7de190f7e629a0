"""Ulysses sequence parallelism (train.sequence_parallel = N): one sample's sequence split over N ranks.

Every N consecutive ranks of the Ray Train group form one SP group; each group is one data-parallel rank, so the
data-parallel degree is workers / N and every group trains on the samples a plain run's data-parallel rank of that
index would (same global batch, same stream order). Every rank of a group reads the same micro-batches and keeps its
1/N slice of the sequence; attention runs DeepSpeed's `UlyssesSPAttentionHF`, registered in place of the model's
attention implementation: an all-to-all turns [sequence/N, all heads] into [whole sequence, heads/N], the core
attention runs over the whole sequence, and a second all-to-all turns it back.

Positions: RoPE is applied before the exchange, on each shard with its own slice of the position ids, so ids that
do not start at 0 or jump (EndPrompt, PoSE) are rotated exactly as without SP. The attention pattern must not depend
on them (the trap in the design notes): DeepSpeed drops the model's mask, so SDPA runs plain causal attention over the
gathered sequence, and the flash path gets explicit cumulative lengths of the whole sequence (forward.py) instead of
boundaries guessed from the gathered position ids. Eager attention would then run without any mask and is refused.

Labels are shifted over the whole sequence before slicing (the last token of shard r predicts the first of shard
r + 1). The sample's loss is token-weighted over the group: the shards' summed cross-entropies over the tokens
trained on in the whole group. Each rank's part of it reaches every rank's parameters through the all-to-all's
backward, so the sample's gradient is the sum of the group's gradients. DeepSpeed is not told about the SP groups:
it averages gradients over all W ranks as plain data parallelism, which is why each rank backpropagates N times its
part (`training_loss`); the average over W is then the mean over the W / N groups of their samples' gradients, the
same for ZeRO-1/2/3 (given the SP groups as `mpu`, DeepSpeed 0.19.8 sums them over the group in ZeRO-2 but still
averages them in ZeRO-3's reduce-scatter path), and checkpoints keep the plain layout of W ranks, so they resume at
any SP degree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from endprompt_ray.method.anchoring import IGNORE_INDEX
from endprompt_ray.models.attention import uses_flash_path

TARGETS = "targets"  # a sharded batch's next-token labels, already shifted over the whole sequence


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's place in its SP group."""

    size: int
    rank: int
    group: Any  # torch.distributed process group of the SP group

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return shard_batch(batch, self.rank, self.size)

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of `value` over the SP group (not differentiable): the token counts."""
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value, group=self.group)
        return value

    def sample_loss(self, loss: torch.Tensor) -> float:
        """The group's sample loss from this rank's `training_loss` (N times its part, see above)."""
        return float(self.total(loss)) / self.size


def data_parallel_place(rank: int, world: int, size: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel degree) of global `rank`: SP groups are blocks of `size` consecutive ranks,
    as DeepSpeed's parallel_state_sp builds them."""
    if size < 1 or world % size:
        raise ValueError(f"train.sequence_parallel={size} must divide the {world} workers")
    return rank // size, world // size


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Position t's target is label t + 1; the last position predicts nothing."""
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def shard_batch(batch: dict[str, torch.Tensor], rank: int, size: int) -> dict[str, torch.Tensor]:
    """SP rank `rank`'s slice of every [batch, sequence] tensor, with `targets` shifted before slicing; the sharded
    batch has no `labels` (they would be shifted again, wrongly, inside each shard)."""
    length = batch["input_ids"].shape[1]
    if length % size:
        raise ValueError(f"a sequence of {length} tokens cannot be split over train.sequence_parallel={size} ranks: "
                         "use a degree that divides the sequence length (method.physical_length, or "
                         "method.target_length for full_length)")
    chunk = length // size
    full = {k: v for k, v in batch.items() if k != "labels"}
    full[TARGETS] = next_token_targets(batch["labels"])
    return {k: v[:, rank * chunk:(rank + 1) * chunk].contiguous() for k, v in full.items()}


def check_model(size: int, num_heads: int, num_kv_heads: int, attn_implementation: str) -> None:
    """Whether the model can run at SP degree `size`, or one clear error."""
    if num_heads % size:
        raise ValueError(f"train.sequence_parallel={size} must divide the model's {num_heads} attention heads "
                         "(Ulysses gives each rank heads / N of them)")
    if num_kv_heads % size and size % num_kv_heads:
        raise ValueError(f"train.sequence_parallel={size} and the model's {num_kv_heads} key/value heads must divide "
                         "one another (each rank holds kv_heads / N of them, or one replicated)")
    if attn_implementation != "sdpa" and not uses_flash_path(attn_implementation):
        raise ValueError(f"model.attn_implementation={attn_implementation!r} cannot run with train.sequence_parallel="
                         f"{size}: use sdpa or a flash-attention implementation (the sharded call has no mask, which "
                         "only these turn into full causal attention over the gathered sequence)")


def enable_sequence_parallel(model, attn_implementation: str, size: int, micro_batch: int) -> SequenceParallel | None:
    """Build the SP groups (a collective: every rank calls it) and route the model's attention through DeepSpeed's
    Ulysses wrapper; None at size 1. Once per process: the wrapper replaces the implementation for every model.
    In eval mode the wrapper steps aside (`disable_in_eval`): a probe scores whole sequences on every rank."""
    if size == 1:
        return None
    import deepspeed.comm as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF  # lazy: DeepSpeed is heavy

    text = model.config.get_text_config()
    check_model(size, text.num_attention_heads, text.num_key_value_heads, attn_implementation)
    data_parallel_place(dist.get_rank(), dist.get_world_size(), size)  # the clear error before DeepSpeed's assert
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model, core_attn_implementation=attn_implementation, sequence_parallel_size=size,
        micro_batch_size=micro_batch, seq_length_is_variable=True, disable_in_eval=True)
    return SequenceParallel(size=size, rank=mpu.get_sequence_parallel_rank(), group=mpu.get_sequence_parallel_group())
