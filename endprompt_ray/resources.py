"""The project's shipped files, read through `importlib.resources` so they work from a checkout and from an
installed wheel alike. Imports nothing of the project.

    endprompt_ray/presets/*.yaml            job presets          (--config tiny-cpu)
    endprompt_ray/presets/deepspeed/*.json  DeepSpeed configs    (train.deepspeed_config=zero3)
    endprompt_ray/presets/sweeps/*.yaml     Tune sweep spaces    (endprompt sweep --space anchor_space)
    endprompt_ray/presets/rope_search/*.yaml  LongRoPE search settings (endprompt search-rope --space NAME)
    endprompt_ray/assets/tiny-base/         the toy base's weights and tokenizer
    endprompt_ray/assets/tiny-base-recall/  the recall toy base's (no evaluation format in its corpus)

Each is found by name (the file name without its extension) or by path; a path that exists, relative to the working
directory or absolute, always wins over a shipped name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root (meaningless in an installed package)
TOY_BASE_DIR = Path(__file__).resolve().parent / "assets" / "tiny-base"  # the toy base's shipped weights
RECALL_BASE_DIR = TOY_BASE_DIR.with_name("tiny-base-recall")  # the recall recipe's (jobs/toybase.py --recipe recall)


@dataclass(frozen=True)
class ResourceKind:
    what: str  # what the user names, for messages
    folder: str  # under the package
    suffix: str
    # Where the checkout used to keep these files: a value such as configs/deepspeed/zero3.json (older commands,
    # configs recorded by earlier runs) still names the shipped file.
    former_folder: str


PRESET = ResourceKind("config file", "presets", ".yaml", "configs")
DEEPSPEED = ResourceKind("DeepSpeed config", "presets/deepspeed", ".json", "configs/deepspeed")
SWEEP = ResourceKind("sweep file", "presets/sweeps", ".yaml", "tune_spaces")
ROPE_SEARCH = ResourceKind("search file", "presets/rope_search", ".yaml", "tune_spaces")


class ResourceNotFoundError(FileNotFoundError):
    """Neither an existing file nor the name of a shipped one."""


def _folder(kind: ResourceKind) -> Path:
    # The package is a plain directory (checkout or unpacked wheel), so the traversable is a real path that
    # DeepSpeed, YAML readers and Ray workers on the same image can open by name.
    return Path(str(resources.files("endprompt_ray").joinpath(kind.folder)))


def shipped(kind: ResourceKind) -> dict[str, Path]:
    """Name -> path of every shipped file of this kind, sorted by name."""
    folder = _folder(kind)
    return {p.stem: p for p in sorted(folder.glob(f"*{kind.suffix}"))} if folder.is_dir() else {}


def find(kind: ResourceKind, name_or_path: str | Path) -> Path:
    """An existing file at `name_or_path`, else the shipped file it names (`zero3`, `zero3.json` or the former
    `configs/deepspeed/zero3.json`); otherwise ResourceNotFoundError listing the shipped names."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    available = shipped(kind)
    parent = path.parent.as_posix()
    if parent in (".", kind.former_folder) and path.suffix in ("", kind.suffix):
        name = path.name.removesuffix(kind.suffix)
        if name in available:
            return available[name]
    raise ResourceNotFoundError(
        f"{kind.what} {str(name_or_path)!r} not found: no such file (from {Path.cwd()}) and no shipped "
        f"{kind.what} of that name; shipped: {', '.join(available) or 'none'} (in {_folder(kind)}), "
        f"or give a path to your own {kind.suffix} file")


def find_preset(name_or_path: str | Path) -> Path:
    return find(PRESET, name_or_path)


def find_deepspeed(name_or_path: str | Path) -> Path:
    return find(DEEPSPEED, name_or_path)


def find_sweep(name_or_path: str | Path) -> Path:
    return find(SWEEP, name_or_path)


def find_rope_search(name_or_path: str | Path) -> Path:
    return find(ROPE_SEARCH, name_or_path)
