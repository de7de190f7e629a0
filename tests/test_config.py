"""Config plumbing the cluster needs: remote storage, elastic workers, DeepSpeed JSON filling, path pinning."""

import json
from pathlib import Path

import pytest

from endprompt_ray.config.loader import config_from_dict, load_config
from endprompt_ray.config.schema import ExtendConfig, FieldDoc, config_fields
from endprompt_ray.errors import ConfigError
from endprompt_ray.training.trainer import deepspeed_config, scaling_config


def test_s3_storage_and_elastic_workers():
    # 1 x 3 x 4 = 12 samples per step: 2, 3 and 4 workers each keep it
    cfg = load_config(None, ["run.storage_path=s3://bucket/prefix", "train.num_workers=[2, 4]",
                             "train.micro_batch_size=1", "train.gradient_accumulation_steps=3",
                             "train.elastic_resize_interval_s=5"])
    assert cfg.storage_path == "s3://bucket/prefix"  # handed to Ray Train untouched
    scaling = scaling_config(cfg)
    assert scaling.num_workers == (2, 4) and scaling.resources_per_worker == {"CPU": 0.5}
    assert scaling.elastic_resize_monitor_interval_s == 5
    assert scaling_config(load_config(None, ["train.num_workers=4"])).num_workers == 4


def test_an_elastic_range_must_start_on_its_minimum_and_names_the_counts_it_cannot_resize_to():
    # micro-batch 2, accumulation 1, max 8 workers: 16 samples per step; n workers keep it when 2 n divides 16
    with pytest.raises(ConfigError, match=r"global batch of 16 samples .* cannot be split over 3 workers"):
        load_config(None, ["train.num_workers=[3, 8]", "train.micro_batch_size=2"])
    cfg = load_config(None, ["train.num_workers=[2, 8]", "train.micro_batch_size=2"])
    assert cfg.global_batch == 16 and cfg.uneven_worker_counts() == [3, 5, 6, 7]
    cfg = load_config(None, ["train.num_workers=[1, 4]", "train.micro_batch_size=1", "train.gradient_accumulation_steps=3"])
    assert cfg.global_batch == 12 and cfg.uneven_worker_counts() == []  # 12 = 1 x 12 = 2 x 6 = 3 x 4 = 4 x 3
    assert load_config(None, ["train.num_workers=4"]).uneven_worker_counts() == []


def test_local_paths_are_pinned_to_where_the_command_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.output_dir=out", "data.paths=[corpus.jsonl, s3://b/c.jsonl]"])
    assert cfg.run.output_dir == str(tmp_path / "out")
    assert cfg.data.paths == [str(tmp_path / "corpus.jsonl"), "s3://b/c.jsonl"]
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert config_from_dict(cfg.to_dict()) == cfg  # what Ray workers rebuild is the same config


def test_deepspeed_json_is_filled_from_the_config():
    cfg = load_config(None, ["train.micro_batch_size=3", "train.gradient_accumulation_steps=2",
                             "train.deepspeed_config=zero3.json"])
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["zero_optimization"]["stage"] == 3
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (3, 2, 24)
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["bf16"] == {"enabled": False}  # CPU
    assert ds["optimizer"]["params"]["lr"] == cfg.train.learning_rate and "scheduler" not in ds  # train.lr_schedule
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95] and ds["optimizer"]["params"]["eps"] == 1e-8
    gpu = deepspeed_config(load_config("llama3-8b-64k"), world_size=8)
    assert gpu["bf16"] == {"enabled": True} and "torch_adam" not in gpu["optimizer"]["params"]
    assert gpu["optimizer"]["params"]["lr"] == 2e-5


def test_deepspeed_json_keeps_its_own_betas_eps_and_scheduler(tmp_path):
    own = {"optimizer": {"type": "AdamW", "params": {"betas": [0.8, 0.99], "eps": 1e-6}},
           "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 7}}}
    path = tmp_path / "own.json"
    path.write_text(json.dumps(own))
    ds = deepspeed_config(load_config(None, [f"train.deepspeed_config={path}", "train.learning_rate=3e-4"]), 2)
    params = ds["optimizer"]["params"]
    assert (params["betas"], params["eps"], params["lr"]) == ([0.8, 0.99], 1e-6, 3e-4)
    assert ds["scheduler"] == own["scheduler"]


def test_paper_preset_matches_the_paper():
    cfg = load_config(Path(__file__).parent.parent / "endprompt_ray" / "presets" / "llama3-8b-64k.yaml")
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


def test_every_config_field_is_documented_with_its_type_and_default():
    docs = config_fields()
    assert [d.key for d in docs] == list(ExtendConfig().flat_params())  # every leaf, in the order a dump shows
    assert all(d.help.strip() for d in docs), [d.key for d in docs if not d.help.strip()]
    by_key = {d.key: d for d in docs}
    anchor = by_key["method.anchor"]
    assert anchor == FieldDoc("method.anchor", "fixed | random", "'random'", anchor.help) and "L - 1" in anchor.help
    assert (by_key["eval.suites"].type, by_key["eval.suites"].default) == (
        "list[passkey | report_code | locker | ticket_qa | ppl | ruler]", "['passkey', 'locker', 'ticket_qa', 'ppl']")
    assert (by_key["rope.factor"].type, by_key["rope.factor"].default) == ("float | None", "None")
    assert by_key["train.lora.rank"].default == "8" and by_key["model.tiny.max_position_embeddings"].type == "int"


def test_the_tiny_cpu_preset_is_the_built_in_default_spelled_out():
    """Its header says so: running with no --config gives exactly this preset."""
    import dataclasses

    assert dataclasses.asdict(load_config("tiny-cpu")) == dataclasses.asdict(load_config(None))
