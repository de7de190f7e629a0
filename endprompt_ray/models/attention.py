"""Which attention implementation a model runs, and whether it can load on this machine."""

from __future__ import annotations

import re

from endprompt_ray.errors import ModelLoadError


def uses_flash_path(attn_implementation: str | None) -> bool:
    """Whether transformers runs `attn_implementation` through its flash-attention wrapper.

    That is every name transformers itself treats as flash ("flash" in the name, after an optional "paged|"
    prefix): flash_attention_2/3/4, which fall back to hub kernels when the package is missing, and hub kernels such
    as kernels-community/flash-attn2 or kernels-community/vllm-flash-attn3. A hub kernel named otherwise counts once
    a model has loaded it and transformers has registered it with its flash wrapper or flash mask (it does so for
    every kernel that exposes flash_attn_varlen_func).
    """
    from transformers.utils.generic import is_flash_attention_requested

    name = (attn_implementation or "").removeprefix("paged|")
    if is_flash_attention_requested(requested_attention_implementation=name):
        return True
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return (ALL_ATTENTION_FUNCTIONS.get(name) is flash_attention_forward
            or ALL_MASK_ATTENTION_FUNCTIONS.get(name) is flash_attention_mask)


def check_attn_implementation(attn_implementation: str) -> None:
    """Fail early, in one line, when a flash-path implementation (see uses_flash_path) cannot load here."""
    from transformers.integrations.hub_kernels import is_kernel
    from transformers.utils import (is_flash_attn_2_available, is_flash_attn_3_available, is_flash_attn_4_available,
                                    is_kernels_available)

    if not uses_flash_path(attn_implementation):
        return
    name = attn_implementation.removeprefix("paged|")
    if is_kernel(name):
        if not is_kernels_available():
            raise ModelLoadError(f"model.attn_implementation={attn_implementation!r} is a Hugging Face hub kernel: it "
                                 "needs the kernels package (pip install kernels), hub access and a GPU it is built "
                                 "for; or use model.attn_implementation=sdpa")
        return
    version = re.fullmatch(r"flash_attention_(\d)", name)
    installed = {"2": is_flash_attn_2_available, "3": is_flash_attn_3_available, "4": is_flash_attn_4_available}
    if version and version[1] in installed and not (installed[version[1]]() or is_kernels_available()):
        # without the package, transformers falls back to the matching hub kernel when `kernels` is installed
        raise ModelLoadError(f"model.attn_implementation={attn_implementation!r} needs flash-attn on a CUDA GPU "
                             "(pip install 'endprompt-ray[gpu]') or the kernels package (pip install kernels); "
                             "or use model.attn_implementation=sdpa")
