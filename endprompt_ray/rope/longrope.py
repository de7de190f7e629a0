"""LongRoPE: one interpolation factor per rotary frequency, in transformers' `longrope` rope parameters.

RoPE rotates pair i of a head's rotary dimensions (d of them, i = 0 .. d/2 - 1) at frequency base^(-2i/d). Linear PI
divides every frequency by the scale s; LongRoPE divides frequency i by its own factor lambda_i. The factors are
non-decreasing from the highest frequency (i = 0, short wavelengths that need little interpolation) to the lowest and
at least 1. `tune_spaces/search_rope.py` finds them by evolutionary search (longrope/evolution.py).

Factors file (`rope.factors_file`, YAML or JSON): either one list (the long factors) or a mapping

    long_factor: [1.0, 1.02, ..., 7.9]     # d/2 numbers, used beyond the original window
    short_factor: [1.0, ..., 1.0]          # optional, d/2 numbers, used within it (default: all 1, the model as is)
    metadata: {...}                        # optional, free-form (the search records its provenance here)

The factors may also be given inline (`rope.long_factor`, `rope.short_factor`); the config loader reads the file on
the driver (`resolve_factors`), so the factors travel inside the config to every worker.

What transformers does with them (`rope_type: longrope`), and what follows:
- It uses the long factors for a whole forward call whenever max(position_ids) + 1 exceeds
  `original_max_position_embeddings` (the window W), else the short ones. An EndPrompt sample's terminal positions
  sit near L, so the whole sample, segment 1 included, trains with the long factors; PoSE and full-length samples
  do too. A contiguous sample of P <= W tokens trains the short factors only.
- The attention factor multiplies cos and sin at every length, short ones included. Default, as the LongRoPE paper
  and transformers: sqrt(1 + ln s / ln W) (1 when s <= 1); set `rope.attention_factor` to choose it (1: none).
- It computes the long frequencies once and keeps them on the rotary module (`long_inv_freq`), and the short
  frequencies and attention factor when the module is built. Changing `config.rope_parameters` of a loaded model
  therefore changes nothing: `set_longrope_factors` rebuilds the rotary modules.
- Generation that crosses W switches factor set mid-sequence while the cache holds keys rotated with the other set;
  prompts that already exceed W (every evaluation length beyond the window) are unaffected.

The config keeps `max_position_embeddings` = s x W, so servers that choose long factors from the configured maximum
length (vLLM) agree with it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import yaml

from endprompt_ray.errors import ConfigError, RopeError
from endprompt_ray.resources import REPO_ROOT

FILE_KEYS = ("long_factor", "short_factor", "metadata")
YARN_BETAS = {"beta_fast": 32.0, "beta_slow": 1.0}  # transformers' and LongRoPE's Llama defaults


class FactorsError(RopeError, ConfigError):
    """A factors file or inline factor list that cannot be used."""


def check_factors(values, name: str, size: int | None = None) -> list[float]:
    """`values` as floats when they are a usable factor list: numbers >= 1, non-decreasing, `size` long if given."""
    if not isinstance(values, (list, tuple)) or not values:
        raise FactorsError(f"{name} must be a non-empty list of numbers, one per rotary frequency (head_dim / 2 of "
                           f"them), got {values!r}")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FactorsError(f"{name}[{i}]={value!r} is not a finite number")
        out.append(float(value))
    if size is not None and len(out) != size:
        raise FactorsError(f"{name} has {len(out)} factors but the model needs {size}, one per rotary frequency "
                           f"(rotary dimension {2 * size} / 2); these factors were made for another model: search "
                           "them for this one with tune_spaces/search_rope.py")
    for i, value in enumerate(out):
        if value < 1:
            raise FactorsError(f"{name}[{i}]={value:g} is below 1: a factor divides a frequency, and below 1 it would "
                               "rotate faster than the model was trained to; use factors >= 1")
        if i and value < out[i - 1]:
            raise FactorsError(f"{name} must be non-decreasing from the highest frequency (index 0) to the lowest, "
                               f"but {name}[{i}]={value:g} < {name}[{i - 1}]={out[i - 1]:g}; fix the list or search it "
                               "again with tune_spaces/search_rope.py")
    return out


def resolve_path(path: str) -> Path:
    """A relative path is read from the working directory, else from the repository (like presets)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p.resolve()


def read_factors_file(path: str | Path) -> dict[str, list[float]]:
    """{'long_factor': [...], 'short_factor': [...] (if the file has one)}, checked (length aside)."""
    p = Path(path)
    where = f"rope.factors_file {p}"
    try:
        data = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
    except OSError as err:
        raise FactorsError(f"{where} cannot be read ({err.strerror}); give the path of a factors YAML/JSON file, "
                           "e.g. the best_factors.yaml a search wrote") from err
    except yaml.YAMLError as err:
        raise FactorsError(f"{where} is not valid YAML or JSON: {err}") from err
    if isinstance(data, list):
        data = {"long_factor": data}
    if not isinstance(data, dict) or "long_factor" not in data:
        raise FactorsError(f"{where} must hold a list of factors or a mapping with long_factor (and optionally "
                           "short_factor, metadata)")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise FactorsError(f"{where}: unknown key {unknown[0]!r}; valid keys: {list(FILE_KEYS)}")
    return {key: check_factors(data[key], f"{where}: {key}") for key in ("long_factor", "short_factor")
            if data.get(key) is not None}


