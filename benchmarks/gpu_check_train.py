"""Sections 2 and 3 of gpu_check.py: the matmul peak, training steps (throughput, MFU, memory), generation speed.

Training runs as DeepSpeed's bf16 mode keeps its states, without DeepSpeed (the GPU image has none): the model's
parameters and gradients in the run's dtype, fp32 master weights and AdamW moments beside them (`MasterAdamW`), so
memory is comparable with a ZeRO stage on one GPU. The step is the project's: training.loss.training_loss (chunked
where a chunk size is set) after models.loading.enable_activation_checkpointing.

FLOPs count the model's work, not recomputation (the usual MFU convention): 6 x (linear-layer weights, the LM head
included) per token, plus causal attention 6 x T^2 x (heads x head_dim) per layer and sequence (QK^T and AV, half of
the T x T products, forward + twice that backward).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from endprompt_ray.eval.generation import greedy_generate
from endprompt_ray.method.anchoring import AnchorSpec, build_samples
from endprompt_ray.training.loss import training_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> dict:
    """TFLOP/s of a size^3 matrix product on random data: mean of `repeats` after 3 warm-ups."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
            "tflops": 2 * size ** 3 / seconds / 1e12}


def linear_weights(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_flops(model, tokens: int) -> float:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 6 * tokens ** 2 * config.num_attention_heads * head_dim * config.num_hidden_layers
    return 6 * linear_weights(model) * tokens + attention


class MasterAdamW:
    """AdamW on fp32 master copies of low-precision parameters (what DeepSpeed's bf16 optimizer holds)."""

    def __init__(self, model, lr: float = 1e-5):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone() for p in self.params]
        fused = self.params[0].device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, fused=fused)

    def step(self) -> None:
        for p, m in zip(self.params, self.master):
            if p.grad is not None:
                m.grad, p.grad = p.grad.float(), None
        self.optimizer.step()
        for p, m in zip(self.params, self.master):
            p.data.copy_(m)
            m.grad = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.master:
            m.grad = None


def training_batch(method: str, sequence: int, target_length: int, tokenizer, vocab_size: int, seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """One sample of `method` (EndPrompt: template prompt, random anchor) from a random document."""
    prompt = tuple(tokenizer("This is the end of text, please pay attention here",
                             add_special_tokens=False)["input_ids"])
    physical = sequence if method != "full_length" else 2
    spec = AnchorSpec(method=method, physical_length=physical, target_length=target_length, prompt_ids=prompt,
                      anchor="random", short_docs="skip", prefix_ids=(tokenizer.bos_token_id,), seed=seed).validate()
    document = np.random.default_rng(seed).integers(3, min(vocab_size, len(tokenizer)), spec.sequence_length + 8)
    samples, _ = build_samples([document], spec)
    return {k: torch.from_numpy(v) for k, v in samples.items()}


def time_training(model, optimizer: MasterAdamW, batch: dict[str, torch.Tensor], chunk_size: int, warmup: int,
                  steps: int, peak_tflops: float | None) -> dict:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = batch["input_ids"].numel()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    times, losses = [], []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        loss = training_loss(model, batch, "sdpa", chunk_size=chunk_size)
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    seconds = float(np.median(times))
    achieved = step_flops(model, tokens) / seconds / 1e12
    return {"sequence_length": tokens, "measured_steps": steps, "seconds_per_step": seconds,
            "tokens_per_s": tokens / seconds, "achieved_tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None, "losses": losses,
            "max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}


def time_generation(model, tokenizer, prompt: str, prompt_tokens: int, new_tokens: int) -> dict:
    """Prefill and decode speed through the runners' greedy_generate: one call producing 1 token (prefill), one
    producing `new_tokens` (min = max, so an early EOS of random weights cannot shorten it)."""
    device = next(model.parameters()).device

    def timed(n: int) -> float:
        sync(device)
        start = time.perf_counter()
        greedy_generate(model, tokenizer, [prompt], n, min_new_tokens=n, progress=False)
        sync(device)
        return time.perf_counter() - start

    timed(1)  # warm-up at this length (kernels, allocator)
    prefill = timed(1)
    total = timed(new_tokens)
    decode = max(total - prefill, 1e-9)
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "prefill_s": prefill,
            "prefill_tokens_per_s": prompt_tokens / prefill, "generate_s": total,
            "decode_tokens_per_s": (new_tokens - 1) / decode if new_tokens > 1 else None}
