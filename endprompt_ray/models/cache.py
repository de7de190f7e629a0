"""Where locally built and converted models are cached, written atomically so concurrent builders never clash."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root(root: str | Path | None = None) -> Path:
    """Where locally built and converted models live: `root`, else ENDPROMPT_CACHE, else <tempdir>/endprompt-ray-cache.

    Not `<tempdir>/endprompt_ray`: a directory of the package's name in the working directory (or a script's) would
    be imported as an empty namespace package ahead of an editable install, and nothing of the project would load."""
    return Path(root or os.environ.get("ENDPROMPT_CACHE", Path(tempfile.gettempdir()) / "endprompt-ray-cache"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, unless complete already, written by `build(staging_dir)` into a staging directory, then renamed.

    The rename is atomic: concurrent builders of the same key cannot leave a half-written directory, and a failed
    build leaves nothing behind.
    """
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(target)
    except OSError:  # the target exists: another process won the race (its copy is identical) ...
        if _complete(target):
            shutil.rmtree(staging, ignore_errors=True)
        else:  # ... or a directory without the model was left there: replace it
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def _complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
