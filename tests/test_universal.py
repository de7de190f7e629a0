"""Universal checkpoints (universal.py): a ZeRO-2/3 checkpoint written by N ranks resumes on M ranks, measured.

Each slow case trains the tiny preset for 3 steps on N gloo ranks, each its own process, with the engine built as
train.py builds it (its deepspeed_config: AdamW, gradient clipping; a warm-up + linear lr schedule), saves with
`client_state()`, converts, loads on M ranks with `load_universal`, and compares with the N-rank run:
  * fp32 master weights == `zero_to_fp32` of the original checkpoint (DeepSpeed's independent reader) and == the
    live N-rank engine's; Adam exp_avg / exp_avg_sq / step, lr, scheduler and global step == the live engine's,
    all bit for bit;
  * one more step on the same global batch gives the same weights on M ranks as on N: moments, step (Adam's bias
    correction) and lr all enter that update, so this checks the optimizer state end to end.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from endprompt_ray.training.universal import (client_state, load_universal, saved_world_size, to_universal,
                                              universal_config)

TAG = "state"
GLOBAL_BATCH, SEQ, STEPS = 4, 32, 3
ATOL = 1e-6  # fp32 throughout: the resumed step differs from the uninterrupted one only in reduction order
CASES = [(2, 2, 1), (2, 1, 2), (3, 2, 1), (3, 1, 2)]  # (ZeRO stage, saving world, loading world)


def test_client_state_and_universal_config():
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY

    assert UNIVERSAL_CHECKPOINT_VERSION_KEY in client_state()[UNIVERSAL_CHECKPOINT_INFO]
    ds = {"zero_optimization": {"stage": 2}, "checkpoint": {"tag_validation": "Warn"}}
    assert universal_config(ds)["checkpoint"] == {"tag_validation": "Warn", "load_universal": True}
    assert "load_universal" not in ds["checkpoint"]  # a copy


def test_saved_world_size_reads_the_checkpoint_and_refuses_an_incomplete_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DeepSpeed"):
        saved_world_size(tmp_path, TAG)
    with pytest.raises(FileNotFoundError, match="no DeepSpeed"):
        to_universal(tmp_path, TAG, tmp_path / "out")
    folder = tmp_path / TAG
    folder.mkdir()
    torch.save({"dp_world_size": 2, "mp_world_size": 1}, folder / "mp_rank_00_model_states.pt")
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").touch()
    with pytest.raises(RuntimeError, match="incomplete"):
        saved_world_size(tmp_path, TAG)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").touch()
    assert saved_world_size(tmp_path, TAG) == 2


def test_load_universal_names_a_wrong_folder_or_engine(tmp_path):
    engine = SimpleNamespace(_config=SimpleNamespace(load_universal_checkpoint=False))
    with pytest.raises(FileNotFoundError, match="not a universal checkpoint"):
        load_universal(engine, tmp_path)
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "optimizer_state.pt").touch()
    with pytest.raises(ValueError, match="universal_config"):
        load_universal(engine, tmp_path)


def _launch(world: int, job: dict, tmp: Path) -> None:
    """Run `_worker` on `world` gloo ranks, each its own process (as Ray Train's workers are)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], [tmp / f"{job['name']}_rank{rank}.log" for rank in range(world)]
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        with open(logs[rank], "w") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, json.dumps(job)], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 1200  # a few seconds idle; a shared, overloaded CPU box is far slower
    while any(p.poll() is None for p in procs):  # a failed rank leaves its peers waiting in a collective
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            break
        time.sleep(0.2)
    for proc, log in zip(procs, logs):
        assert proc.wait() == 0, log.read_text()[-4000:]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: "zero{}-{}to{}".format(*case))
