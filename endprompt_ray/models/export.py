"""Hugging Face export: 16-bit safetensors with the extended RoPE config, plus tokenizer and run metadata.

A LoRA-trained model (a PEFT model) is exported merged, as a plain checkpoint of its base architecture that loads
without peft; with `train.lora.save_adapter` the adapter alone is also written, in PEFT's format, to `adapter/`.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from endprompt_ray.models.lora import (ADAPTER, LoraError, LoraSpec, adapter_state_dict, is_peft_model,
                                       merged_state_dict, trainable_state_dict)

EXPORT_SUBDIR = "hf_model"  # inside the final Ray Train checkpoint
METADATA_FILE = "endprompt.json"
ADAPTER_SUBDIR = "adapter"  # inside the exported model: adapter_config.json + adapter_model.safetensors
TRAINABLE_FILE = "trainable_params.safetensors"  # beside the adapter: LongLoRA's fully trained embeddings and norms


def save_hf_model(engine, tokenizer, target: Path, *, is_writer: bool, zero3: bool, metadata: dict,
                  lora: LoraSpec | None = None) -> None:
    """Gather weights from a DeepSpeed engine and write them in HF format. Call on every rank (ZeRO-3 gathers
    shards collectively); only the writer rank touches the disk. `lora`: the spec the model was wrapped with."""
    if zero3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0 only
    else:
        state = engine.module.state_dict() if is_writer else None
    if is_writer:
        write_hf_model(engine.module, state, tokenizer, target, metadata=metadata, lora=lora)


def write_hf_model(model, state: dict, tokenizer, target: Path, *, metadata: dict,
                   lora: LoraSpec | None = None) -> None:
    """Write `state`, the full state dict of `model` (gathered), as a bf16 HF model directory `target`.

    `model` supplies the architecture and config only (under ZeRO-3 its own parameters are partitioned). A PEFT
    model is written as its base model with the adapter merged into the weights."""
    import torch

    target = Path(target)
    peft_model, peft_state = None, state
    if is_peft_model(model):
        spec = _lora_spec(model, lora)
        peft_model, state = model, merged_state_dict(state, spec)  # merged in float32, before the cast below
        model = model.get_base_model()  # its config is the base model's, scaled RoPE included
    state = {name: tensor.detach().to("cpu", torch.bfloat16) for name, tensor in state.items()}
    model.config.use_cache = True  # training switched it off; generation wants it
    model.save_pretrained(target, state_dict=state, safe_serialization=True)
    model.config.dtype = torch.bfloat16  # save_pretrained records the live (fp32 on CPU) parameters' dtype
    model.config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    if peft_model is not None and spec.save_adapter:
        write_adapter(peft_model, peft_state, spec, target / ADAPTER_SUBDIR)


def write_adapter(model, state: dict, spec: LoraSpec, target: Path) -> None:
    """The adapter in PEFT's format (PeftModel.from_pretrained reads it) and, when LongLoRA's extras were trained,
    their weights under plain names in trainable_params.safetensors. Apply both to a base model loaded with the
    exported config.json: the adapter was trained with its scaled RoPE."""
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.peft_config[ADAPTER])
    config.inference_mode = True  # as PEFT saves it
    config.save_pretrained(target)

    def tensors(named: dict) -> dict:
        return {name: tensor.detach().to("cpu").contiguous() for name, tensor in named.items()}

    save_file(tensors(adapter_state_dict(state)), target / "adapter_model.safetensors", metadata={"format": "pt"})
    if spec.trainable:
        save_file(tensors(trainable_state_dict(state, spec)), target / TRAINABLE_FILE, metadata={"format": "pt"})


def _lora_spec(model, lora: LoraSpec | None) -> LoraSpec:
    """The spec to merge with, checked against the adapter the model actually carries."""
    if lora is None:
        raise LoraError("the model to export is a PEFT (LoRA) model: pass lora=<the LoraSpec it was wrapped with> "
                        "so the adapter can be merged")
    config = model.peft_config.get(ADAPTER)
    if config is None or set(model.peft_config) != {ADAPTER}:
        raise LoraError(f"export merges exactly one adapter named {ADAPTER!r}; the model has {list(model.peft_config)}")
    if (config.r, config.lora_alpha, config.use_rslora, config.use_dora) != (lora.rank, lora.alpha, False, False):
        raise LoraError(f"the model's adapter (rank {config.r}, alpha {config.lora_alpha}, rslora {config.use_rslora}, "
                        f"dora {config.use_dora}) is not the one described by train.lora (rank {lora.rank}, alpha "
                        f"{lora.alpha}): pass the LoraSpec the model was wrapped with")
    return lora


def export_from_checkpoint(checkpoint, destination: str | Path) -> Path:
    """Copy the HF model out of the final Ray Train checkpoint (local or remote storage) to `destination`: only its
    `hf_model/` folder is read, never the DeepSpeed state beside it (for an 8B model ~100 GB of ZeRO shards)."""
    import pyarrow.fs as pafs

    destination = Path(destination)
    fs, source = checkpoint.filesystem, f"{str(checkpoint.path).rstrip('/')}/{EXPORT_SUBDIR}"
    if fs.get_file_info(f"{source}/config.json").type != pafs.FileType.File:
        raise FileNotFoundError(f"checkpoint {checkpoint.path} holds no exported model ({EXPORT_SUBDIR}/); "
                                "it was not written by a finished run")
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    pafs.copy_files(source, str(destination.resolve()), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return destination
