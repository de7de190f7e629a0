"""Where a corpus lives, resolved to concrete files, one format, and the filesystem Ray Data reads them with.

- Local files and folders (`.jsonl`, `.parquet`, `.txt`; JSON lines may be gzip/zstd compressed: `.jsonl.zst`).
- `s3://`, `gs://`: handed to Ray Data's own (pyarrow) filesystems; name the format with `data.format`.
- Any other fsspec URL, above all the Hugging Face Hub: `hf://datasets/<owner>/<name>/<path or glob>`, e.g.
  `hf://datasets/cerebras/SlimPajama-627B/train/chunk1/*.jsonl.zst` or
  `hf://datasets/DKYoon/SlimPajama-6B/data/train-*.parquet`. The driver lists the files (globs and folders expanded,
  format read from the suffixes) and Ray Data's read tasks stream them through the same fsspec filesystem: nothing
  is downloaded up front. Gated or private datasets need `HF_TOKEN` on every node; `file://` URLs take the same path
  on local files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from endprompt_ray.errors import ConfigError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                  ".txt": "text", ".text": "text", ".md": "text"}
COMPRESSED = {".gz", ".zst", ".bz2", ".lz4"}  # Ray Data infers the codec from the suffix (JSON lines only)
PYARROW_SCHEMES = ("s3://", "gs://", "gcs://")  # Ray Data's own filesystems: no listing on the driver
GLOB_CHARS = "*?["


def format_of(name: str) -> str | None:
    """The corpus format a file name implies, looking through a compression suffix; None if unknown."""
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        inner = SUFFIX_FORMATS.get(suffixes[-2]) if len(suffixes) > 1 else None
        return inner if inner == "jsonl" else None
    return SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None


def single_format(names: list[str], declared: str, where: str) -> str:
    """The one format of `names` (or the declared one), with a clear error for unknown or mixed suffixes."""
    if declared != "auto":
        return declared
    formats = {format_of(n) for n in names}
    if None in formats:
        odd = next(n for n in names if format_of(n) is None)
        suffix = "".join(PurePosixPath(odd).suffixes[-2:]) or "no suffix"
        raise ConfigError(f"{where}: {odd} has an unknown format ({suffix}); supported: {sorted(SUFFIX_FORMATS)} "
                          f"(JSON lines also compressed: {sorted(COMPRESSED)}) or an HF dataset saved with "
                          "save_to_disk; set data.format explicitly or remove the file")
    if len(formats) != 1:
        raise ConfigError(f"{where} mix formats {sorted(formats)}; point data.paths at files of one format")
    return formats.pop()


def is_remote(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class RemoteCorpus:
    files: list[str]
    format: str
    filesystem: Any  # an fsspec filesystem, or None for Ray Data's own (s3, gs)


def resolve_remote(paths: list[str], declared: str) -> RemoteCorpus:
    """List the files behind remote `paths` (fsspec URLs; s3/gs pass through unlisted)."""
    if all(p.startswith(PYARROW_SCHEMES) for p in paths):
        if declared in ("auto", "hf_disk"):
            raise ConfigError("data.paths on s3:// or gs:// need an explicit data.format (jsonl, parquet or text)")
        return RemoteCorpus(list(paths), declared, None)
    if any(p.startswith(PYARROW_SCHEMES) for p in paths):
        raise ConfigError("data.paths mix s3:// or gs:// with other locations; list one kind of storage")
    if declared == "hf_disk":
        raise ConfigError("data.format=hf_disk reads a dataset saved with save_to_disk on local disk; for the Hub "
                          "give the data files, e.g. hf://datasets/<owner>/<name>/data/*.parquet")
    import fsspec

    filesystem, files = None, []
    for path in paths:
        try:
            fs, inner = fsspec.core.url_to_fs(path)
        except (ImportError, ValueError) as err:
            raise ConfigError(f"data.paths: cannot open {path!r}: {err}") from None
        if filesystem is not None and type(fs) is not type(filesystem):
            raise ConfigError("data.paths mix storage protocols; list files from one kind of storage")
        filesystem = fs
        files += _list(fs, path, inner)
    if not files:
        raise ConfigError(f"data.paths {paths} match no files; check the repository, folder and glob")
    fmt = single_format(files, declared, "data.paths")
    return RemoteCorpus(files, fmt, filesystem)  # paths in the filesystem's own form, as Ray Data takes them


def _list(fs, url: str, inner: str) -> list[str]:
    try:
        if any(c in inner for c in GLOB_CHARS):
            found = fs.glob(inner)
        elif fs.isdir(inner):
            found = fs.find(inner)
        else:
            found = [inner] if fs.exists(inner) else []
    except Exception as err:  # offline, unknown repository, no permission: one line with the way out
        hub = url.startswith("hf://")
        advice = ("streaming from the Hugging Face Hub needs network access from the driver and every reading "
                  "node, and HF_TOKEN for gated datasets; offline, download the files elsewhere and point "
                  "data.paths at local copies or an s3:// mirror") if hub else "check the URL and credentials"
        raise ConfigError(f"data.paths: cannot list {url!r} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                          f"{advice}") from None
    return sorted(f for f in found if not fs.isdir(f))

