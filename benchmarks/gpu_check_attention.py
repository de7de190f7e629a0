"""Section 1 of gpu_check.py: segment 2 attends to all of segment 1 in the training call, on the device's kernels.

For one sample of each layout (EndPrompt: template/tail prompt x fixed/random anchor; PoSE) the segment-2 logits of
the exact training call (training.forward, the model in train mode) are compared with a KV-cache reference that never
sees a position-id jump inside one call: segment 1 prefilled, then segment 2 fed token by token (the first
`STEPWISE_TOKENS`; the rest of a long PoSE chunk in one cached call). Segment 2 starts where the position ids first
jump. The same comparison for the call without the all-ones mask shows whether transformers cuts attention at the
jump there (the trap in the design notes). Which scaled-dot-product kernel ran is read from the profiler's op names.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import LlamaForCausalLM

from endprompt_ray.method.anchoring import AnchorSpec, build_samples
from endprompt_ray.training.forward import training_forward

END_PROMPT = "This is the end of text, please pay attention here"
STEPWISE_TOKENS = 32
LAYOUTS = {  # name -> AnchorSpec fields besides the shapes
    "endprompt_template_fixed": {"prompt_source": "template", "anchor": "fixed"},
    "endprompt_template_random": {"prompt_source": "template", "anchor": "random"},
    "endprompt_tail_fixed": {"prompt_source": "tail", "anchor": "fixed"},
    "endprompt_tail_random": {"prompt_source": "tail", "anchor": "random"},
    "pose": {"method": "pose"},
}
# |training call - reference| allowed, as a fraction of the reference's largest |logit| (at least 1): fp32 differs
# only by summation order; bf16 rounds every layer's activations, whichever kernel runs
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
TRAP_FACTOR = 10  # the call without the mask must be this much further off than the guarded call
# transformers renamed `past_key_values` to `cache` (5.2x); the GPU image's 5.17 may have only the old name
CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def layout_sample(name: str, tokenizer, physical_length: int, target_length: int, vocab_size: int, seed: int = 0
                  ) -> dict[str, torch.Tensor]:
    """One sample of layout `name` built by method.anchoring from a random document of 3 P tokens."""
    prompt = tuple(tokenizer(END_PROMPT, add_special_tokens=False)["input_ids"])
    spec = AnchorSpec(physical_length=physical_length, target_length=target_length, prompt_ids=prompt,
                      short_docs="skip", prefix_ids=(tokenizer.bos_token_id,), seed=seed,
                      **LAYOUTS[name]).validate()
    document = np.random.default_rng(seed).integers(3, min(vocab_size, len(tokenizer)), 3 * physical_length)
    samples, _ = build_samples([document], spec)
    return {k: torch.from_numpy(v) for k, v in samples.items()}


def segment2_start(position_ids: torch.Tensor) -> int:
    jumps = torch.nonzero(position_ids[0, 1:] != position_ids[0, :-1] + 1)
    if not len(jumps):
        raise ValueError("the sample's position ids never jump: there is no segment 2 to check")
    return int(jumps[0]) + 1


def sdpa_kernels(prof) -> list[str]:
    """The scaled-dot-product ops the profiler saw (their names say the backend: flash, efficient, cudnn, math)."""
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "scaled_dot_product" in n and n != "aten::scaled_dot_product_attention")


@torch.no_grad()
def cached_reference(model, input_ids: torch.Tensor, position_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Segment-2 logits with segment 1 prefilled into a KV cache and segment 2 decoded from it."""
    model.eval()
    out = model(input_ids=input_ids[:, :start], position_ids=position_ids[:, :start], use_cache=True,
                logits_to_keep=1)
    cache, logits = getattr(out, CACHE), []
    end = input_ids.shape[1]
    stepwise_end = min(end, start + STEPWISE_TOKENS)
    for t in range(start, stepwise_end):
        out = model(input_ids=input_ids[:, t:t + 1], position_ids=position_ids[:, t:t + 1], use_cache=True,
                    **{CACHE: cache})
        cache = getattr(out, CACHE)
        logits.append(out.logits.float())
    if stepwise_end < end:
        out = model(input_ids=input_ids[:, stepwise_end:], position_ids=position_ids[:, stepwise_end:],
                    use_cache=True, **{CACHE: cache})
        logits.append(out.logits.float())
    return torch.cat(logits, dim=1)


@torch.no_grad()
def check_layout(model, sample: dict[str, torch.Tensor], dtype_name: str) -> dict:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in sample.items()}
    start = segment2_start(batch["position_ids"])
    model.train()  # the training call as the trainer makes it
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        guarded = training_forward(model, batch, "sdpa").logits[:, start:].float()
    kernels = sdpa_kernels(prof)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        unguarded = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                          use_cache=False).logits[:, start:].float()
    kernels_unguarded = sdpa_kernels(prof)
    reference = cached_reference(model, batch["input_ids"], batch["position_ids"], start)
    scale = max(1.0, reference.abs().max().item())
    diff = (guarded - reference).abs().max().item()
    diff_unguarded = (unguarded - reference).abs().max().item()
    tolerance = TOLERANCE[dtype_name] * scale
    return {"dtype": dtype_name, "segment1_tokens": start, "segment2_tokens": batch["input_ids"].shape[1] - start,
            "position_jump": int(batch["position_ids"][0, start] - batch["position_ids"][0, start - 1]),
            "sdpa_kernels": kernels, "sdpa_kernels_without_mask": kernels_unguarded,
            "max_abs_logit": round(scale, 4), "max_abs_diff": diff, "max_abs_diff_without_mask": diff_unguarded,
            "tolerance": tolerance, "within_tolerance": diff <= tolerance,
            "trap_shown_without_mask": diff_unguarded > max(tolerance, TRAP_FACTOR * diff)}
