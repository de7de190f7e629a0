"""What each supported configuration needs installed, checked on the driver before any work starts; and, on GPU
runs, whether the planner (endprompt_ray/plan/) expects the training step to fit in GPU memory.

A missing package otherwise surfaces late and far away: transformers' ZeRO-3 loading hook requires `accelerate`
inside every training worker, and the evaluation plots need matplotlib only after training. Each probe below runs
the same entry point the job will use (not a list of names that can drift from the code), and a failure names the
package and the install command.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError
from endprompt_ray.plan.architectures import resolve_architecture
from endprompt_ray.plan.estimate import Workload
from endprompt_ray.plan.gpus import gpu_from_ray_resources
from endprompt_ray.plan.planner import format_plan
from endprompt_ray.training.trainer import deepspeed_config


class MissingDependency(ConfigError):
    """A package that the configured job needs is not installed."""


@dataclass(frozen=True)
class Probe:
    feature: str  # what the configuration asks for, in the user's words
    run: Callable[[], object]  # exercises the code path the job will take
    install: str = ""  # how to fix it; empty: install the named package, which endprompt-ray declares


def _imports(*modules: str) -> Callable[[], None]:
    def run() -> None:
        for module in modules:
            importlib.import_module(module)
    return run


def _zero3_loading_hook(ds_config: dict) -> Callable[[], None]:
    def run() -> None:
        from transformers.integrations import HfDeepSpeedConfig

        HfDeepSpeedConfig(ds_config)  # what train.py builds before from_pretrained; checks accelerate's version too
    return run


def _rope_frequencies(model_config) -> Callable[[], None]:
    def run() -> None:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        rope_type = model_config.rope_parameters["rope_type"]
        if rope_type != "default":
            ROPE_INIT_FUNCTIONS[rope_type](model_config, None)
    return run


def _peft() -> None:
    from transformers.utils.versions import require_version

    require_version("peft>=0.13")  # the LoRA wrapping and merging in lora.py
    importlib.import_module("peft")


def _plots() -> None:
    import matplotlib

    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")


def probes(cfg: ExtendConfig, model_config=None) -> list[Probe]:
    """The probes for this configuration; `model_config` (the scaled HF config) adds the rope probe."""
    ds_config = deepspeed_config(cfg, cfg.max_workers)
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    out = [Probe("training (Ray Train + DeepSpeed)", _imports("ray.train.torch", "ray.data", "deepspeed", "mlflow"))]
    if stage == 3:
        out.append(Probe(f"DeepSpeed ZeRO-3 ({cfg.train.deepspeed_config})", _zero3_loading_hook(ds_config)))
    if model_config is not None:
        out.append(Probe(f"rope.type={cfg.rope.type}", _rope_frequencies(model_config)))
    if cfg.data.format == "hf_disk" or any((Path(p) / "dataset_info.json").exists() for p in cfg.data.paths
                                           if "://" not in p):
        out.append(Probe("data saved with datasets.save_to_disk", _imports("datasets")))
    if cfg.eval.enabled:
        out.append(Probe("evaluation (RULER prompts)", _imports("wonderwords")))
        out.append(Probe("evaluation plots", _plots))
    if cfg.train.lora.enabled:
        out.append(Probe("train.lora.enabled=true (the LoRA / LongLoRA baseline)", _peft,
                         install="pip install 'endprompt-ray[lora]'"))
    attn = cfg.model.attn_implementation
    if attn.startswith("flash_attention"):
        out.append(Probe(f"model.attn_implementation={attn}", _imports("flash_attn"),
                         install="pip install 'endprompt-ray[gpu]'"))
    elif "/" in attn:  # a hub kernel (kernels-community/...), fetched by the `kernels` package
        out.append(Probe(f"model.attn_implementation={attn}", _imports("kernels"), install="pip install kernels"))
    return out


def missing_package(err: Exception) -> str | None:
    """The package an import or version check failed on, if the error names one."""
    # transformers' require_version: "The 'pkg>=1' distribution was not found" / "pkg>=1 is required ... but found"
    for pattern in (r"The '([A-Za-z0-9_.\-]+)", r"^([A-Za-z0-9_.\-]+)\W.* is required"):
        match = re.search(pattern, str(err))
        if match:
            return match.group(1)
    if isinstance(err, ModuleNotFoundError) and err.name:
        return err.name.split(".")[0]
    return None


def check_runtime(cfg: ExtendConfig, model_config=None) -> None:
    """Everything this configuration needs is installed, or one MissingDependency naming the package and the fix."""
    run_probes(probes(cfg, model_config))


def run_probes(selected: list[Probe]) -> None:
    for probe in selected:
        try:
            probe.run()
        except (ImportError, importlib.metadata.PackageNotFoundError) as err:
            package = missing_package(err) or str(err)
            fix = probe.install or f"pip install '{package}' (or reinstall endprompt-ray: pip install -e .)"
            raise MissingDependency(f"{probe.feature} needs the package {package!r}, which is not installed "
                                    f"(or too old): {fix}") from err


def warn_if_out_of_memory(cfg: ExtendConfig, cluster_resources: dict | None = None) -> None:
    """On a GPU run, warn before training when the planner predicts the step does not fit the cluster's GPUs, with
    the numbers and the smallest changes that fit. Never raises: the estimate may be wrong, and a CPU run is not
    planned at all. The GPU type comes from Ray's `accelerator_type:*` resources; unknown, it is said once."""
    if not cfg.train.use_gpu:
        return
    if cluster_resources is None:
        cluster_resources = ray.cluster_resources() if ray.is_initialized() else {}
    gpu = gpu_from_ray_resources(cluster_resources)
    try:
        arch = resolve_architecture(cfg.model.name_or_path, cfg.model.tiny)
        text, result, _ = format_plan(arch, Workload.from_config(cfg), gpu, "memory plan")
    except ConfigError as err:
        print(f"warning: no memory plan for this run ({err})", file=sys.stderr)
        return
    if gpu is None:
        print(f"warning: the GPU type is unknown (no known accelerator_type resource in the Ray cluster), so the "
              f"planner cannot say whether a step fits: it needs about {result.reserved_bytes / 2**30:.1f} GiB per "
              f"GPU; check with `endprompt plan --config ... --gpu <type>`", file=sys.stderr)
    elif not result.fits:
        print(f"warning: this run is predicted not to fit in GPU memory and would fail with out-of-memory after "
              f"start-up.\n{text}", file=sys.stderr)
