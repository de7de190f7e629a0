"""GPU types the planner knows: usable memory and dense bf16 tensor-core peak.

Memory is the total nvidia-smi reports for the card (MiB); the CUDA context and the allocator's slack come out of it
(estimate.py counts them as headroom). Peak is NVIDIA's dense (not 2:4-sparse) bf16 figure from each datasheet.
"""

from __future__ import annotations

from dataclasses import dataclass

from endprompt_ray.errors import ConfigError

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int
    bf16_tflops: float  # dense peak
    ray_accelerator_types: tuple[str, ...] = ()  # what Ray's `accelerator_type:<X>` node resource says

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in (
    # H100 SXM5 80 GB: 989 TFLOP/s dense bf16 (NVIDIA H100 datasheet; 1979 is with sparsity)
    GpuSpec("h100-80gb", 81_559 * MIB, 989.0, ("H100",)),
    # H100 PCIe 80 GB: 756 TFLOP/s dense bf16 (H100 datasheet)
    GpuSpec("h100-pcie", 81_559 * MIB, 756.0),
    # H100 NVL 94 GB: 835 TFLOP/s dense bf16 (H100 datasheet)
    GpuSpec("h100-nvl", 95_830 * MIB, 835.0),
    # H200 SXM 141 GB: H100 SXM's tensor cores, 989 TFLOP/s dense bf16 (NVIDIA H200 datasheet)
    GpuSpec("h200", 143_771 * MIB, 989.0, ("H200",)),
    # A100 SXM 40 / 80 GB: 312 TFLOP/s dense bf16 (NVIDIA A100 datasheet)
    GpuSpec("a100-40gb", 40_960 * MIB, 312.0, ("A100-40G",)),
    GpuSpec("a100-80gb", 81_920 * MIB, 312.0, ("A100-80G",)),
    # L40S 48 GB: 362 TFLOP/s dense bf16 (NVIDIA L40S datasheet; 733 with sparsity)
    GpuSpec("l40s", 46_068 * MIB, 362.0, ("L40S",)),
    # A10G 24 GB (AWS g5): no NVIDIA datasheet; the A10's 125 TFLOP/s dense bf16 (A10 datasheet) is an upper bound
    GpuSpec("a10g", 23_028 * MIB, 125.0, ("A10G",)),
    # L4 24 GB: 121 TFLOP/s dense bf16 (NVIDIA L4 datasheet; 242 with sparsity)
    GpuSpec("l4", 23_034 * MIB, 121.0, ("L4",)),
    # RTX 4090 24 GB: 165 TFLOP/s dense bf16 with fp32 accumulation (NVIDIA Ada Lovelace architecture whitepaper)
    GpuSpec("rtx4090", 24_564 * MIB, 165.0),
)}


def gpu_spec(name: str) -> GpuSpec:
    key = name.lower().replace("_", "-")
    if key in GPUS:
        return GPUS[key]
    raise ConfigError(f"unknown GPU type {name!r}; known: {', '.join(GPUS)} (pick the closest, or add a row to "
                      "endprompt_ray/plan/gpus.py with its memory and dense bf16 peak)")


def gpu_from_ray_resources(resources: dict) -> GpuSpec | None:
    """The GPU type named by Ray's `accelerator_type:<X>` resources (ray.cluster_resources()), if exactly one is
    known; None when absent, unknown or mixed."""
    named = {key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")}
    found = {spec.name: spec for spec in GPUS.values() for accel in named if accel in spec.ray_accelerator_types}
    return next(iter(found.values())) if len(found) == 1 else None
