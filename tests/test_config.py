"""Config plumbing the cluster needs: remote storage, elastic workers, DeepSpeed JSON filling, path pinning."""

from pathlib import Path

import pytest

from endprompt_ray.config import ConfigError, config_from_dict, load_config
from endprompt_ray.train import deepspeed_config, scaling_config


def test_s3_storage_and_elastic_workers():
    cfg = load_config(None, ["run.storage_path=s3://bucket/prefix", "train.num_workers=[2, 8]"])
    assert cfg.storage_path == "s3://bucket/prefix"  # handed to Ray Train untouched
    scaling = scaling_config(cfg)
    assert scaling.num_workers == (2, 8) and scaling.resources_per_worker == {"CPU": 0.5}
    assert scaling_config(load_config(None, ["train.num_workers=4"])).num_workers == 4


def test_local_paths_are_pinned_to_where_the_command_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.output_dir=out", "data.paths=[corpus.jsonl, s3://b/c.jsonl]"])
    assert cfg.run.output_dir == str(tmp_path / "out")
    assert cfg.data.paths == [str(tmp_path / "corpus.jsonl"), "s3://b/c.jsonl"]
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert config_from_dict(cfg.to_dict()) == cfg  # what Ray workers rebuild is the same config


def test_deepspeed_json_is_filled_from_the_config():
    cfg = load_config(None, ["train.micro_batch_size=3", "train.gradient_accumulation_steps=2",
                             "train.deepspeed_config=configs/deepspeed/zero3.json"])
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["zero_optimization"]["stage"] == 3
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (3, 2, 24)
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["bf16"] == {"enabled": False}  # CPU
    assert ds["scheduler"]["params"]["warmup_max_lr"] == cfg.train.learning_rate
    gpu = deepspeed_config(load_config("configs/llama3-8b-64k.yaml"), world_size=8)
    assert gpu["bf16"] == {"enabled": True} and "torch_adam" not in gpu["optimizer"]["params"]
    assert gpu["scheduler"]["params"]["warmup_num_steps"] == 20 and gpu["optimizer"]["params"]["lr"] == 2e-5


def test_paper_preset_matches_the_paper():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "llama3-8b-64k.yaml")
    assert (cfg.method.physical_length, cfg.method.target_length) == (8192, 65536)
    assert cfg.rope.type == "linear" and cfg.rope.round_up and cfg.train.deepspeed_config.endswith("zero3.json")


def test_prompt_sources():
    for source in ("template", "tail", "continuation"):
        assert load_config(None, [f"method.prompt_source={source}"]).method.prompt_source == source
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.prompt_source=end"])
    assert str(err.value) == ("method.prompt_source='end' must be one of ['template', 'tail', 'continuation']; set one "
                              "of them in the config file or on the command line "
                              "(e.g. --set method.prompt_source=template)")
