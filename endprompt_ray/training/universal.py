"""Resume a DeepSpeed checkpoint on a different number of data-parallel ranks (ZeRO stage 2 and 3).

A ZeRO checkpoint stores each rank's flat slice of the fp32 master weights and Adam moments, so it only loads on the
world size that wrote it. DeepSpeed's universal checkpoint format stores them per parameter instead:
`deepspeed.checkpoint.ds_to_universal` converts, and an engine built with `"checkpoint": {"load_universal": true}`
re-partitions them for its own world size while loading.

Trainer side, per checkpoint (see tests/test_universal.py for the measured round trip):
    save:    engine.save_checkpoint(dir, tag=TAG, client_state=client_state())
    resume:  if saved_world_size(dir, TAG) != world:  (one rank per node converts, then a barrier)
                 path = to_universal(dir, TAG, out_dir)
                 engine = deepspeed.initialize(..., config=universal_config(ds_config), ...)
                 client = load_universal(engine, path)
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path


def client_state() -> dict:
    """What `save_checkpoint(client_state=...)` must carry for `ds_to_universal` to accept a ZeRO-1/2 checkpoint
    (it asserts "Required universal_checkpoint_info state is missing" otherwise). Plain DP needs no merge patterns."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    return {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}


def _model_states_file(folder: Path) -> Path:
    # stage 2: mp_rank_00_model_states.pt (rank 0 only); stage 3: zero_pp_rank_{r}_mp_rank_00_model_states.pt (each)
    files = sorted(f for f in folder.glob("*model_states.pt") if not f.name.startswith(("layer_", "expert_")))
    if not files:
        raise FileNotFoundError(f"{folder} holds no DeepSpeed *model_states.pt file: not a checkpoint written by "
                                "engine.save_checkpoint(dir, tag), or the wrong checkpoint directory/tag")
    return files[0]


def saved_world_size(ckpt_dir: str | Path, tag: str) -> int:
    """The data-parallel world size that wrote `ckpt_dir/tag` (the `dp_world_size` every engine records)."""
    import torch

    folder = Path(ckpt_dir) / tag
    state = torch.load(_model_states_file(folder), map_location="cpu", weights_only=False, mmap=True)
    dp, mp = int(state["dp_world_size"]), int(state.get("mp_world_size") or 1)
    shards = len(list(folder.glob("*optim_states.pt")))  # one per rank in both stages
    if shards != dp * mp:
        raise RuntimeError(f"{folder} was written by {dp * mp} ranks but holds {shards} *optim_states.pt files: the "
                           "checkpoint is incomplete (a rank failed while saving, or only part of it was copied)")
    return dp


def to_universal(ckpt_dir: str | Path, tag: str, out_dir: str | Path, workers: int = 1) -> Path:
    """Convert `ckpt_dir/tag` into a universal checkpoint at `out_dir/tag`, in this process; returns that folder.

    `out_dir` must lie outside the (Ray) checkpoint folder. `inject_missing_state` also accepts ZeRO-2 checkpoints
    saved without `client_state()` (ZeRO-3 ones never need it). `workers` > 1 runs the converter's process pools
    (one task per rank shard, then per parameter): worth it for large models only."""
    from deepspeed.checkpoint.ds_to_universal import main

    source, target = Path(ckpt_dir) / tag, Path(out_dir) / tag
    _model_states_file(source)  # fail with our message, not the converter's glob error
    args = argparse.Namespace(input_folder=str(source), output_folder=str(target), num_extract_workers=workers,
                              num_merge_workers=workers, keep_temp_folder=False, strict=True, inject_missing_state=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the converter prints every stage; keep it for the error below
            main(args)
    except Exception as err:
        raise RuntimeError(f"DeepSpeed's ds_to_universal could not convert {source} into {target}: {err!r}\n"
                           f"converter output:\n{log.getvalue()}") from err
    if not (target / "zero" / "optimizer_state.pt").is_file():
        raise RuntimeError(f"ds_to_universal left no {target / 'zero' / 'optimizer_state.pt'}; output:\n"
                           f"{log.getvalue()}")
    return target


def universal_config(ds_config: dict) -> dict:
    """A copy of a DeepSpeed config whose engine loads universal checkpoints (and only those: it looks for the
    per-parameter `zero/` folder, so keep the plain config for same-world-size resumes)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def load_universal(engine, path: str | Path) -> dict:
    """Load the universal checkpoint folder `path` (from `to_universal`) into an engine built with
    `universal_config`: weights, optimizer moments and step, lr scheduler, global step. Returns the client state
    (what save_checkpoint's client_state carried)."""
    path = Path(path)
    if not (path / "zero" / "optimizer_state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a universal checkpoint (no zero/optimizer_state.pt): convert the "
                                "DeepSpeed checkpoint with to_universal and pass the folder it returns")
    if not engine._config.load_universal_checkpoint:
        raise ValueError("the engine was built without universal loading: pass universal_config(ds_config) to "
                         "deepspeed.initialize before load_universal")
    load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                               load_lr_scheduler_states=True)
    if load_path is None:  # DeepSpeed's documented failure value: (None, None), nothing loaded
        raise RuntimeError(f"DeepSpeed loaded nothing from universal checkpoint {path} (its *model_states.pt files "
                           "are missing or unreadable); pass the folder to_universal returned")
    return client
