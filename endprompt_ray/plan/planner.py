"""Fit or not, and the smallest change that makes a configuration fit: a larger SP degree, a loss chunk,
checkpointing, offload. Shared by `endprompt plan` and the job's preflight warning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from endprompt_ray.plan.architectures import Architecture
from endprompt_ray.plan.estimate import DEFAULT_MFU, Estimate, Workload, estimate
from endprompt_ray.plan.gpus import GIB, GpuSpec

LOSS_CHUNKS = (8192, 4096, 2048, 1024, 512)
OFFLOAD_PRESET = "zero3_offload"  # the shipped DeepSpeed config offloading parameters and optimizer states


@dataclass
class Suggestion:
    change: str  # the settings to change, as --set arguments
    estimate: Estimate


def sequence_parallel_degrees(arch: Architecture, w: Workload) -> list[int]:
    """SP degrees above the current one that divide the GPUs, the heads and the sequence, smallest first."""
    return [n for n in range(w.sequence_parallel + 1, w.world_size + 1)
            if w.world_size % n == 0 and arch.num_heads % n == 0 and w.sequence_length % n == 0]


def _candidates(arch: Architecture, w: Workload) -> list[tuple[str, Workload]]:
    """Each kind of change in the order tried (cheapest in throughput first within its kind)."""
    out = [(f"train.sequence_parallel={n}", dataclasses.replace(w, sequence_parallel=n))
           for n in sequence_parallel_degrees(arch, w)]
    out += [(f"train.loss_chunk_size={c}", dataclasses.replace(w, loss_chunk_size=c)) for c in LOSS_CHUNKS
            if c < w.local_tokens and (w.loss_chunk_size <= 0 or c < w.loss_chunk_size)]
    if not w.gradient_checkpointing:
        out.append(("train.gradient_checkpointing=true", dataclasses.replace(w, gradient_checkpointing=True)))
    if w.micro_batch > 1:
        out.append((f"train.micro_batch_size=1 train.gradient_accumulation_steps="
                    f"{w.micro_batch * w.gradient_accumulation_steps}",
                    dataclasses.replace(w, micro_batch=1,
                                        gradient_accumulation_steps=w.micro_batch * w.gradient_accumulation_steps)))
    if not (w.zero_stage == 3 and w.offload_optimizer and w.offload_params):
        out.append((f"train.deepspeed_config={OFFLOAD_PRESET}",
                    dataclasses.replace(w, zero_stage=3, offload_optimizer=True, offload_params=True)))
    chunk = w.loss_chunk_size if 0 < w.loss_chunk_size <= 4096 else 4096
    out += [(f"train.sequence_parallel={n} train.loss_chunk_size={chunk} train.gradient_checkpointing=true",
             dataclasses.replace(w, sequence_parallel=n, loss_chunk_size=chunk, gradient_checkpointing=True))
            for n in sequence_parallel_degrees(arch, w)]
    return out


def suggest(arch: Architecture, w: Workload, gpu: GpuSpec, mfu: float = DEFAULT_MFU) -> list[Suggestion]:
    """The first fitting change of each kind (SP degree, loss chunk, checkpointing, micro-batch, offload, then
    SP with a chunked loss); empty when the configuration fits already or nothing tried fits."""
    found: dict[str, Suggestion] = {}
    for change, candidate in _candidates(arch, w):
        kind = change.split("=")[0] if " " not in change else "combined"
        if kind in found or (kind == "combined" and "train.sequence_parallel" in found):
            continue  # a combination is only worth naming when SP alone does not fit
        result = estimate(arch, candidate, gpu, mfu)
        if result.fits:
            found[kind] = Suggestion(change, result)
    return list(found.values())


def smallest_fitting_sp(arch: Architecture, w: Workload, gpu: GpuSpec, mfu: float = DEFAULT_MFU) -> Estimate | None:
    """The estimate at the smallest SP degree (the current one or above) whose configuration fits, else None."""
    for n in [w.sequence_parallel] + sequence_parallel_degrees(arch, w):
        result = estimate(arch, dataclasses.replace(w, sequence_parallel=n), gpu, mfu)
        if result.fits:
            return result
    return None


def _gib(value: int) -> str:
    return f"{value / GIB:7.2f} GiB"


def describe(arch: Architecture, w: Workload, title: str) -> str:
    offload = "+".join(name for name, on in (("optimizer", w.offload_optimizer), ("params", w.offload_params)) if on)
    return (f"{title}: {arch.name} ({arch.total_params / 1e9:.2f} B parameters), {w.sequence_length} tokens per "
            f"sample x micro-batch {w.micro_batch}, SP {w.sequence_parallel} ({w.local_tokens} tokens per rank), "
            f"ZeRO-{w.zero_stage}{' offload ' + offload if offload else ''}, checkpointing "
            f"{'on' if w.gradient_checkpointing else 'off'}, loss chunk {w.loss_chunk_size or 'none'}, {w.attention}, "
            f"{'bf16' if w.bf16 else 'fp32'}")


def format_estimate(result: Estimate) -> list[str]:
    lines = [f"  {name:<22}{_gib(value)}" for name, value in result.breakdown.items()]
    at, phases = max(result.phases, key=result.phases.get), result.phases
    lines.append(f"  {'= peak allocated':<22}{_gib(result.peak_bytes)}   (at the {at}: loss backward "
                 f"{phases['loss backward'] / GIB:.2f} GiB, a layer's backward {phases['layer backward'] / GIB:.2f} "
                 f"GiB over the stored activations)")
    lines.append(f"  {'+ context, allocator':<22}{_gib(result.headroom_bytes)}")
    w, gpu = result.workload, result.gpu
    if gpu is None:
        lines.append(f"  {'= needed per GPU':<22}{_gib(result.reserved_bytes)} (GPU type unknown: no fit verdict)")
        return lines
    verdict = "fits" if result.fits else "DOES NOT FIT"
    lines.append(f"  {'= needed per GPU':<22}{_gib(result.reserved_bytes)} of {gpu.memory_gib:.1f} GiB "
                 f"({gpu.name}): {verdict}")
    lines.append(f"  step ~{result.step_time_s:.2f} s, ~{result.tokens_per_s:,.0f} tokens/s on {w.world_size} GPUs "
                 f"at MFU {result.mfu:.2f} of {gpu.bf16_tflops:.0f} TFLOP/s bf16 (all-to-all time not modelled)")
    lines.append(f"  host memory asked by DeepSpeed's estimator: {result.cpu_bytes / GIB:.1f} GiB per node")
    return lines


def format_plan(arch: Architecture, w: Workload, gpu: GpuSpec | None, title: str,
                mfu: float = DEFAULT_MFU) -> tuple[str, Estimate, list[Suggestion]]:
    """(the report's text, the estimate, the suggestions when it does not fit)."""
    result = estimate(arch, w, gpu, mfu)
    lines = [describe(arch, w, title), *format_estimate(result)]
    found = suggest(arch, w, gpu, mfu) if result.fits is False else []
    if gpu is not None:
        needed = smallest_fitting_sp(arch, w, gpu, mfu)
        lines.append(f"  SP degree it needs: {needed.workload.sequence_parallel}" if needed else
                     f"  no SP degree up to {w.world_size} fits with these settings alone")
    if result.fits is False:
        if found:
            lines.append("  changes that fit (each alone; the first is the smallest of its kind):")
            lines += [f"    {'--set ' + s.change.replace(' ', ' --set '):<90} "
                      f"{s.estimate.reserved_bytes / GIB:6.1f} GiB, ~{s.estimate.step_time_s:.2f} s/step"
                      for s in found]
        else:
            lines.append("  nothing tried fits (SP up to the GPU count, loss chunks, checkpointing, offload): add GPUs "
                         "or shorten the sequence")
    return "\n".join(lines), result, found
