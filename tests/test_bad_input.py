"""Every bad input named in the spec gets one clear message: what, where, how to fix."""

import json

import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.config.schema import DataConfig
from endprompt_ray.data.dataset import anchor_spec, read_records
from endprompt_ray.errors import ConfigError, ModelLoadError, RopeError
from endprompt_ray.jobs.extend import preflight
from endprompt_ray.method.anchoring import AnchorError
from endprompt_ray.models.loading import load_tokenizer


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  target_lenght: 4096\n")
    with pytest.raises(ConfigError, match="unknown config key method.'target_lenght'"):
        load_config(path)


def test_unknown_key_and_bad_values_in_set():
    with pytest.raises(ConfigError, match="unknown config key train.'stepz'"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="train.max_steps='many' must be an integer"):
        load_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"method.anchor='middle' must be one of \['fixed', 'random'\]"):
        load_config(None, ["method.anchor=middle"])
    with pytest.raises(ConfigError, match=r"\[min, max\] pair"):
        load_config(None, ["train.num_workers=[4, 2]"])


def test_overrides_are_typed():
    cfg = load_config(None, ["train.num_workers=[1, 4]", "eval.lengths=1024,2048", "rope.factor=8"])
    assert cfg.train.num_workers == [1, 4] and cfg.eval.lengths == [1024, 2048] and cfg.rope.factor == 8.0


def test_missing_config_file_and_deepspeed_config(tmp_path):
    with pytest.raises(ConfigError, match="config file .* not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="train.deepspeed_config='zero9.json': file not found"):
        load_config(None, ["train.deepspeed_config=zero9.json"])


def test_l_not_above_p():
    with pytest.raises(ConfigError, match="method.target_length=256 must exceed method.physical_length=256"):
        load_config(None, ["method.target_length=256"])


@pytest.mark.parametrize("overrides, error, message", [
    (["method.physical_length=10"], AnchorError, "terminal prompt of b=.* does not fit in physical_length=10"),
    (["method.anchor=fixed", "method.anchor_offset=5000"], AnchorError, "overlapping segment 1"),
    (["method.anchor=fixed", "method.anchor_offset=-3"], AnchorError, "past the target length"),
])
def test_anchoring_errors(overrides, error, message):
    cfg = load_config(None, overrides)
    with pytest.raises(error, match=message):
        anchor_spec(cfg, load_tokenizer("tiny"))


def test_target_not_above_model_window():
    cfg = load_config(None, ["method.target_length=200", "method.physical_length=128"])
    with pytest.raises(RopeError, match="target_length=200 is not above the window 256 the model covers"):
        preflight(cfg)


def test_a_sequence_parallel_degree_the_heads_cannot_split_by_fails_before_training():
    cfg = load_config(None, ["train.num_workers=8", "train.sequence_parallel=8"])  # the toy base has 4 heads
    with pytest.raises(ConfigError, match="train.sequence_parallel=8 must divide the model's 4 attention heads"):
        preflight(cfg)


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist; fix model.name_or_path"):
        load_tokenizer(str(tmp_path / "no-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_tokenizer(str(tmp_path / "empty"))


def test_tokenizer_without_eos_when_packing():
    tokenizer = load_tokenizer("tiny")
    tokenizer.eos_token = None
    with pytest.raises(AnchorError, match="no eos_token; set a tokenizer with an EOS token or use "
                                          "method.short_docs=skip"):
        anchor_spec(load_config(), tokenizer)


def test_corpus_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; fix data.paths"):
        read_records(DataConfig(paths=[str(tmp_path / "missing.jsonl")]))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="contain no data"):
        read_records(DataConfig(paths=[str(tmp_path / "empty.jsonl")]))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "corpus.docx").write_text("x")
    with pytest.raises(ConfigError, match=r"corpus.docx has an unknown format \(.docx\)"):
        read_records(DataConfig(paths=[str(tmp_path / "odd")]))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (mixed / "b.txt").write_text("b")
    with pytest.raises(ConfigError, match="mix formats"):
        read_records(DataConfig(paths=[str(mixed)]))


def test_cli_prints_one_line_error(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("extend", Path(__file__).parent.parent / "pipelines" / "extend.py")
    extend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extend)
    assert extend.main(["--set", "train.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: unknown config key train.'max_stepz'") and "Traceback" not in err


def test_eval_settings_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="niah_single_9"):
        preflight(load_config(None, ["eval.suites=[ruler]", "eval.tasks=[niah_single_9]"]))
    with pytest.raises(ConfigError, match="eval.essay_path=.* does not exist"):
        preflight(load_config(None, [f"eval.essay_path={tmp_path / 'essays'}"]))
    with pytest.raises(ConfigError, match="eval.ppl_documents=.* does not exist"):
        preflight(load_config(None, [f"eval.ppl_documents={tmp_path / 'heldout.jsonl'}"]))
    with pytest.raises(ConfigError, match="eval.suites is empty"):
        load_config(None, ["eval.suites=[]"])


def test_an_elastic_range_with_counts_that_cannot_keep_the_global_batch_is_warned_before_training(capsys):
    preflight(load_config(None, ["train.num_workers=[2, 8]", "train.micro_batch_size=2"]))
    err = capsys.readouterr().err
    assert "warning: train.num_workers=[2, 8]" in err and "3, 5, 6, 7 worker(s) cannot keep the global batch of 16" in err
    preflight(load_config(None, ["train.num_workers=[1, 2]", "train.micro_batch_size=2"]))
    assert capsys.readouterr().err == ""


def test_gpu_training_with_evaluation_in_a_driver_without_gpu_is_warned_before_training(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the driver sees a GPU here: nothing to warn about")
    preflight(load_config(None, ["train.use_gpu=true"]))  # GPU workers, evaluation up to L = 2048 after training
    err = capsys.readouterr().err
    assert "warning: the evaluation after training runs in this driver process, which sees no GPU" in err
    assert "up to 2048 tokens on CPU" in err and "--entrypoint-num-gpus 1" in err and "evaluate.py --model" in err
    for quiet in (["train.use_gpu=true", "eval.enabled=false"], []):  # no evaluation; CPU training evaluates on CPU
        preflight(load_config(None, quiet))
        assert "evaluation after training" not in capsys.readouterr().err


def test_a_dead_cluster_recorded_by_ray_start_is_one_clear_error_not_a_long_wait(tmp_path):
    """A plain ray.init() joins the cluster whose address `ray start` recorded, and waits minutes for a dead one."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    (ray_tmp / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    extend = Path(__file__).resolve().parent.parent / "pipelines" / "extend.py"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(extend), "--set", f"run.output_dir={tmp_path / 'out'}"],
                          env={**env, "RAY_TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.perf_counter() - started < 60
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: no Ray answers at 127.0.0.1:{port}, the cluster this machine last started with `ray start` "
        f"(recorded in {ray_tmp / 'ray_current_cluster'}), which Ray joins when no address is given: start it again "
        "(`ray start --head`), forget it (`ray stop`), or set RAY_ADDRESS=local to run on a new local Ray")
