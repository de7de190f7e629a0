"""Learning-rate schedules against hand-computed rates (warm-up 2 steps, 6 steps in all, floor 0.1)."""

import pytest
import torch

from endprompt_ray.training.schedule import lr_scheduler_factory

HAND = {  # rate of updates 0..5 as a fraction of the peak; p = (k - 2) / 4 after warm-up
    "constant": [0.5, 1.0, 1.0, 1.0, 1.0, 1.0],
    "linear": [0.5, 1.0, 1.0, 0.775, 0.55, 0.325],  # 0.1 + 0.9 (1 - p)
    "cosine": [0.5, 1.0, 1.0, 0.8681981, 0.55, 0.2318019],  # 0.1 + 0.9 (1 + cos(pi p)) / 2
}


@pytest.mark.parametrize("schedule", sorted(HAND))
def test_each_schedule_gives_the_hand_computed_rates(schedule):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2e-4)
    scheduler = lr_scheduler_factory(schedule, warmup_steps=2, total_steps=6, min_ratio=0.1)(optimizer)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])  # the rate this update trains with
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([2e-4 * f for f in HAND[schedule]], rel=1e-6)


def test_no_warmup_starts_at_the_peak():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    lr_scheduler_factory("linear", warmup_steps=0, total_steps=4)(optimizer)
    assert optimizer.param_groups[0]["lr"] == 1.0
