"""RULER (NVIDIA's synthetic long-context benchmark): the 13 tasks, exact-budget prompts, scoring, runner, MLflow."""

from .report import RulerResult, format_table, log_ruler_to_mlflow
from .runner import RulerSettings, run_ruler
from .samples import Sample, generate_samples
from .tasks import ALL_TASKS, TASKS

__all__ = ["ALL_TASKS", "TASKS", "RulerResult", "RulerSettings", "Sample", "format_table", "generate_samples",
           "log_ruler_to_mlflow", "run_ruler"]
