"""The package works installed: a wheel of the checkout, installed non-editable, runs the default job from an empty
directory with no checkout in reach, and ships its presets and DeepSpeed configs."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from endprompt_ray.cli import COMMANDS, load_command
from endprompt_ray.resources import ResourceNotFoundError, find_deepspeed, find_preset, find_sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["endprompt_ray/presets/tiny-cpu.yaml", "endprompt_ray/presets/tiny-heldout.yaml",
           "endprompt_ray/presets/llama3-8b-64k.yaml",
           "endprompt_ray/presets/smollm2-135m.yaml", "endprompt_ray/presets/deepspeed/zero2.json",
           "endprompt_ray/presets/deepspeed/zero3.json", "endprompt_ray/presets/deepspeed/zero3_offload.json",
           "endprompt_ray/presets/sweeps/anchor_space.yaml", "endprompt_ray/presets/sweeps/lr_heldout.yaml",
           "endprompt_ray/presets/rope_search/rope_search_llama3.yaml",
           "endprompt_ray/assets/tiny-base/config.json", "endprompt_ray/assets/tiny-base-recall/model.safetensors"]


def test_shipped_files_are_found_by_name_by_former_path_and_a_real_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = find_deepspeed("zero3")
    assert json.loads(shipped.read_text())["zero_optimization"]["stage"] == 3
    assert find_deepspeed("zero3.json") == find_deepspeed("configs/deepspeed/zero3.json") == shipped
    assert find_sweep("tune_spaces/anchor_space.yaml") == find_sweep("anchor_space")
    (tmp_path / "zero3.json").write_text("{}")  # one's own file of the same name, in the working directory
    assert find_deepspeed("zero3.json") == tmp_path / "zero3.json"
    assert find_deepspeed("zero3") == shipped
    with pytest.raises(ResourceNotFoundError, match="shipped: llama3-8b-64k, smollm2-135m, tiny-cpu, tiny-heldout"):
        find_preset("llama3-8b-4k")
    with pytest.raises(ResourceNotFoundError, match="zero2, zero3, zero3_offload"):
        find_deepspeed(tmp_path / "elsewhere" / "zero2.json")  # a path that does not exist is not a name


def test_every_command_is_a_main_taking_argv():
    for name in COMMANDS:
        command = load_command(name)
        assert list(inspect.signature(command).parameters) == ["argv"], name


def test_endprompt_help_imports_neither_ray_nor_deepspeed_nor_torch():
    probe = ("import sys\nfrom endprompt_ray.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'deepspeed', 'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "extend" in out and out.strip().splitlines()[-1] == "[]", out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site dir, environment) for a wheel built from a copy of the checkout's sources (so the build leaves
    nothing in the checkout) and installed with `pip --target`: on PYTHONPATH it comes before the test environment's
    editable install, whose finder Python consults only after the path entries."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "endprompt_ray", source / "endprompt_ray",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"),
                    str(source)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("endprompt_ray-*.whl"))
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "RAY_ADDRESS": "local"}
    return wheel, site, env


def _run(args, cwd, env, timeout=60):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow  # builds a wheel
def test_the_wheel_ships_presets_deepspeed_configs_and_the_console_script(installed):
    wheel, site, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in SHIPPED if f not in names], sorted(n for n in names if "presets" in n)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "endprompt = endprompt_ray.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert (site / "bin" / "endprompt").is_file()


@pytest.mark.slow  # builds a wheel; the job runs Ray Train + DeepSpeed
def test_the_installed_package_runs_its_default_job_from_an_empty_directory(installed, tmp_path):
    _, site, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    where = _run([sys.executable, "-c", "import endprompt_ray; print(endprompt_ray.__file__)"], work, env)
    assert Path(where.stdout.strip()).is_relative_to(site), where  # the wheel, not the checkout's editable install

    top = _run(["endprompt", "--help"], work, env)
    assert top.returncode == 0 and "search-rope" in top.stdout and "build-toy-base" in top.stdout, top
    extend_help = _run(["endprompt", "extend", "--help"], work, env)
    assert extend_help.returncode == 0, extend_help
    assert "tiny-cpu" in extend_help.stdout  # the shipped presets, by name
    field = extend_help.stdout.split("\n  method.target_length ", 1)[1].splitlines()
    assert field[1].strip(), "method.target_length is listed without its help text"
    unknown = _run(["endprompt", "extend", "--config", "llama3-8b-4k", "--print-config"], work, env)
    assert unknown.returncode == 2 and "llama3-8b-64k, smollm2-135m, tiny-cpu, tiny-heldout" in unknown.stderr, unknown

    job = _run(["endprompt", "extend", "--set", "train.max_steps=2", "--set", "eval.enabled=false",
                "--set", "train.num_workers=1", "--set", "train.checkpoint_every=2",
                "--set", "data.demo_documents=200", "--set", "train.deepspeed_config=zero2"],
               work, env, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    model = work / "outputs" / "endprompt-tiny" / "model"
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors")), sorted(model.iterdir())
    assert str(model) in job.stdout
