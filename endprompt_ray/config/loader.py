"""The one config loader: defaults <- a YAML preset <- `--set a.b=c` overrides, built strictly typed and validated."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from endprompt_ray.config.schema import ExtendConfig, absolute_path
from endprompt_ray.errors import ConfigError
from endprompt_ray.resources import ResourceNotFoundError, find_preset
from endprompt_ray.rope.longrope import resolve_factors


def _coerce(value: Any, hint: Any, where: str, noun: str) -> Any:
    """Check/convert `value` against a dataclass field type; nested dataclasses are built recursively."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return build_typed(hint, value, where, noun)
    if hint is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, noun)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = list(typing.get_args(hint))
        if value not in allowed:
            raise ConfigError(f"{where}={value!r} must be one of {allowed}; set one of them in the config file "
                              f"or on the command line (e.g. --set {where.split('[')[0]}={allowed[0]})")
        return value
    if origin in (list, tuple):
        if value is None:
            raise ConfigError(f"{where} is empty: give a list (e.g. [] for none) or leave the key out")
        items = value if isinstance(value, (list, tuple)) else [  # "a,b" from --set
            yaml.safe_load(v) for v in str(value).split(",") if v.strip()]
        (inner, *_) = typing.get_args(hint) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]", noun) for i, v in enumerate(items)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r} must be true or false")
    if hint in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and value != int(value)):
            raise ConfigError(f"{where}={value!r} must be {'an integer' if hint is int else 'a number'}")
        return hint(value)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}={value!r} must be a string")
        return str(value)
    return value


def build_typed(cls, values: dict, where: str = "", noun: str = "config key"):
    """A config dataclass from a mapping, every value checked against the field's type; an unknown key is a
    ConfigError naming the valid ones. Fields left out keep their defaults. `where`: the dotted section the mapping
    sits at; `noun`: what the messages call a key (a sweep file's keys are not config keys)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of {cls.__name__} fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown {noun} {prefix}{unknown[0]!r}; valid keys here: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k, noun) for k, v in values.items()}
    default = cls()
    merged = {f.name: kwargs.get(f.name, getattr(default, f.name)) for f in dataclasses.fields(cls)}
    return cls(**merged)


def apply_overrides(tree: dict, overrides: list[str], example: str) -> dict:
    """`a.b=c` command-line overrides (values parsed as YAML) into a nested mapping; `example` shows the form."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set {example}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    return tree


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExtendConfig:
    """Defaults <- YAML file <- `a.b=c` overrides (values parsed as YAML), validated."""
    tree: dict = {}
    if path is not None:
        try:
            path = find_preset(path)  # a file, or the name of a shipped preset (found from any working directory)
        except ResourceNotFoundError as err:
            raise ConfigError(str(err)) from err
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (run:, model:, method: ...)")
    set_tree = apply_overrides({}, overrides or [], "method.target_length=65536")
    cfg = config_from_dict(_deep_merge(tree, set_tree))
    # Relative paths mean "from where the command ran": pin them before Ray/Tune workers change directory.
    cfg.run.output_dir = absolute_path(cfg.run.output_dir)
    cfg.data.paths = [absolute_path(p) for p in cfg.data.paths]
    return cfg.validate()


def config_from_dict(values: dict) -> ExtendConfig:
    """A config from a mapping such as `to_dict()` output (e.g. inside a Ray worker), with rope.factors_file read
    into the inline factors: on the driver, so they travel with the config to nodes without the file."""
    cfg = build_typed(ExtendConfig, values)
    cfg.rope = resolve_factors(cfg.rope)
    return cfg


def dump_yaml(cfg: ExtendConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
