"""Paths of the project's resources. Imports nothing of the project."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root
TOY_BASE_DIR = Path(__file__).resolve().parent / "assets" / "tiny-base"  # the toy base's shipped weights
