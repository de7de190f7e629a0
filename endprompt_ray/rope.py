"""RoPE scaling written into a Hugging Face config (transformers 5.x `rope_parameters`)."""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from typing import Literal

RopeType = Literal["linear", "dynamic", "yarn", "llama3", "none"]
ROPE_TYPES = typing.get_args(RopeType)


class RopeError(ValueError):
    """A model or setting that rope scaling cannot be applied to."""


@dataclass(frozen=True)
class RopeScaling:
    type: RopeType = "linear"
    factor: float | None = None  # None: target_length / original window
    round_up: bool = True  # reference behaviour: ceil(65536 / 8192) = 8
    original_max_position_embeddings: int | None = None  # None: the model's max_position_embeddings
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn


def original_window(config, rope: RopeScaling) -> int:
    """The pretraining context window: explicit setting, else a scaled model's recorded original, else its max."""
    if rope.original_max_position_embeddings:
        return int(rope.original_max_position_embeddings)
    params = getattr(config, "rope_parameters", None) or {}
    return int(params.get("original_max_position_embeddings") or config.max_position_embeddings)


def scaling_factor(target_length: int, original: int, rope: RopeScaling) -> float:
    if rope.factor is not None:
        return float(rope.factor)
    ratio = target_length / original
    return float(math.ceil(ratio)) if rope.round_up else ratio


def scaled_config(config, target_length: int, rope: RopeScaling):
    """A copy of `config` whose RoPE covers `target_length`; the model's own rope_theta is kept.

    `max_position_embeddings` becomes the target length, except for dynamic NTK: transformers reads
    `max_position_embeddings` as the window beyond which dynamic NTK starts rescaling, so it must stay the original.
    """
    if rope.type not in ROPE_TYPES:
        raise RopeError(f"rope.type={rope.type!r} is not one of {ROPE_TYPES}")
    params = getattr(config, "rope_parameters", None)
    if not params or "rope_theta" not in params:
        raise RopeError(f"model type {getattr(config, 'model_type', '?')!r} has no RoPE parameters "
                        "(config.rope_parameters with rope_theta); EndPrompt needs a rotary-position model")
    if rope.type == "none":
        return copy.deepcopy(config)
    original = original_window(config, rope)
    if target_length <= original:
        raise RopeError(f"target_length={target_length} is not above the model's original window {original}; "
                        "set method.target_length larger (or rope.original_max_position_embeddings if the model "
                        "reports the wrong window)")
    factor = scaling_factor(target_length, original, rope)
    theta = params["rope_theta"]
    new: dict = {"rope_type": rope.type, "factor": factor, "rope_theta": theta}
    if rope.type in ("yarn", "llama3"):
        new["original_max_position_embeddings"] = original
    if rope.type == "yarn":
        new.update(beta_fast=rope.beta_fast, beta_slow=rope.beta_slow)
    if rope.type == "llama3":
        new.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor)
    if "partial_rotary_factor" in params:
        new["partial_rotary_factor"] = params["partial_rotary_factor"]
    out = copy.deepcopy(config)
    out.rope_parameters = new
    out.max_position_embeddings = original if rope.type == "dynamic" else target_length
    return out
