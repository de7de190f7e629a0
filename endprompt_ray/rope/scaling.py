"""RoPE scaling written into a Hugging Face config (transformers 5.x `rope_parameters`).

Every type extends the window W the model handles now to the target length L by a scale s: s = L / W, rounded up by
default as the reference does (65536 / 8192 -> 8), or `rope.factor`. W is `rope.original_max_position_embeddings`
when set, else the model's `max_position_embeddings` (for a model that ships its own scaling, the window that scaling
reaches). The model's rope_theta is kept.

- linear: every frequency divided by s (position interpolation); max_position_embeddings becomes L.
- yarn, llama3: transformers' formulas with factor s and original window W; max_position_embeddings becomes L.
- dynamic (NTK-aware, rescaled with the sequence length n = largest position id + 1 of a forward call): at n = L the
  base is the NTK-aware base for s, base' = base * s ** (d / (d - 2)) with d the rotary dimension; up to W the base is
  unchanged; in between the NTK scale grows linearly with n, from 1 at W to s at L (and on beyond L). transformers
  computes base * (f * n / W - (f - 1)) ** (d / (d - 2)), so the factor written is f = (s - 1) / (L / W - 1), which
  is 1 when s = L / W. max_position_embeddings stays W: it is where transformers starts rescaling. The rotary module
  keeps the frequencies of the largest n it has seen (resetting only below W), so training on EndPrompt samples
  (last position about L - 1) runs at base'(L); evaluation resets it before each suite (`reset_dynamic_rope`) and
  runs lengths in ascending order, so a length n is scored at the base for n.
- longrope: a factor per rotary frequency (LongRoPE), from `rope.factors_file` or `rope.long_factor`; see longrope.py
  for the file format, the attention factor and when transformers switches between short and long factors.
  max_position_embeddings becomes s x W.

Each type is one entry of BUILDERS: a function from the extension (window, scale, target, settings) to the new
rope_parameters and max_position_embeddings.

A model that already ships scaling (Llama 3.1/3.2: llama3; Phi-3: longrope; ...) is extended only where composing is
exact or defined by the same formula: linear on linear multiplies the factors (position p rotates like p / s in the
model as shipped); llama3 on llama3 multiplies the factor by s and keeps the model's original window and band limits
(its low-frequency band is interpolated by a further s, its high-frequency band stays untouched, the band between is
blended with the same weights). Anything else is refused with the ways forward: rope.type=none keeps the model's
scaling, or rope.replace_existing=true replaces it with rope.type counted from the model's original window.
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass, field
from typing import Callable, Literal

from endprompt_ray.errors import RopeError
from endprompt_ray.rope.longrope import longrope_parameters

RopeType = Literal["linear", "dynamic", "yarn", "llama3", "longrope", "none"]
ROPE_TYPES = typing.get_args(RopeType)
COMPOSABLE = ("linear", "llama3")  # shipped scaling a further scaling of the same type composes with


@dataclass(frozen=True)
class RopeScaling:
    """A plain value: the config loader reads `factors_file` into the inline lists (`longrope.resolve_factors`)."""

    type: RopeType = field(default="linear", metadata={
        "help": "how RoPE is extended to the target length: linear (PI), dynamic (NTK), yarn, llama3, longrope, or "
                "none (keep the model's own)"})
    factor: float | None = field(default=None, metadata={
        "help": "the scale s at the target length; None: target_length / window"})
    round_up: bool = field(default=True, metadata={
        "help": "round target_length / window up, as the reference does (65536 / 8192 -> 8)"})
    original_max_position_embeddings: int | None = field(default=None, metadata={
        "help": "the window W to extend; None: the model's"})
    replace_existing: bool = field(default=False, metadata={
        "help": "replace a model's own RoPE scaling instead of refusing to compose with it"})
    low_freq_factor: float = field(default=1.0, metadata={"help": "llama3: low-frequency factor"})
    high_freq_factor: float = field(default=4.0, metadata={"help": "llama3: high-frequency factor"})
    beta_fast: float = field(default=32.0, metadata={"help": "yarn: beta_fast"})
    beta_slow: float = field(default=1.0, metadata={"help": "yarn: beta_slow"})
    factors_file: str | None = field(default=None, metadata={
        "help": "longrope: YAML/JSON with long_factor (and short_factor), or one list, e.g. a search's "
                "best_factors.yaml"})
    long_factor: list[float] | None = field(default=None, metadata={
        "help": "longrope: one factor per rotary frequency, used beyond the window (read from factors_file when "
                "that is given)"})
    short_factor: list[float] | None = field(default=None, metadata={
        "help": "longrope: factors used within the window; None: all 1"})
    attention_factor: float | None = field(default=None, metadata={
        "help": "longrope: cos/sin multiplier; None: sqrt(1 + ln s / ln W)"})


def existing_scaling(config) -> dict | None:
    """The model's own rope_parameters when they scale (any rope_type other than default), else None."""
    params = getattr(config, "rope_parameters", None) or {}
    return params if params.get("rope_type", "default") != "default" else None


def extension_window(config, rope: RopeScaling) -> int:
    """W, the window the new scaling extends (the "1x" of the evaluation lengths)."""
    if rope.original_max_position_embeddings:
        return int(rope.original_max_position_embeddings)
    existing = existing_scaling(config)
    if existing and rope.replace_existing and rope.type != "none":
        if not existing.get("original_max_position_embeddings"):
            raise RopeError(f"the model's {existing['rope_type']} RoPE scaling records no original window to count "
                            "from; set rope.original_max_position_embeddings to the model's pretraining window")
        return int(existing["original_max_position_embeddings"])
    return int(config.max_position_embeddings)


