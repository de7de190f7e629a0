"""Learning-rate schedules: linear warm-up, then constant (the EndPrompt paper's), linear decay or cosine decay.

The multiplier of optimizer update k (0-based) over `train.learning_rate`:
  warm-up, k < W:   (k + 1) / W                      (the first update already moves; the W-th reaches the peak)
  then, with p = (k - W) / (T - W) clipped to [0, 1], T = train.max_steps, m = train.min_lr_ratio:
  constant:         1
  linear:           m + (1 - m) (1 - p)
  cosine:           m + (1 - m) (1 + cos(pi p)) / 2
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def lr_multiplier(step: int, schedule: Schedule, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose constant, linear or cosine")


def lr_scheduler_factory(schedule: Schedule, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """What deepspeed.initialize takes as `lr_scheduler`: a callable from the optimizer to a torch scheduler
    (saved and restored with DeepSpeed checkpoints)."""
    from torch.optim.lr_scheduler import LambdaLR

    return lambda optimizer: LambdaLR(
        optimizer, lambda step: lr_multiplier(step, schedule, warmup_steps, total_steps, min_ratio))
