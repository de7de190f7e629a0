"""One Ray Train V2 + DeepSpeed trainer for every method (EndPrompt and all baselines differ only in their data).

Each worker loads the model with the scaled RoPE config, wraps it in a DeepSpeed engine (ZeRO stage and offload from
the JSON under configs/deepspeed/), streams its shard of the anchored dataset, and reports metrics and DeepSpeed
checkpoints through `ray.train.report`. Running again with the same run name and storage path resumes from the latest
checkpoint. The final report carries the exported Hugging Face model in `hf_model/`.
"""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from .config import ExtendConfig, config_from_dict
from .export import EXPORT_SUBDIR, save_hf_model
from .lora import apply_lora
from .loss import training_loss
from .modeling import enable_activation_checkpointing, load_config, load_model, load_tokenizer
from .rope import scaled_config
from .s2_attention import S2_ATTENTION, register_s2_attention
from .schedule import lr_scheduler_factory

STATE_TAG = "state"  # DeepSpeed checkpoint tag inside every Ray checkpoint
PROGRESS_FILE = "progress.json"


def deepspeed_config(cfg: ExtendConfig, world_size: int) -> dict:
    """The user's DeepSpeed JSON with batch sizes, optimizer, schedule and precision filled in from our config."""
    t = cfg.train
    ds = json.loads(cfg.deepspeed_path().read_text())
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = t.gradient_accumulation_steps
    ds["train_batch_size"] = t.micro_batch_size * t.gradient_accumulation_steps * world_size
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = ds["optimizer"].setdefault("params", {})
    params.update(lr=t.learning_rate, weight_decay=t.weight_decay)
    params.setdefault("betas", [0.9, 0.95])  # the JSON's own betas and eps win
    params.setdefault("eps", 1e-8)
    if not t.use_gpu:
        params["torch_adam"] = True  # DeepSpeed's fused Adam needs CUDA
    # no "scheduler" here: train.lr_schedule is passed to deepspeed.initialize (a scheduler in the JSON wins)
    bf16 = t.use_gpu if t.bf16 is None else t.bf16
    ds["bf16"] = {"enabled": bool(bf16)}
    return ds


