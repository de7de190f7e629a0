"""LongBench v1 (English datasets) from local JSONL files: reference prompts, middle truncation, metrics, averages."""

from endprompt_ray.eval.longbench.config import CATEGORIES, DATASETS
from endprompt_ray.eval.longbench.run import (LongBenchResult, LongBenchSettings, format_longbench,
                                              log_longbench_to_mlflow, run_longbench, truncate_middle)

__all__ = ["CATEGORIES", "DATASETS", "LongBenchResult", "LongBenchSettings", "format_longbench",
           "log_longbench_to_mlflow", "run_longbench", "truncate_middle"]
