"""What a resumed run must match, and where its position in the data stream is.

A re-run with the same run name (and storage path) continues from the latest checkpoint. That is only sound when
the checkpoint was written by the same run: the same model and tokenizer, method (P, L, anchoring, prompt), RoPE
scaling, seed, shuffle and corpus. The checkpoint's progress file records these (`run_identity`), and the driver
compares them before any worker starts, so a changed setting is one clear error instead of a silent mix of two runs.
Everything else (steps, learning rate, worker count, evaluation) may change between attempts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError

PROGRESS_FILE = "progress.json"  # inside every Ray Train checkpoint, beside DeepSpeed's state
IDENTITY_FIELDS = ("method", "rope", "model.name_or_path", "run.seed", "data.shuffle", "train.lora")


class ResumeMismatch(ConfigError):
    """The checkpoint of this run name was written by a run with other defining settings."""


@dataclass(frozen=True)
class Progress:
    """A checkpoint's position: optimizer steps done, samples consumed (the stream position), the global batch
    the run trains with, the world size that wrote it, and the identity of the run."""

    step: int
    samples: int
    global_batch: int
    world_size: int
    identity: dict

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> Progress:
        try:
            return cls(step=int(raw["step"]), samples=int(raw["samples"]), global_batch=int(raw["global_batch"]),
                       world_size=int(raw["world_size"]), identity=dict(raw.get("identity", {})))
        except KeyError as err:
            raise ConfigError(f"{where} lacks {err}: it was written by an older version of endprompt-ray, which "
                              "cannot be resumed; start a fresh run with another run.name") from None

    @classmethod
    def read(cls, path: Path) -> Progress:
        return cls.from_dict(json.loads(Path(path).read_text()), str(path))

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1, sort_keys=True))


def run_identity(cfg: ExtendConfig, data_fingerprint: str, tokenizer_name: str) -> dict:
    """The settings that define a run, flattened to `section.field` -> value, with the tokenizer and a fingerprint
    of the tokenised corpus (its documents' keys and token counts: the corpus, its reading and tokenisation)."""
    fields = IDENTITY_FIELDS + (("model.tiny",) if cfg.model.name_or_path == "tiny" else ())
    identity = {k: v for k, v in cfg.flat_params().items() if any(k == f or k.startswith(f + ".") for f in fields)}
    return {**identity, "tokenizer": tokenizer_name, "data.fingerprint": data_fingerprint}


def differences(saved: dict, current: dict) -> dict[str, tuple]:
    """field -> (value in the checkpoint, value now), for every field that differs or exists on one side only."""
    missing = "<not set>"
    return {k: (saved.get(k, missing), current.get(k, missing)) for k in sorted(set(saved) | set(current))
            if saved.get(k, missing) != current.get(k, missing)}


def check_resume(saved: Progress, current: dict, cfg: ExtendConfig) -> None:
    """Raise one ResumeMismatch naming every differing field, unless run.force_resume is set."""
    diff = differences(saved.identity, current)
    if not diff or cfg.run.force_resume:
        return
    shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in list(diff.items())[:8])
    more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
    raise ResumeMismatch(
        f"run '{cfg.run.name}' has a checkpoint at step {saved.step} (under {cfg.storage_path}) written with other "
        f"settings: {shown}{more}. Start a fresh run with another run.name, or set run.force_resume=true to continue "
        "this checkpoint with the new settings")


def latest_progress(storage_path: str, run_name: str, incomplete: list[str] | None = None) -> Progress | None:
    """The progress of the run's latest checkpoint (highest step), read from its storage (a local folder or any
    filesystem pyarrow opens, e.g. s3://); None when the run has none. A checkpoint whose progress file is missing or
    cut short is one still being copied to storage, or whose copy was interrupted (a stopped job): Ray Train never
    registered it and will not restore it, so it is skipped; its path is appended to `incomplete` when given."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage_path) if "://" in storage_path \
        else (pafs.LocalFileSystem(), str(Path(storage_path).resolve()))
    run_root = f"{root.rstrip('/')}/{run_name}"
    if fs.get_file_info(run_root).type == pafs.FileType.NotFound:
        return None
    found = []
    for info in fs.get_file_info(pafs.FileSelector(run_root, recursive=False)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        path = f"{info.path}/{PROGRESS_FILE}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            continue  # a checkpoint being written, or one from before progress files
        with fs.open_input_stream(path) as stream:
            text = stream.read()
        try:
            raw = json.loads(text)
        except ValueError:  # cut short mid-copy
            if incomplete is not None:
                incomplete.append(path)
            continue
        found.append(Progress.from_dict(raw, path))
    return max(found, key=lambda p: p.step) if found else None
