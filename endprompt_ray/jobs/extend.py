"""The main job as a library call: data -> train -> export -> RULER -> MLflow. Entry points stay thin around it."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from endprompt_ray.config.loader import dump_yaml
from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.data.dataset import build_stream, data_report
from endprompt_ray.errors import ConfigError
from endprompt_ray.eval.compare import EvalReport, evaluate_after_training, format_comparison, ruler_settings
from endprompt_ray.jobs.preflight import check_runtime, warn_if_out_of_memory
from endprompt_ray.models.attention import uses_flash_path
from endprompt_ray.models.export import export_from_checkpoint
from endprompt_ray.models.loading import load_config, load_tokenizer
from endprompt_ray.rope.scaling import scaled_config
from endprompt_ray.runtime import tracking
from endprompt_ray.runtime.ray_session import connect_ray
from endprompt_ray.training.progress import training_bar
from endprompt_ray.training.resume import check_resume, latest_progress, run_identity
from endprompt_ray.training.sequence_parallel import check_model
from endprompt_ray.training.trainer import deepspeed_config, make_trainer


@dataclass
class ExtendResult:
    run_name: str
    model_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    final_metrics: dict
    data_report: dict
    checkpoint_path: str
    evaluation: EvalReport | None = None  # suites on the trained model and, with eval.compare, the baselines
    wall_time_s: float = 0.0

    @property
    def ruler(self) -> dict:
        """The trained model's RULER summary: {"overall", "averages", "covered_tasks", "skipped", "files"}."""
        return self.evaluation.ruler if self.evaluation else {}


def run_extend(cfg: ExtendConfig, mlflow_tags: dict | None = None, train_callbacks: list | None = None,
               probe: dict | None = None) -> ExtendResult:
    """`train_callbacks`: more Ray Train callbacks (a sweep's report to Tune); `probe`: sweeps.probe settings.
    The MLflow run ends FINISHED, FAILED (with the error in the `endprompt.error` tag) or KILLED (interrupted)."""
    started = time.perf_counter()
    connect_ray()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.tiny)
    preflight(cfg)
    source, stats = build_stream(cfg, tokenizer)
    identity = run_identity(cfg, source.fingerprint, f"{type(tokenizer).__name__}, vocab {len(tokenizer)}")
    incomplete: list[str] = []
    previous = latest_progress(cfg.storage_path, cfg.run.name, incomplete)
    for path in incomplete:
        print(f"warning: {path} is cut short (a checkpoint whose copy to storage was interrupted); Ray Train does "
              "not restore it, the latest complete checkpoint is used", file=sys.stderr)
    if previous is not None:
        check_resume(previous, identity, cfg)
        resized = (f"; train.num_workers={cfg.train.num_workers} now, the global batch of {previous.global_batch} "
                   "samples is kept") if cfg.train.num_workers != previous.world_size else ""
        print(f"resuming run '{cfg.run.name}' at step {previous.step}: {previous.samples} samples trained by "
              f"{previous.world_size} worker{'s' * (previous.world_size != 1)}{resized}", flush=True)
    # the first start's config stays; a resume keeps the one it ran with beside it
    config_file = "config.yaml" if previous is None else f"config-resume-step{previous.step}.yaml"
    (run_dir / config_file).write_text(dump_yaml(cfg))
    run_id = tracking.start_run(cfg, deepspeed_config(cfg, cfg.max_workers), tags=mlflow_tags,
                                resumed_at=previous.step if previous else None)
    with tracking.run_status(run_id):
        with training_bar(cfg.train_steps, f"train {cfg.run.name}", start=previous.step if previous else 0) as board:
            callbacks = [tracking.MlflowTrainCallback(cfg.tracking_uri, run_id), *(train_callbacks or [])]
            trainer = make_trainer(cfg, source, identity, callbacks=callbacks, progress=board, probe=probe)
            result = trainer.fit()
        report = data_report(stats)
        tracking.log_data_report(report)
        model_dir = export_from_checkpoint(result.checkpoint, run_dir / "model")
        final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        evaluation = evaluate_after_training(cfg, model_dir) if cfg.eval.enabled else None
        mlflow.log_metric("wall_time_s", time.perf_counter() - started)
        if cfg.tracking.log_model:  # off by default: an 8B export is 16 GB
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
    return ExtendResult(run_name=cfg.run.name, model_dir=model_dir, mlflow_run_id=run_id,
                        tracking_uri=cfg.tracking_uri, final_metrics=final, data_report=report,
                        checkpoint_path=str(result.checkpoint.path), evaluation=evaluation,
                        wall_time_s=time.perf_counter() - started)


