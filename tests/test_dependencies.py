"""Every runtime dependency of every supported configuration is installed: run first (see conftest), fast.

CI installs into a fresh virtualenv, so a package the code needs but pyproject.toml does not declare fails here, by
name, before any slow end-to-end test starts.
"""

import importlib
import pkgutil
from pathlib import Path

import pytest

import endprompt_ray
from endprompt_ray.config.loader import load_config
from endprompt_ray.jobs.preflight import MissingDependency, Probe, check_runtime, missing_package, run_probes
from endprompt_ray.models.loading import load_config as load_model_config
from endprompt_ray.rope.scaling import ROPE_TYPES, scaled_config

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED_CONFIGS = sorted(p.name for p in (ROOT / "endprompt_ray" / "presets" / "deepspeed").glob("*.json"))


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(endprompt_ray.__path__, "endprompt_ray.")]
    assert "endprompt_ray.training.trainer" in names and "endprompt_ray.eval.ruler.runner" in names
    for name in names:
        importlib.import_module(name)


def test_the_shipped_deepspeed_configs_are_all_covered():
    assert {"zero2.json", "zero3.json", "zero3_offload.json"} <= set(DEEPSPEED_CONFIGS)


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
@pytest.mark.parametrize("deepspeed", DEEPSPEED_CONFIGS)
def test_every_configuration_has_its_packages(deepspeed, rope_type):
    cfg = load_config(None, [f"train.deepspeed_config={deepspeed}", f"rope.type={rope_type}",
                             "eval.enabled=true"])
    model_config = scaled_config(load_model_config("tiny"), cfg.method.target_length, cfg.rope)
    check_runtime(cfg, model_config)


def test_presets_have_their_packages():
    for preset in sorted((ROOT / "endprompt_ray" / "presets").glob("*.yaml")):
        cfg = load_config(preset)
        check_runtime(cfg)  # the model config of a hub preset is not downloaded here; its rope probe is covered above


def test_a_missing_package_is_named_with_the_fix():
    with pytest.raises(MissingDependency, match=r"needs the package 'no_such_package_xyz'.*pip install"):
        run_probes([Probe("a feature", lambda: importlib.import_module("no_such_package_xyz.sub"))])


def test_transformers_version_errors_name_the_package():
    from transformers.utils.versions import require_version

    with pytest.raises(Exception) as missing:
        require_version("no_such_dist_xyz>=1.0")
    assert missing_package(missing.value) == "no_such_dist_xyz"
    with pytest.raises(ImportError) as too_old:
        require_version("accelerate>=999")
    assert missing_package(too_old.value) == "accelerate"