def scale(config, target_length: int, rope: RopeScaling) -> float:
    """s: how many times the window W the target length is (rope.factor when set)."""
    if rope.factor is not None:
        return float(rope.factor)
    ratio = target_length / extension_window(config, rope)
    return float(math.ceil(ratio)) if rope.round_up else ratio


def describe(config, target_length: int, rope: RopeScaling) -> str:
    """A short label, e.g. 'linear x8' or 'dynamic x8' (s, whatever factor transformers is given)."""
    return "no scaling" if rope.type == "none" else f"{rope.type} x{scale(config, target_length, rope):g}"


def _describe_existing(config, existing: dict) -> str:
    details = [f"factor {existing['factor']:g}"] if existing.get("factor") else []
    if existing.get("original_max_position_embeddings"):
        details.append(f"original window {existing['original_max_position_embeddings']}")
    details.append(f"window {config.max_position_embeddings}")
    return f"{existing['rope_type']} RoPE scaling ({', '.join(details)})"


def _refuse_existing(config, existing: dict, rope: RopeScaling) -> RopeError:
    kind = existing["rope_type"]
    ways = [f"keep it with rope.type=none (the model covers {config.max_position_embeddings} positions)"]
    if kind in COMPOSABLE:
        ways.append(f"extend it with rope.type={kind}")
    ways.append(f"replace it with rope.replace_existing=true ({rope.type} counted from the model's original window)")
    return RopeError(f"the model already ships {_describe_existing(config, existing)}; rope.type={rope.type} does "
                     f"not compose with it. Either {', or '.join(ways)}")


@dataclass(frozen=True)
class Extension:
    """What a type's builder needs: the model config, its window W, the scale s, the target L and the settings."""
    config: object
    window: int
    scale: float
    target: int
    rope: RopeScaling


def _linear(e: Extension) -> tuple[dict, int]:
    return {"factor": e.scale}, e.target


def _dynamic(e: Extension) -> tuple[dict, int]:
    ratio = e.target / e.window
    if e.scale < ratio:
        raise RopeError(f"rope.factor={e.scale:g} is below target_length / window = {ratio:g}: dynamic NTK would "
                        f"need a transformers factor under 1, which it does not accept; leave rope.factor unset or "
                        f"give at least {ratio:g}")
    return {"factor": (e.scale - 1) / (ratio - 1)}, e.window  # transformers rescales beyond W itself


def _yarn(e: Extension) -> tuple[dict, int]:
    return {"factor": e.scale, "original_max_position_embeddings": e.window, "beta_fast": e.rope.beta_fast,
            "beta_slow": e.rope.beta_slow}, e.target


def _llama3(e: Extension) -> tuple[dict, int]:
    return {"factor": e.scale, "original_max_position_embeddings": e.window,
            "low_freq_factor": e.rope.low_freq_factor, "high_freq_factor": e.rope.high_freq_factor}, e.target


def _longrope(e: Extension) -> tuple[dict, int]:
    return longrope_parameters(e.config, e.window, e.scale, e.rope)


BUILDERS: dict[str, Callable[[Extension], tuple[dict, int]]] = {
    "linear": _linear, "dynamic": _dynamic, "yarn": _yarn, "llama3": _llama3, "longrope": _longrope}


def scaled_config(config, target_length: int, rope: RopeScaling):
    """A copy of `config` whose RoPE covers `target_length`, as the module docstring defines per type."""
    if rope.type not in ROPE_TYPES:
        raise RopeError(f"rope.type={rope.type!r} is not one of {ROPE_TYPES}")
    params = getattr(config, "rope_parameters", None)
    if not params or "rope_theta" not in params:
        raise RopeError(f"model type {getattr(config, 'model_type', '?')!r} has no RoPE parameters "
                        "(config.rope_parameters with rope_theta); EndPrompt needs a rotary-position model")
    if rope.type == "none":
        return copy.deepcopy(config)
    existing = None if rope.replace_existing else existing_scaling(config)
    if existing and (existing["rope_type"] != rope.type or rope.type not in COMPOSABLE):
        raise _refuse_existing(config, existing, rope)
    window = extension_window(config, rope)
    if target_length <= window:
        already = f" with its {_describe_existing(config, existing)}" if existing else ""
        raise RopeError(f"target_length={target_length} is not above the window {window} the model covers{already}; "
                        "set method.target_length larger (or rope.original_max_position_embeddings if the model "
                        "reports the wrong window, or rope.type=none to train within it)")
    s = scale(config, target_length, rope)
    if s < 1:
        raise RopeError(f"rope.factor={rope.factor:g} would shrink the window; give a factor of at least 1 or leave "
                        "it unset (target_length / window)")
    out = copy.deepcopy(config)
    if existing:  # same type, composable: see the module docstring
        out.rope_parameters = {**existing, "factor": existing["factor"] * s}
        out.max_position_embeddings = target_length
        return out
    built, out.max_position_embeddings = BUILDERS[rope.type](Extension(config, window, s, target_length, rope))
    out.rope_parameters = {"rope_type": rope.type, "rope_theta": params["rope_theta"], **built}
    if "partial_rotary_factor" in params:
        out.rope_parameters["partial_rotary_factor"] = params["partial_rotary_factor"]
    return out


def reset_dynamic_rope(model) -> None:
    """Put every dynamic-NTK rotary module of `model` back at its original frequencies.

    transformers only grows the length a dynamic rotary module is scaled for and resets it only below the original
    window, so without this a run at the window or at L/2 after one at L would use L's base.
    """
    for module in model.modules():
        if getattr(module, "rope_type", None) == "dynamic" and hasattr(module, "original_inv_freq"):
            module.register_buffer("inv_freq", module.original_inv_freq.clone(), persistent=False)
            module.max_seq_len_cached = module.original_max_seq_len
