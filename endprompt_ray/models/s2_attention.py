"""LongLoRA's shifted sparse attention (S2-Attn, arXiv 2309.12307 section 3.2), for training only.

S2-Attn splits a training sequence of N tokens into groups of G tokens (LongLoRA: G = N / 4) and attends causally
within each group only. Half of the heads see groups shifted by G / 2, so their groups straddle the boundaries of the
other half's and information flows between neighbouring groups. Attention costs N x G instead of N x N.

The paper's pseudocode rolls the shifted heads' tokens by -G/2, groups, attends and rolls back by +G/2. Rolled that
way, the last group joins the sequence's last G/2 tokens with its first G/2, and a causal mask there lets the first
tokens see the last ones: a leak of future tokens into next-token prediction. LongLoRA's own flash-attention
training code does not roll: the shifted heads' groups are [0, G/2), [G/2, 3G/2), ..., [N - G/2, N). We do the same
(equivalently: roll, with the wrapped group cut in two), so no token ever attends to a later one.

It is registered with transformers' attention registry (`register_s2_attention`, name `s2_sdpa`), so a model
loaded with `attn_implementation="s2_sdpa"` uses it without any patched module. Outside training (`module.training`
false) it is plain causal SDPA: LongLoRA evaluates and serves with full attention, and an exported model needs no
S2 at all (its config does not record the attention implementation).

S2-Attn is for full-length training (`method.kind=full_length`, LongLoRA's setting; `contiguous` also works, as
local attention at P). It must not be combined with EndPrompt: EndPrompt's terminal prompt (segment 2) sits at the
end of the P-token sample and must attend to all of segment 1, while S2-Attn confines every token to its group of G
tokens around it, cutting almost all segment-2 -> segment-1 attention: the method would be silently gone. PoSE's
later chunks lose their earlier chunks the same way. `check_s2_attention` refuses both.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads lazily: config validation imports check_s2_attention
    import torch

S2_ATTENTION = "s2_sdpa"
LONGLORA_GROUP_FRACTION = 0.25
# methods whose point is attention across the position jump of one short sample: S2's groups would cut it
INCOMPATIBLE_METHODS = {
    "endprompt": "segment 2 (the terminal prompt) must attend to all of segment 1, and S2-Attn confines it to its "
                 "own group of G tokens",
    "pose": "each PoSE chunk must attend to the chunks before it, and S2-Attn confines it to its own group of G tokens",
}


class S2AttentionError(ValueError):
    """A setting or an input that S2-Attn cannot train with."""


def group_count(group_fraction: float) -> int:
    """Groups per sequence for a group size of `group_fraction` x the sequence length (1/4 -> 4)."""
    if isinstance(group_fraction, bool) or not isinstance(group_fraction, (int, float)) or not 0 < group_fraction <= 1:
        raise S2AttentionError(f"S2-Attn group fraction {group_fraction!r} must be a number in (0, 1]; LongLoRA uses "
                               f"{LONGLORA_GROUP_FRACTION} (groups of a quarter of the sequence)")
    count = round(1 / group_fraction)
    if abs(count * group_fraction - 1) > 1e-6:
        raise S2AttentionError(f"S2-Attn group fraction {group_fraction} must be 1/n for a whole number of groups n "
                               "(e.g. 0.5, 0.25, 0.125)")
    return count


def group_size(length: int, group_fraction: float) -> int:
    """G for a sequence of `length` tokens; G must divide the length and be even (the shift is G / 2)."""
    count = group_count(group_fraction)
    if length % (2 * count):
        raise S2AttentionError(f"S2-Attn with group fraction {group_fraction} needs a sequence length divisible by "
                               f"{2 * count} ({count} groups of an even size), got {length}; choose such a training "
                               "length (method.target_length for full_length)")
    return length // count


def check_s2_attention(attn_implementation: str, method_kind: str, sequence_length: int | None = None,
                       group_fraction: float = LONGLORA_GROUP_FRACTION) -> None:
    """Refuse S2-Attn with a method that needs attention across a sample's position jump, or with a training length
    it cannot group. No-op for any other attention implementation."""
    if attn_implementation != S2_ATTENTION:
        return
    if method_kind in INCOMPATIBLE_METHODS:
        raise S2AttentionError(
            f"model.attn_implementation={S2_ATTENTION} (LongLoRA's shifted sparse attention) cannot train "
            f"method.kind={method_kind}: {INCOMPATIBLE_METHODS[method_kind]}. Use S2-Attn with "
            "method.kind=full_length (the LongLoRA baseline), or model.attn_implementation=sdpa with "
            f"method.kind={method_kind}")
    if sequence_length is not None:
        group_size(sequence_length, group_fraction)


def inference_attn_implementation(attn_implementation: str) -> str:
    """What to load a model with outside training: S2-Attn is a training-time approximation of full SDPA."""
    return "sdpa" if attn_implementation == S2_ATTENTION else attn_implementation


def register_s2_attention(group_fraction: float = LONGLORA_GROUP_FRACTION, name: str = S2_ATTENTION) -> str:
    """Register S2-Attn under `name` with transformers (attention and mask registries); call in every process
    before loading a model with `attn_implementation=name`. Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    group_count(group_fraction)  # a bad fraction fails here, not at the first training step
    AttentionInterface.register(name, functools.partial(s2_attention_forward, group_fraction=group_fraction))
    # SDPA's mask builder: None for unpadded causal batches (the training call), a 4D mask when there is padding,
    # which s2_attention_forward then refuses instead of silently dropping it
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def s2_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, *, group_fraction: float = LONGLORA_GROUP_FRACTION,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: query (B, H, N, D), key/value (B, Hkv, N, D) -> (B, N, H, D)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training:  # evaluation and generation: full attention, as LongLoRA serves its models
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if not (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        raise S2AttentionError("S2-Attn is causal attention for decoder training; this module is not causal")
    batch, heads, length, _ = query.shape
    if key.shape[2] != length:
        raise S2AttentionError(f"S2-Attn trains on whole sequences without a cache: got {length} queries and "
                               f"{key.shape[2]} keys")
    if attention_mask is not None:
        raise S2AttentionError("S2-Attn trains on unpadded full-length sequences (an all-ones attention mask); this "
                               "batch carries padding or a custom mask")
    if heads % 2:
        raise S2AttentionError(f"S2-Attn shifts half of the heads; the model has an odd number of heads ({heads})")
    group = group_size(length, group_fraction)
    key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    attend = functools.partial(_grouped_causal, dropout=dropout, scaling=scaling)
    half, shift = heads // 2, group // 2
    plain = attend(query[:, :half], key[:, :half], value[:, :half], group)
    q, k, v = query[:, half:], key[:, half:], value[:, half:]
    # shifted heads: whole groups [G/2 + iG, 3G/2 + iG), plus the first and last G/2 tokens as two half-size groups
    middle = attend(q[:, :, shift:length - shift], k[:, :, shift:length - shift], v[:, :, shift:length - shift], group)
    ends = attend(*(_ends(x, shift) for x in (q, k, v)), shift)
    shifted = torch.cat([ends[:, :, :shift], middle, ends[:, :, shift:]], dim=2)
    return torch.cat([plain, shifted], dim=1).transpose(1, 2).contiguous(), None


def _ends(x: torch.Tensor, size: int) -> torch.Tensor:
    import torch

    return torch.cat([x[:, :, :size], x[:, :, -size:]], dim=2)


def _grouped_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: int, dropout: float,
                    scaling: float | None) -> torch.Tensor:
    """Causal attention within consecutive blocks of `size` tokens: (B, h, n*size, D) -> the same shape."""
    import torch.nn.functional as F

    b, h, n_tokens, _ = q.shape
    if n_tokens == 0:
        return q.new_empty(b, h, 0, v.shape[-1])
    n = n_tokens // size

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, h, n*size, D) -> (B*n, h, size, D): groups become batch rows
        return x.reshape(b, h, n, size, x.shape[-1]).transpose(1, 2).reshape(b * n, h, size, x.shape[-1])

    out = F.scaled_dot_product_attention(blocks(q), blocks(k), blocks(v), dropout_p=dropout, scale=scaling,
                                         is_causal=True)
    return out.reshape(b, n, h, size, -1).transpose(1, 2).reshape(b, h, n_tokens, -1)
