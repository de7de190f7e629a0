"""One Ray Train V2 + DeepSpeed trainer for every method (EndPrompt and all baselines differ only in their data).

Each worker loads the model with the scaled RoPE config, wraps it in a DeepSpeed engine (ZeRO stage and offload from
the JSON under presets/deepspeed/), builds its own micro-batches of every step from the training stream by position
(data.SampleSource), and reports metrics and DeepSpeed checkpoints through `ray.train.report`. A checkpoint records
the samples consumed, so running again with the same run name and storage path resumes at the first sample not yet
trained on (resume.py checks the run is the same). The final report carries the exported model in `hf_model/`.
With train.sequence_parallel = N, every N consecutive workers train one data-parallel rank's samples together, each
on 1/N of every sequence (sequence_parallel.py); the global batch and the stream order stay those of the run.
"""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from endprompt_ray.config.loader import config_from_dict
from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.eval.probe import PasskeyProbe
from endprompt_ray.models.export import EXPORT_SUBDIR, save_hf_model
from endprompt_ray.models.loading import enable_activation_checkpointing, load_config, load_model, load_tokenizer
from endprompt_ray.models.lora import apply_lora
from endprompt_ray.models.s2_attention import S2_ATTENTION, register_s2_attention
from endprompt_ray.rope.scaling import scaled_config
from endprompt_ray.training.loss import training_loss
from endprompt_ray.training.resume import PROGRESS_FILE, Progress
from endprompt_ray.training.schedule import lr_scheduler_factory
from endprompt_ray.training.sequence_parallel import SequenceParallel, data_parallel_place, enable_sequence_parallel
from endprompt_ray.training.universal import (client_state, load_universal, saved_world_size, to_universal,
                                              universal_config)

STATE_TAG = "state"  # DeepSpeed checkpoint tag inside every Ray checkpoint


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int, sequence_parallel: int = 1) -> int:
    """The gradient accumulation that keeps `global_batch` on `world_size` workers (in data-parallel groups of
    `sequence_parallel`), or a clear error."""
    per_pass = micro_batch * (world_size // sequence_parallel)
    if global_batch % per_pass:
        groups = "" if sequence_parallel == 1 else (f" in {world_size // sequence_parallel} data-parallel groups of "
                                                    f"train.sequence_parallel={sequence_parallel}")
        raise ValueError(f"the run's global batch of {global_batch} samples cannot be split over {world_size} "
                         f"workers{groups} x micro-batch {micro_batch}: use a worker count (or train.num_workers "
                         f"range) whose product with train.micro_batch_size{' / sequence_parallel' * bool(groups)} "
                         f"divides {global_batch}")
    return global_batch // per_pass


def deepspeed_config(cfg: ExtendConfig, world_size: int, accumulation: int | None = None) -> dict:
    """The user's DeepSpeed JSON with batch sizes, optimizer, schedule and precision filled in from our config.
    `accumulation`: the gradient accumulation for this world size (default: the configured one)."""
    t = cfg.train
    accumulation = t.gradient_accumulation_steps if accumulation is None else accumulation
    ds = json.loads(cfg.deepspeed_path().read_text())
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = t.micro_batch_size * accumulation * world_size
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


def _micro_batches(source, samples: int, micro_batch: int, accumulation: int, rank: int, world: int, device,
                   sp: SequenceParallel | None = None):
    """The micro-batches of data-parallel rank `rank` of `world` in the optimizer step that begins at stream position
    `samples` (data/dataset.py); with `sp`, this worker's shard of each."""
    import torch

    batches = [{k: torch.from_numpy(v).to(device=device, dtype=torch.long) for k, v in batch.items()}
               for batch in source.micro_batches(samples, micro_batch, accumulation, rank, world)]
    return [sp.shard(batch) for batch in batches] if sp else batches


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


def _build_engine(cfg: ExtendConfig, ds_config: dict) -> tuple:
    """(the DeepSpeed engine around the model with the scaled RoPE config, whether it is ZeRO-3, this rank's
    SequenceParallel or None)."""
    import deepspeed
    import torch

    t = cfg.train
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
    sp = enable_sequence_parallel(model, cfg.model.attn_implementation, t.sequence_parallel, t.micro_batch_size)
    if t.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = apply_lora(model, t.lora)  # after (ZeRO-3 partitioned) loading, before the engine; no-op when off
    engine, _, _, _ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=[p for p in model.parameters() if p.requires_grad],
        lr_scheduler=lr_scheduler_factory(t.lr_schedule, t.warmup_steps, cfg.train_steps, t.min_lr_ratio))
    return engine, zero3, sp


