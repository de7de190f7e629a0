"""Errors shared across the package. Imports nothing of the project, so every layer can raise them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type, or inconsistent."""


class RopeError(ValueError):
    """A model or setting that rope scaling cannot be applied to."""


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded as configured."""
