"""The typed configuration tree and its one loader (YAML presets, `--set` overrides, validation)."""