def round_trip(request, tmp_path_factory):
    """One training run, conversion and resumed run per case, shared by the tests below."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    stage, saved_world, loaded_world = request.param
    tmp = tmp_path_factory.mktemp(f"zero{stage}-{saved_world}to{loaded_world}")
    ckpt = tmp / "ckpt"
    _launch(saved_world, {"name": "train", "stage": stage, "save": str(ckpt), "out": str(tmp / "orig")}, tmp)
    found_world = saved_world_size(ckpt, TAG)
    path = to_universal(ckpt, TAG, tmp / "universal")
    _launch(loaded_world, {"name": "load", "stage": stage, "load": str(path), "out": str(tmp / "resumed")}, tmp)
    return {"stage": stage, "saved_world": saved_world, "loaded_world": loaded_world, "found_world": found_world,
            "ckpt": ckpt, "universal": path,
            "zero_to_fp32": get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=TAG),
            **{f"{who}_{when}": torch.load(tmp / f"{who}_{when}.pt")
               for who in ("orig", "resumed") for when in ("saved", "next")}}


@pytest.mark.slow
def test_resumed_state_equals_the_saved_one(round_trip):
    r = round_trip
    orig, resumed, reference = r["orig_saved"], r["resumed_saved"], r["zero_to_fp32"]
    assert r["found_world"] == orig["world"] == r["saved_world"] and resumed["world"] == r["loaded_world"]
    assert set(resumed["fp32"]) == set(orig["fp32"]) and len(orig["fp32"]) > 10
    for name, weight in orig["fp32"].items():
        assert torch.equal(resumed["fp32"][name], reference[name]), name  # zero_to_fp32 of the original files
        assert torch.equal(resumed["fp32"][name], weight), name
        assert torch.equal(resumed["exp_avg"][name], orig["exp_avg"][name]), name
        assert torch.equal(resumed["exp_avg_sq"][name], orig["exp_avg_sq"][name]), name
        assert orig["exp_avg_sq"][name].abs().sum() > 0, name  # trained: the moments are not the zero init
    assert resumed["adam_steps"] == orig["adam_steps"] == [float(STEPS)]
    for key in ("lr", "scheduler", "global_steps"):
        assert resumed[key] == orig[key], key
    assert orig["global_steps"] == orig["scheduler"]["last_epoch"] == STEPS
    assert resumed["client_step"] == STEPS  # the rest of save_checkpoint's client_state comes back too


@pytest.mark.slow
def test_next_step_matches_the_uninterrupted_run(round_trip):
    orig, resumed = round_trip["orig_next"], round_trip["resumed_next"]
    assert resumed["loss"] == pytest.approx(orig["loss"], abs=1e-6)
    moved = 0.0
    for name, weight in orig["fp32"].items():
        torch.testing.assert_close(resumed["fp32"][name], weight, atol=ATOL, rtol=0, msg=name)
        moved = max(moved, (weight - round_trip["orig_saved"]["fp32"][name]).abs().max().item())
    assert moved > 100 * ATOL  # the step really moved the weights, far beyond the tolerance


@pytest.mark.slow
def test_zero2_checkpoint_saved_without_client_state_converts_the_same(round_trip, tmp_path):
    """Checkpoints written before client_state() was passed: to_universal injects the missing info itself."""
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    if round_trip["stage"] != 2 or round_trip["saved_world"] == 1:
        pytest.skip("ZeRO-3 conversion never reads universal_checkpoint_info; one ZeRO-2 case suffices")
    shutil.copytree(round_trip["ckpt"], tmp_path / "ckpt")
    model_states = tmp_path / "ckpt" / TAG / "mp_rank_00_model_states.pt"
    state = torch.load(model_states, weights_only=False)
    del state[UNIVERSAL_CHECKPOINT_INFO]
    torch.save(state, model_states)
    path = to_universal(tmp_path / "ckpt", TAG, tmp_path / "universal")
    expected = sorted(p.relative_to(round_trip["universal"]) for p in (round_trip["universal"] / "zero").rglob("*.pt"))
    assert sorted(p.relative_to(path) for p in (path / "zero").rglob("*.pt")) == expected
    for file in expected:
        ours, theirs = torch.load(path / file, weights_only=False), torch.load(round_trip["universal"] / file,
                                                                              weights_only=False)
        if isinstance(ours, dict) and "param" in ours:
            ours, theirs = ours["param"], theirs["param"]
        assert not torch.is_tensor(ours) or torch.equal(ours, theirs), file


def _snapshot(engine) -> dict:
    """Full (gathered) fp32 weights and Adam moments per parameter, through DeepSpeed's own accessors (collective)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    snap = {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, param in engine.module.named_parameters():
        snap["fp32"][name] = safe_get_full_fp32_param(param).detach().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            snap[key][name] = safe_get_full_optimizer_state(param, key).detach().cpu().clone()
    snap["adam_steps"] = sorted({float(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s})
    snap.update(lr=engine.get_lr(), scheduler=engine.lr_scheduler.state_dict(), global_steps=engine.global_steps,
                world=engine.dp_world_size)
    return snap


def _worker(job: dict) -> None:
    """One rank: build the engine as train.py does, then train STEPS steps and save, or load the universal
    checkpoint; snapshot, take one more step on the same global batch, snapshot again."""
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations import HfDeepSpeedConfig

    from endprompt_ray.config.loader import load_config
    from endprompt_ray.models.loading import load_model
    from endprompt_ray.training.schedule import lr_scheduler_factory
    from endprompt_ray.training.trainer import deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(None, [f"train.deepspeed_config=zero{job['stage']}.json",
                             f"train.micro_batch_size={GLOBAL_BATCH // world}", "train.learning_rate=1e-3"])
    ds = deepspeed_config(cfg, world)
    if "load" in job:
        ds = universal_config(ds)
    hook = HfDeepSpeedConfig(ds) if job["stage"] == 3 else None  # noqa: F841 - as train.py: partitioned loading
    model = load_model("tiny", dtype=torch.float32)
    model.config.use_cache = False
    engine, *_ = deepspeed.initialize(model=model, config=ds, model_parameters=list(model.parameters()),
                                      lr_scheduler=lr_scheduler_factory("linear", 2, 10))

    def step(index: int) -> float:  # every world trains on the same global batch, split over its ranks
        g = torch.Generator().manual_seed(index)
        ids = torch.randint(0, model.config.vocab_size, (GLOBAL_BATCH, SEQ), generator=g).chunk(world)[rank]
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        return mean.item() / world

    engine.train()
    client = {}
    if "save" in job:
        for index in range(STEPS):
            step(index)
        engine.save_checkpoint(job["save"], tag=TAG, client_state={**client_state(), "step": STEPS})
    else:
        client = load_universal(engine, job["load"])
    saved = {**_snapshot(engine), "client_step": client.get("step")}
    loss = step(STEPS)
    after = {**_snapshot(engine), "loss": loss}
    if rank == 0:
        torch.save(saved, f"{job['out']}_saved.pt")
        torch.save(after, f"{job['out']}_next.pt")


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
