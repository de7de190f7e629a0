"""Hugging Face export: 16-bit safetensors with the extended RoPE config, plus tokenizer and run metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

EXPORT_SUBDIR = "hf_model"  # inside the final Ray Train checkpoint
METADATA_FILE = "endprompt.json"


def save_hf_model(engine, tokenizer, target: Path, *, is_writer: bool, zero3: bool, metadata: dict) -> None:
    """Gather weights from a DeepSpeed engine and write them in HF format. Call on every rank (ZeRO-3 gathers
    shards collectively); only the writer rank touches the disk."""
    import torch

    if zero3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0 only
    else:
        state = engine.module.state_dict() if is_writer else None
    if not is_writer:
        return
    state = {name: tensor.detach().to("cpu", torch.bfloat16) for name, tensor in state.items()}
    model = engine.module
    model.config.dtype = torch.bfloat16
    model.config.use_cache = True  # training switched it off; generation wants it
    model.save_pretrained(target, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))


def export_from_checkpoint(checkpoint, destination: str | Path) -> Path:
    """Copy the HF model out of the final Ray Train checkpoint (local or remote storage) to `destination`."""
    destination = Path(destination)
    with checkpoint.as_directory() as ckpt_dir:
        source = Path(ckpt_dir) / EXPORT_SUBDIR
        if not (source / "config.json").exists():
            raise FileNotFoundError(f"checkpoint {checkpoint.path} holds no exported model ({EXPORT_SUBDIR}/); "
                                    "it was not written by a finished run")
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(source, destination)
    return destination