def _peak_memory_mb(device) -> float:
    """Peak since `_start_peak_memory`: CUDA allocator memory on GPU, resident set size on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _start_peak_memory(device) -> float:
    """Restart the peak window and return the memory in use now: the baseline of `peak_memory_delta_mb`, what the
    steps themselves add (on CPU the Ray worker's own ~650 MB would otherwise hide it)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass  # no procfs: the peak then also covers model loading
    return _proc_status_mb("VmRSS") or _peak_memory_mb(device)


def _proc_status_mb(field: str) -> float | None:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in MiB; None without procfs."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith(f"{field}:")), None)


def _batches(shard, micro_batch_size: int, device, skip: int = 0):
    """Endless stream of micro-batches, epoch after epoch, after dropping the first `skip` (those a resumed run has
    already trained on: the stream is deterministic for a fixed worker count). Fails loudly if an epoch is empty."""
    import torch

    epoch = 0
    while True:
        produced = 0
        for batch in shard.iter_torch_batches(batch_size=micro_batch_size, dtypes=torch.long, device=device,
                                              drop_last=True):
            produced += 1
            if skip:
                skip -= 1
                continue
            yield epoch, batch
        if produced == 0:
            raise RuntimeError("the training dataset produced no full micro-batch: the corpus is empty after "
                               "filtering (see the data report: too-short or malformed documents), or smaller "
                               "than num_workers x micro_batch_size samples")
        epoch += 1


class _Window:
    """Per-rank sums between two reports, reduced over all ranks when reported: the loss is the mean over every
    rank's micro-batches, tokens/s counts every rank's tokens over the slowest rank's time."""

    def __init__(self) -> None:
        self.last_loss, self._step_losses = 0.0, []
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.micro_batches = self.tokens = self.seconds = self.steps = 0

    def add_micro(self, loss: float, tokens: int) -> None:
        self._step_losses.append(loss)
        self.loss_sum, self.micro_batches, self.tokens = self.loss_sum + loss, self.micro_batches + 1, self.tokens + tokens

    def end_step(self, seconds: float) -> None:
        self.last_loss = sum(self._step_losses) / len(self._step_losses)  # rank 0's, for the progress bar
        self._step_losses.clear()
        self.seconds, self.steps = self.seconds + seconds, self.steps + 1

    def reduce(self, device) -> dict:
        import torch
        import torch.distributed as dist

        sums = torch.tensor([self.loss_sum, self.micro_batches, self.tokens], dtype=torch.float64, device=device)
        slowest = torch.tensor([self.seconds], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        loss_sum, micro_batches, tokens = sums.tolist()
        seconds = slowest.item()
        out = {"loss": loss_sum / micro_batches, "tokens_per_s": tokens / seconds, "step_time_s": seconds / self.steps}
        self.reset()
        return out


def _quiet_report_logs() -> None:
    """Ray Train V2 logs every `report` call at INFO from a logger named after its file; keep the console for
    the progress bar."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict) -> None:
    import deepspeed
    import torch

    cfg = config_from_dict(loop_config["cfg"])
    _quiet_report_logs()
    t, ctx = cfg.train, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)

    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")  # adopts Ray Train's process group
    if cfg.model.attn_implementation == S2_ATTENTION:  # transformers checks the name while loading
        register_s2_attention(cfg.model.s2_group_fraction)
    ds_config = deepspeed_config(cfg, world)
    model_config = scaled_config(load_config(cfg.model.name_or_path, cfg.model.tiny), cfg.method.target_length,
                                 cfg.rope)
    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    if zero3:  # partition weights while loading instead of materialising the full model on every rank
        from transformers.integrations import HfDeepSpeedConfig

        ds_hook = HfDeepSpeedConfig(ds_config)  # noqa: F841 - must stay alive during from_pretrained
    dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
    model = load_model(cfg.model.name_or_path, config=model_config, attn_implementation=cfg.model.attn_implementation,
                       dtype=dtype, tiny=cfg.model.tiny)
    model.config.use_cache = False
    if t.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = apply_lora(model, t.lora)  # after (ZeRO-3 partitioned) loading, before the engine; no-op when off
    engine, _, _, _ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=[p for p in model.parameters() if p.requires_grad],
        lr_scheduler=lr_scheduler_factory(t.lr_schedule, t.warmup_steps, cfg.train_steps, t.min_lr_ratio))

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            engine.load_checkpoint(ckpt_dir, tag=STATE_TAG)
            step = json.loads((Path(ckpt_dir) / PROGRESS_FILE).read_text())["step"]

    def report(metrics: dict, final: bool = False) -> None:
        saving = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=STATE_TAG)
            if rank == 0:
                (Path(tmp) / PROGRESS_FILE).write_text(json.dumps({"step": step}))
            if final:
                tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.tiny) if rank == 0 else None
                save_hf_model(engine, tokenizer, Path(tmp) / EXPORT_SUBDIR, is_writer=rank == 0, zero3=zero3,
                              metadata={"config": cfg.to_dict(), "steps": step}, lora=t.lora)
            metrics["checkpoint_s"] = time.perf_counter() - saving  # kept out of step_time_s and tokens_per_s
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    max_steps = cfg.train_steps
    shard = ray.train.get_dataset_shard("train") if step < max_steps else None
    consumed = step * t.gradient_accumulation_steps
    batches = _batches(shard, t.micro_batch_size, device, skip=consumed) if shard is not None else iter(())
    board = loop_config.get("progress") if rank == 0 else None  # progress.StepBoard, drawn by the driver
    probe = None
    if loop_config.get("probe"):  # a sweep's intermediate metric for early stopping (sweeps/probe.py)
        from .sweeps.probe import PasskeyProbe

        probe = PasskeyProbe.for_config(cfg, loop_config["probe"])
    metrics: dict = {"step": step}
    engine.train()
    memory_baseline = _start_peak_memory(device)  # model, engine and optimizer are built: the rest is the steps'
    window = _Window()  # this rank's losses, seconds and tokens since the last report
    while step < max_steps:
        started, epoch, lr = time.perf_counter(), 0, engine.get_lr()[0]  # the rate this step trains with
        for _ in range(t.gradient_accumulation_steps):
            epoch, batch = next(batches)
            loss = training_loss(engine, batch, cfg.model.attn_implementation, t.loss_chunk_size)
            engine.backward(loss)
            engine.step()
            window.add_micro(loss.detach().float().item(), int(batch["input_ids"].numel()))
        step += 1
        window.end_step(time.perf_counter() - started)
        if board is not None:
            board.post.remote(step, window.last_loss)
        if step % t.report_every and step % t.checkpoint_every and step != max_steps:
            continue  # a report is a barrier across workers and the controller: seconds each on a CPU cluster
        metrics = {"step": step, "epoch": epoch, "learning_rate": lr, **window.reduce(device),
                   "peak_memory_mb": (peak := _peak_memory_mb(device)),
                   "peak_memory_delta_mb": peak - memory_baseline}
        if probe is not None and probe.due(step, final=step == max_steps):
            metrics.update(probe(engine.module, device))
        if step == max_steps:
            break  # the final report below carries these metrics
        if step % t.checkpoint_every == 0:
            report(metrics)
        else:
            ray.train.report(metrics)
    report(metrics, final=True)


def scaling_config(cfg: ExtendConfig) -> ScalingConfig:
    workers = cfg.train.num_workers
    return ScalingConfig(num_workers=tuple(workers) if isinstance(workers, list) else workers,
                         use_gpu=cfg.train.use_gpu, resources_per_worker={"CPU": cfg.train.cpus_per_worker})


def make_trainer(cfg: ExtendConfig, dataset, callbacks: list | None = None, progress=None,
                 probe: dict | None = None) -> TorchTrainer:
    """`progress`: a progress.StepBoard that rank 0 posts its step and loss to. `probe`: sweeps.probe settings
    (every, samples, depths, length), reported as probe/nll and probe/acc with the training metrics."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "progress": progress, "probe": probe},
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        datasets={"train": dataset},
        run_config=RunConfig(name=cfg.run.name, storage_path=cfg.storage_path, callbacks=callbacks or [],
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
    )
