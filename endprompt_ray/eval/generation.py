"""Batched greedy generation with any Hugging Face causal LM, shared by RULER and LongBench."""

from __future__ import annotations

import os
from typing import Sequence

from endprompt_ray.errors import ModelLoadError
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.models.loading import load_model, load_tokenizer


def pick_device(model):
    """Keep a model where it is, except that a CPU model goes to the GPU when one exists."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def is_model_path(model) -> bool:
    """True for a model directory (str, bytes or os.PathLike), False for a loaded model object."""
    return isinstance(model, (str, bytes, os.PathLike))


def resolve_tokenizer(model, tokenizer=None):
    """`tokenizer` if given, else the one saved in the model directory; an in-memory model must come with its own."""
    if tokenizer is not None:
        return tokenizer
    if not is_model_path(model):
        raise EvalInputError("an in-memory model needs its tokenizer: pass tokenizer=..., or pass the model directory "
                             "(config.json + weights + tokenizer files) instead of the model object")
    try:
        return load_tokenizer(os.fsdecode(model))
    except ModelLoadError as err:
        raise EvalInputError(str(err)) from err


def load_model_and_tokenizer(model, tokenizer=None):
    """`model` is a loaded model or a model directory; returns (model, tokenizer) ready for inference."""
    tokenizer = resolve_tokenizer(model, tokenizer)
    if is_model_path(model):
        import torch

        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        model = load_model(os.fsdecode(model), dtype=dtype)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise EvalInputError("the tokenizer has neither a pad nor an eos token; batched generation needs one of them")
    model.eval()
    return model, tokenizer


def _eos_ids(model, tokenizer, extra: Sequence[int] = ()) -> list[int]:
    ids = [tokenizer.eos_token_id, *extra]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 1,
                    stop_token_ids: Sequence[int] = (), min_new_tokens: int = 0, desc: str | None = None,
                    progress: bool = True) -> list[str]:
    """Greedy continuations (new text only). Longest prompts go first, so running out of memory shows at once."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    device = pick_device(model)
    if next(model.parameters()).device != device:
        model.to(device)
    ids = tokenizer(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens or None, do_sample=False,
                              num_beams=1, use_cache=True, pad_token_id=pad,
                              eos_token_id=_eos_ids(model, tokenizer, stop_token_ids) or None)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [""] * len(ids)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            batch = order[start:start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
                mask[row, width - len(ids[i]):] = 1
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config)
            for row, i in enumerate(batch):
                out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
    return out