def _load_state(engine, ckpt_dir: Path, progress: Progress, resized: bool, ctx) -> None:
    """Weights, optimizer and schedule from a Ray checkpoint; a load DeepSpeed reports as failed is an error, never
    a silent fresh start (training would go on from the initial weights while skipping the data). A checkpoint
    written by another number of workers goes through DeepSpeed's universal format (universal.py): converted once
    per node, then re-partitioned for this world size while loading."""
    if not resized:
        path, _ = engine.load_checkpoint(str(ckpt_dir), tag=STATE_TAG)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ckpt_dir} (tag {STATE_TAG}) for step "
                               f"{progress.step}: its state files are missing or unreadable")
        return
    import hashlib
    import shutil

    import torch.distributed as dist

    # node-local, outside Ray's checkpoint; "node" as Ray Train's local ranks count it (one per IP, so Ray nodes
    # that share a machine share the conversion its local rank 0 writes in that machine's /tmp)
    key = hashlib.blake2b(f"{ckpt_dir}:{progress.step}".encode(), digest_size=8).hexdigest()
    out_dir = Path(tempfile.gettempdir()) / "endprompt-universal" / key
    if ctx.get_local_rank() == 0:
        logging.getLogger("endprompt_ray").info("step %d was saved by %d workers, resuming on %d: converting to "
                                                "DeepSpeed's universal format", progress.step, progress.world_size,
                                                ctx.get_world_size())
        shutil.rmtree(out_dir, ignore_errors=True)
        to_universal(ckpt_dir, STATE_TAG, out_dir)
    dist.barrier()
    load_universal(engine, out_dir / STATE_TAG)
    dist.barrier()
    if ctx.get_local_rank() == 0:
        shutil.rmtree(out_dir, ignore_errors=True)