def preflight(cfg: ExtendConfig) -> None:
    """Checks that would otherwise fail inside every training worker: fail once, here, with the clear message."""
    import torch

    model_config = scaled_config(load_config(cfg.model.name_or_path, cfg.model.tiny), cfg.method.target_length,
                                 cfg.rope)
    check_runtime(cfg, model_config)
    if cfg.train.sequence_parallel > 1:  # heads that do not split over the SP group: here, not in every worker
        text = model_config.get_text_config()
        try:
            check_model(cfg.train.sequence_parallel, text.num_attention_heads, text.num_key_value_heads,
                        cfg.model.attn_implementation)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    warn_if_out_of_memory(cfg)
    if cfg.eval.enabled:  # an eval setting that cannot work must not wait for training to finish first
        if "ruler" in cfg.eval.suites:
            ruler_settings(cfg).validate()
        for key in ("essay_path", "squad_path", "hotpotqa_path", "ppl_documents"):
            path = getattr(cfg.eval, key)
            if path and not Path(path).expanduser().exists():
                raise ConfigError(f"eval.{key}={path!r} does not exist; fix the path or leave it unset")
    if uneven := cfg.uneven_worker_counts():  # legal, but a resize to one of them cannot start: say so up front
        print(f"warning: train.num_workers={cfg.train.num_workers}: Ray Train may resize to any count in the range, "
              f"and {', '.join(map(str, uneven))} worker(s) cannot keep the global batch of {cfg.global_batch} "
              f"samples (a group of that size fails to start); raise train.gradient_accumulation_steps or narrow "
              f"the range to avoid it", file=sys.stderr)
    if cfg.eval.enabled and cfg.train.use_gpu and not torch.cuda.is_available():  # the CPU-only head of aws.yaml
        print(f"warning: the evaluation after training runs in this driver process, which sees no GPU: every model "
              f"variant would be scored at up to {max(cfg.eval.lengths or [cfg.method.target_length])} tokens on "
              f"CPU. To score on a GPU node, set "
              f"eval.enabled=false and, after training, run `ray job submit --entrypoint-num-gpus 1 -- python "
              f"pipelines/evaluate.py --model {cfg.run_dir / 'model'} --suites {','.join(cfg.eval.suites)}` "
              f"(run.output_dir on storage every node mounts)", file=sys.stderr)
    if uses_flash_path(cfg.model.attn_implementation) and not cfg.train.use_gpu:
        raise ConfigError(f"model.attn_implementation={cfg.model.attn_implementation} is a flash-attention kernel and "
                          "needs GPUs: set train.use_gpu=true or use model.attn_implementation=sdpa")


def format_summary(res: ExtendResult) -> str:
    m = res.final_metrics
    lines = [
        "",
        f"endprompt-ray: run '{res.run_name}' finished in {res.wall_time_s:.0f}s",
        f"  final step {int(m.get('step', 0))}, loss {m.get('loss', float('nan')):.4f}, "
        f"{m.get('tokens_per_s', 0):.0f} tokens/s",
        _data_line(res.data_report),
        f"  model (Hugging Face format): {res.model_dir}",
        f"  last checkpoint: {res.checkpoint_path}",
    ]
    if res.evaluation:
        lines += ["", format_comparison(res.evaluation), ""]
        lines += [f"    {name}: {path}" for name, path in res.evaluation.files.items()]
    if res.ruler:
        covered = ", ".join(res.ruler["covered_tasks"])
        lines.append(f"  RULER average {res.ruler['overall']:.2f} over [{covered}]")
        for task, reason in res.ruler["skipped"].items():
            lines.append(f"    skipped {task}: {reason}")
        for name, path in res.ruler["files"].items():
            lines.append(f"    {name}: {path}")
    lines.append(f"  MLflow run {res.mlflow_run_id} at {res.tracking_uri}")
    if res.tracking_uri.startswith("sqlite:"):
        lines.append(f"  open the UI: mlflow ui --backend-store-uri {res.tracking_uri}   (then http://127.0.0.1:5000)")
    return "\n".join(lines)


def _data_line(report: dict) -> str:
    skipped = ", ".join(f"{k.removeprefix('skipped_')}={v}" for k, v in sorted(report.items())
                        if k.startswith("skipped") and v)
    return (f"  data: {report.get('records', 0)} records -> {report.get('documents', 0)} documents -> "
            f"{report.get('samples', 0)} samples ({report.get('packs', 0)} packed)"
            + (f"; skipped: {skipped}" if skipped else "; nothing skipped"))


def quiet_logs(log_file: Path | None = None) -> None:
    """Keep the console to progress bars and the summary: library logging and Python warnings go to `log_file`,
    and the Ray processes' output stays in Ray's own log files (see `connect_ray`)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["ENDPROMPT_QUIET"] = "1"
    for name in ("DeepSpeed", "transformers", "mlflow", "alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if log_file is None:
        return
    import torch

    if not torch.cuda.is_available():  # else DeepSpeed's import warns that it fell back to the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.utils  # noqa: F401 - creates DeepSpeed's console handler, removed below
    import transformers

    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    transformers.logging.disable_default_handler()
    transformers.logging.disable_progress_bar()  # "Loading weights" bars, once per evaluated model
    logging.captureWarnings(True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    for name in ("transformers", "ray", "mlflow", "alembic", "DeepSpeed"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
        logger.propagate = True
    import ray.data  # noqa: F401 - sets up Ray Data's own loggers: ray-data.log in Ray's logs, and the console
    from ray._private.log import PlainRayHandler

    for console in [h for h in logging.getLogger("ray.data").handlers if isinstance(h, PlainRayHandler)]:
        console.setLevel(logging.WARNING)  # off a terminal it logs ~12 progress lines per dataset; the file keeps them