def resolve_factors(rope):
    """`rope` checked, with rope.factors_file read into the inline factor lists (a new value; `rope` is unchanged).

    The loader calls it on the driver, so the factors travel inside the config to workers on other nodes; a config
    rebuilt there carries them inline and keeps them when the file is not on that node."""
    fields = ("factors_file", "long_factor", "short_factor", "attention_factor")
    given = [f"rope.{name}" for name in fields if getattr(rope, name) is not None]
    if rope.type != "longrope":
        if given:
            raise FactorsError(f"{', '.join(given)} only apply to rope.type=longrope (rope.type is {rope.type}); set "
                               "rope.type=longrope or remove them")
        return rope
    resolved = {}
    if rope.factors_file is not None:
        path = resolve_path(rope.factors_file)
        if path.exists() or rope.long_factor is None:
            for key, values in read_factors_file(path).items():
                inline = getattr(rope, key)
                if inline is not None and [float(v) for v in inline] != values:
                    raise FactorsError(f"rope.{key} and rope.factors_file {path} give different factors; give only "
                                       "one of them")
                resolved[key] = values
            resolved["factors_file"] = str(path)
    for key in ("long_factor", "short_factor"):
        values = resolved.get(key, getattr(rope, key))
        if values is not None:
            resolved[key] = check_factors(values, f"rope.{key}")
    if rope.attention_factor is not None and not rope.attention_factor > 0:
        raise FactorsError(f"rope.attention_factor={rope.attention_factor} must be positive (1: no attention "
                           "scaling; unset: sqrt(1 + ln s / ln W))")
    return dataclasses.replace(rope, **resolved)


def rotary_dim(config) -> int:
    """The number of rotated dimensions per head (head_dim x partial_rotary_factor); there are half as many factors."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim * partial)


def default_attention_factor(scale: float, window: int) -> float:
    return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(window))


def reference_factors(config, window: int, scale: float) -> dict[str, np.ndarray]:
    """The per-frequency factors that reproduce PI, NTK-aware and YaRN interpolation for scale s from window W.

    PI divides every frequency by s. NTK-aware scaling raises the base to base * s^(d/(d-2)), which divides frequency
    i by s^(2i/(d-2)): 1 at the highest frequency, s at the lowest. YaRN's factors are the ratios of the unscaled
    frequencies to transformers' YaRN frequencies (betas 32 and 1), so they match the `yarn` type exactly."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d = rotary_dim(config)
    n = d // 2
    theta = config.rope_parameters["rope_theta"]
    ntk = scale ** (2 * np.arange(n) / (d - 2)) if d > 2 else np.full(n, float(scale))
    yarn_config = copy.deepcopy(config)
    yarn_config.rope_parameters = {"rope_type": "yarn", "rope_theta": theta, "factor": float(scale),
                                   "original_max_position_embeddings": window, **YARN_BETAS}
    if "partial_rotary_factor" in config.rope_parameters:
        yarn_config.rope_parameters["partial_rotary_factor"] = config.rope_parameters["partial_rotary_factor"]
    yarn_inv, _ = ROPE_INIT_FUNCTIONS["yarn"](yarn_config, None)
    base_inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    yarn = np.maximum.accumulate(np.clip(np.round(base_inv / yarn_inv.double().numpy(), 5), 1.0, None))
    return {"PI": np.full(n, float(scale)), "NTK": ntk, "YaRN": yarn}


def longrope_parameters(config, window: int, scale: float, rope) -> tuple[dict, int]:
    """rope_parameters entries (without rope_type/rope_theta) and max_position_embeddings for rope.type=longrope.

    Without factors the long factors are YaRN's per-frequency factors, where LongRoPE's search starts."""
    rope = resolve_factors(rope)  # a RopeScaling built in code, not by the loader, may still name only its file
    n = rotary_dim(config) // 2
    long = rope.long_factor if rope.long_factor is not None else reference_factors(config, window, scale)["YaRN"]
    short = rope.short_factor if rope.short_factor is not None else [1.0] * n
    attention = rope.attention_factor if rope.attention_factor is not None else default_attention_factor(scale, window)
    return {"factor": float(scale), "original_max_position_embeddings": int(window),
            "short_factor": check_factors(list(short), "rope.short_factor", n),
            "long_factor": check_factors(list(long), "rope.long_factor", n),
            "attention_factor": float(attention)}, int(round(scale * window))


def _rotary_modules(model) -> list[tuple[str, object]]:
    return [(name, module) for name, module in model.named_modules()
            if getattr(module, "rope_type", None) == "longrope" and hasattr(module, "original_inv_freq")]


def set_longrope_factors(model, long_factor=None, short_factor=None, attention_factor: float | None = None):
    """Give a loaded longrope model new factors (None keeps the current ones) and rebuild its rotary modules.

    Rebuilding matters: transformers keeps the long frequencies it computed first (`long_inv_freq`) and the short
    ones and attention factor from construction, so editing the config alone would leave the old factors in use."""
    modules = _rotary_modules(model)
    if not modules:
        raise RopeError("the model has no longrope rotary embedding; load it with rope.type=longrope "
                        "(scaled_config) before swapping factors")
    for name, module in modules:
        config = module.config  # the model's own config object: save_pretrained then writes the new factors
        params = dict(config.rope_parameters)
        n = len(params["long_factor"])
        if long_factor is not None:
            params["long_factor"] = check_factors(list(map(float, long_factor)), "long_factor", n)
        if short_factor is not None:
            params["short_factor"] = check_factors(list(map(float, short_factor)), "short_factor", n)
        if attention_factor is not None:
            params["attention_factor"] = float(attention_factor)
        config.rope_parameters = params
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, type(module)(config).to(module.inv_freq.device))
    return model