def train_loop_per_worker(loop_config: dict) -> None:
    import deepspeed
    import torch

    cfg = config_from_dict(loop_config["cfg"])
    _quiet_report_logs()
    t, ctx = cfg.train, ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data_rank, data_world = data_parallel_place(rank, world, t.sequence_parallel)  # one per SP group
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.run.seed)

    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")  # adopts Ray Train's process group
    if cfg.model.attn_implementation == S2_ATTENTION:  # transformers checks the name while loading
        register_s2_attention(cfg.model.s2_group_fraction)
    with ExitStack() as stack:  # a resumed run reads its progress before building the engine, its state after
        checkpoint = ray.train.get_checkpoint()
        ckpt_dir = Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
        progress = Progress.read(ckpt_dir / PROGRESS_FILE) if ckpt_dir else None
        global_batch = progress.global_batch if progress else cfg.global_batch
        accumulation = accumulation_steps(global_batch, t.micro_batch_size, world, t.sequence_parallel)
        # ZeRO shards are per rank: another world size re-partitions them. DeepSpeed's own record of the ranks that
        # wrote the checkpoint also refuses one with missing rank files (a partial copy) before anything loads.
        resized = ckpt_dir is not None and saved_world_size(ckpt_dir, STATE_TAG) != world
        ds_config = deepspeed_config(cfg, world, accumulation)  # DeepSpeed sees `world` plain data-parallel ranks
        engine, zero3, sp = _build_engine(cfg, universal_config(ds_config) if resized else ds_config)
        if ckpt_dir:
            _load_state(engine, ckpt_dir, progress, resized, ctx)
    step, samples = (progress.step, progress.samples) if progress else (0, 0)
    restored = progress.step if progress else None  # reported once: a resume event (new job or Ray Train restart)

    def report(metrics: dict, final: bool = False) -> None:
        saving = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=STATE_TAG, client_state=client_state())  # convertible to universal
            if rank == 0:
                Progress(step=step, samples=samples, global_batch=global_batch, world_size=world,
                         identity=loop_config["identity"]).write(Path(tmp) / PROGRESS_FILE)
            if final:
                tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.tiny) if rank == 0 else None
                save_hf_model(engine, tokenizer, Path(tmp) / EXPORT_SUBDIR, is_writer=rank == 0, zero3=zero3,
                              metadata={"config": cfg.to_dict(), "steps": step}, lora=t.lora)
            metrics["checkpoint_s"] = time.perf_counter() - saving  # kept out of step_time_s and tokens_per_s
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    max_steps, source = cfg.train_steps, loop_config["source"]
    board = loop_config.get("progress") if rank == 0 else None  # progress.StepBoard, drawn by the driver
    probe = None
    if loop_config.get("probe"):  # a sweep's intermediate metric for early stopping (sweeps/probe.py)

        probe = PasskeyProbe.for_config(cfg, loop_config["probe"])
    metrics: dict = {"step": step}
    engine.train()
    memory_baseline = _start_peak_memory(device)  # model, engine and optimizer are built: the rest is the steps'
    window = _Window()  # this rank's losses, seconds and tokens since the last report
    while step < max_steps:
        started, lr = time.perf_counter(), engine.get_lr()[0]  # the rate this step trains with
        for batch in _micro_batches(source, samples, t.micro_batch_size, accumulation, data_rank, data_world, device,
                                    sp):
            loss = training_loss(engine, batch, cfg.model.attn_implementation, t.loss_chunk_size, sp)
            engine.backward(loss)
            engine.step()
            window.add_micro(sp.sample_loss(loss) if sp else loss.detach().float().item(),
                             int(batch["input_ids"].numel()))
        step, samples, epoch = step + 1, samples + global_batch, source.epoch_of(samples)
        window.end_step(time.perf_counter() - started)
        if board is not None:
            board.post.remote(step, window.last_loss)
        if step % t.report_every and step % t.checkpoint_every and step != max_steps:
            continue  # a report is a barrier across workers and the controller: seconds each on a CPU cluster
        metrics = {"step": step, "epoch": epoch, "learning_rate": lr, "workers": world, **window.reduce(device),
                   "peak_memory_mb": (peak := _peak_memory_mb(device)),
                   "peak_memory_delta_mb": peak - memory_baseline}
        if restored is not None:
            metrics["resumed_from_step"], restored = restored, None
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
    t, elastic = cfg.train, cfg.worker_range
    return ScalingConfig(num_workers=elastic or t.num_workers, use_gpu=t.use_gpu,
                         resources_per_worker={"CPU": t.cpus_per_worker},
                         **({"elastic_resize_monitor_interval_s": t.elastic_resize_interval_s} if elastic else {}))


def make_trainer(cfg: ExtendConfig, source, identity: dict, callbacks: list | None = None, progress=None,
                 probe: dict | None = None) -> TorchTrainer:
    """`source`: the training stream (data.SampleSource; workers build their own samples from it by position);
    `identity`: the run's defining settings (resume.run_identity), recorded in every checkpoint.
    `progress`: a progress.StepBoard that rank 0 posts its step and loss to. `probe`: sweeps.probe settings
    (every, samples, depths, length), reported as probe/nll and probe/acc with the training metrics."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "source": source, "identity": identity, "progress": progress,
                           "probe": probe},
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=RunConfig(name=cfg.run.name, storage_path=cfg.storage_path, callbacks=callbacks or [],
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures)),
    )
