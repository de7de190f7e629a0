"""RULER (NVIDIA's synthetic long-context benchmark): the 13 tasks, exact-budget prompts, scoring, runner, MLflow."""

from endprompt_ray.eval.ruler.report import RulerResult, format_table, log_ruler_to_mlflow
from endprompt_ray.eval.ruler.runner import RulerSettings, run_ruler
from endprompt_ray.eval.ruler.samples import Sample, generate_samples
from endprompt_ray.eval.ruler.tasks import ALL_TASKS, TASKS

__all__ = ["ALL_TASKS", "TASKS", "RulerResult", "RulerSettings", "Sample", "format_table", "generate_samples",
           "log_ruler_to_mlflow", "run_ruler"]
