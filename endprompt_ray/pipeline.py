"""The main job as a library call: data -> train -> export -> RULER -> MLflow. Entry points stay thin around it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import ray

from . import tracking
from .config import ConfigError, ExtendConfig, dump_yaml
from .data import build_dataset, data_report
from .deps import check_runtime
from .export import export_from_checkpoint
from .modeling import load_config, load_tokenizer
from .rope import scaled_config
from .train import deepspeed_config, make_trainer

log = logging.getLogger("endprompt_ray")


@dataclass
class ExtendResult:
    run_name: str
    model_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    final_metrics: dict
    data_report: dict
    checkpoint_path: str
    ruler: dict = field(default_factory=dict)  # {"overall": float, "averages": {length: score}, "files": {...}}
    wall_time_s: float = 0.0


def connect_ray(**kwargs) -> None:
    """Attach to a running cluster (RAY_ADDRESS, `ray job submit`, or a local `ray start`), else start a local one."""
    if not ray.is_initialized():
        ray.init(**kwargs)


def run_extend(cfg: ExtendConfig, mlflow_tags: dict | None = None) -> ExtendResult:
    started = time.perf_counter()
    connect_ray()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.tiny)
    preflight(cfg)
    dataset, stats = build_dataset(cfg, tokenizer)
    run_id = tracking.start_run(cfg, deepspeed_config(cfg, cfg.max_workers), tags=mlflow_tags)
    try:
        trainer = make_trainer(cfg, dataset, callbacks=[tracking.MlflowTrainCallback(cfg.tracking_uri, run_id)])
        result = trainer.fit()
        report = data_report(stats)
        tracking.log_data_report(report)
        model_dir = export_from_checkpoint(result.checkpoint, run_dir / "model")
        final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
        ruler = evaluate_ruler(cfg, model_dir) if cfg.eval.enabled else {}
        mlflow.log_metric("wall_time_s", time.perf_counter() - started)
        if cfg.tracking.log_model:  # off by default: an 8B export is 16 GB
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
    finally:
        mlflow.end_run()
    return ExtendResult(run_name=cfg.run.name, model_dir=model_dir, mlflow_run_id=run_id,
                        tracking_uri=cfg.tracking_uri, final_metrics=final, data_report=report,
                        checkpoint_path=str(result.checkpoint.path), ruler=ruler,
                        wall_time_s=time.perf_counter() - started)


def preflight(cfg: ExtendConfig) -> None:
    """Checks that would otherwise fail inside every training worker: fail once, here, with the clear message."""
    model_config = scaled_config(load_config(cfg.model.name_or_path, cfg.model.tiny), cfg.method.target_length,
                                 cfg.rope)
    check_runtime(cfg, model_config)
    if cfg.eval.enabled:  # an eval setting that cannot work must not wait for training to finish first
        ruler_settings(cfg).validate()
        for key in ("essay_path", "squad_path", "hotpotqa_path"):
            path = getattr(cfg.eval, key)
            if path and not Path(path).expanduser().exists():
                raise ConfigError(f"eval.{key}={path!r} does not exist; fix the path or leave it unset")
    if cfg.model.attn_implementation.startswith("flash_attention") and not cfg.train.use_gpu:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs GPUs: set train.use_gpu=true "
                          "or use model.attn_implementation=sdpa")


def ruler_settings(cfg: ExtendConfig):
    from .eval.ruler import RulerSettings

    return RulerSettings(lengths=cfg.eval.lengths or [cfg.method.target_length], tasks=cfg.eval.tasks or None,
                         num_samples=cfg.eval.num_samples, batch_size=cfg.eval.batch_size, seed=cfg.run.seed,
                         essay_path=cfg.eval.essay_path, squad_path=cfg.eval.squad_path,
                         hotpotqa_path=cfg.eval.hotpotqa_path)


def evaluate_ruler(cfg: ExtendConfig, model_dir: Path) -> dict:
    """RULER at the target length (or eval.lengths) on the exported model, logged to the active MLflow run."""
    from .eval.ruler import log_ruler_to_mlflow, run_ruler

    result = run_ruler(str(model_dir), None, ruler_settings(cfg), cfg.run_dir / "ruler")
    log_ruler_to_mlflow(result)
    return {"overall": result.overall, "averages": result.averages, "covered_tasks": list(result.covered_tasks),
            "skipped": dict(result.skipped), "files": {k: str(v) for k, v in result.files.items()}}


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


def quiet_logs() -> None:
    """Keep the console readable: progress bars and the summary, not library chatter."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("DeepSpeed", "transformers", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
