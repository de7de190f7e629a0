"""Ray Tune wiring for tune_spaces/: the implementation lives in the `sweeps` package (one concern per module)."""

from .sweeps import ConfigError, SweepOutcome, SweepSpec, base_config, dimensions, load_sweep, run_sweep

__all__ = ["ConfigError", "SweepOutcome", "SweepSpec", "base_config", "dimensions", "load_sweep", "run_sweep"]
