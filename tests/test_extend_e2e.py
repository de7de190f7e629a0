"""End to end on a local Ray: 2 CPU workers, real DeepSpeed (gloo), real MLflow on sqlite, tiny model."""

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.train import UserCallback
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from endprompt_ray.config.loader import load_config
from endprompt_ray.jobs.extend import run_extend
from endprompt_ray.training.resume import ResumeMismatch

pytestmark = pytest.mark.slow


def _cfg(tmp_path: Path, name: str, *overrides: str):
    return load_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", "eval.enabled=false", "model.name_or_path=tiny",
                              "train.report_every=1", "train.micro_batch_size=2", "data.demo_documents=400",
                              "train.learning_rate=3e-3", "train.warmup_steps=1", *overrides])


def _history(result, key="train/loss"):
    client = MlflowClient(result.tracking_uri)
    return [(m.step, m.value) for m in sorted(client.get_metric_history(result.mlflow_run_id, key),
                                              key=lambda m: m.step)]


def _check_export(model_dir: Path):
    assert any(model_dir.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == 8.0  # ceil(2048 / 256)
    assert model.config.max_position_embeddings == 2048
    out = model.generate(torch.tensor([[0, 50, 60]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


@pytest.fixture(scope="module")
def straight(local_ray, tmp_path_factory):
    """6 uninterrupted ZeRO-2 steps: what every interrupted or resumed run must end up matching."""
    return run_extend(_cfg(tmp_path_factory.mktemp("straight"), "z2-straight", "train.max_steps=6",
                           "train.checkpoint_every=6"))


def test_zero2_trains_checkpoints_resumes_and_exports(local_ray, tmp_path, straight):
    first = run_extend(_cfg(tmp_path, "z2", "train.max_steps=4", "train.checkpoint_every=2"))
    losses = _history(first)
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert losses[-1][1] < losses[0][1]  # loss falls
    checkpoint = Path(first.checkpoint_path)
    assert (checkpoint / "progress.json").exists() and (checkpoint / "state").is_dir()
    assert first.data_report["documents"] == 400 and first.data_report["samples"] > 0
    _check_export(first.model_dir)

    resumed = run_extend(_cfg(tmp_path, "z2", "train.max_steps=6", "train.checkpoint_every=2"))
    assert resumed.mlflow_run_id == first.mlflow_run_id  # the same MLflow run continues
    steps = [s for s, _ in _history(resumed)]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at step 5: no step trained twice
    assert resumed.final_metrics["step"] == 6
    params = MlflowClient(resumed.tracking_uri).get_run(resumed.mlflow_run_id).data.params
    assert params["method.kind"] == "endprompt" and params["train.deepspeed_config"].endswith("zero2.json")
    for key in ("train/tokens_per_s", "train/step_time_s", "train/peak_memory_mb", "train/learning_rate"):
        assert len(_history(resumed, key)) == 6
    # the resume is an event in the run; the first start's config stays beside the one it resumed with
    assert _history(resumed, "resume/step") == [(4, 4.0)]
    client = MlflowClient(resumed.tracking_uri)
    logged = {a.path for a in client.list_artifacts(resumed.mlflow_run_id, "config")}
    assert {"config/config.yaml", "config/config-resume-step4.yaml"} <= logged
    assert client.get_run(resumed.mlflow_run_id).data.tags["changed.train.max_steps"] == "4 -> 6"
    assert "max_steps: 4" in (tmp_path / "z2" / "config.yaml").read_text()
    assert "max_steps: 6" in (tmp_path / "z2" / "config-resume-step4.yaml").read_text()

    # a re-run of the same name with another defining setting is refused before any training
    with pytest.raises(ResumeMismatch, match=r"method.target_length: '2048' in the checkpoint, '4096' now"):
        run_extend(_cfg(tmp_path, "z2", "train.max_steps=8", "method.target_length=4096"))
    with pytest.raises(ResumeMismatch, match=r"method.physical_length: '256' in the checkpoint, '128' now"):
        run_extend(_cfg(tmp_path, "z2", "train.max_steps=8", "method.physical_length=128"))

    # Resuming restores weights, optimizer, schedule and the data position: steps 5 and 6 match an uninterrupted run.
    resumed_tail, straight_tail = _history(resumed)[4:], _history(straight)[4:]
    assert [s for s, _ in straight_tail] == [5, 6]
    for (_, got), (_, want) in zip(resumed_tail, straight_tail):
        assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("before, after", [(["train.num_workers=2"], ["train.num_workers=1"]),
                                           (["train.num_workers=1", "train.gradient_accumulation_steps=2"],
                                            ["train.num_workers=2", "train.gradient_accumulation_steps=2"])],
                         ids=["2-to-1-workers", "1-to-2-workers"])
def test_a_resume_at_another_worker_count_keeps_the_global_batch_and_the_losses(local_ray, tmp_path, straight,
                                                                                 before, after, capsys):
    """The checkpoint of 2 workers resumes on 1 (and the reverse) through DeepSpeed's universal format: the run
    keeps its global batch of 4 samples (accumulation adapts) and steps 5 and 6 follow the uninterrupted run."""
    first = run_extend(_cfg(tmp_path, "resized", "train.max_steps=4", "train.checkpoint_every=2", *before))
    assert [s for s, _ in _history(first)] == [1, 2, 3, 4]
    capsys.readouterr()
    resumed = run_extend(_cfg(tmp_path, "resized", "train.max_steps=6", "train.checkpoint_every=2", *after))
    saved_by, now = before[0][-1], after[0][-1]
    assert (f"resuming run 'resized' at step 4: 16 samples trained by {saved_by} worker{'s' * (saved_by == '2')}; "
            f"train.num_workers={now} now, the global batch of 4 samples is kept") in capsys.readouterr().out
    assert _history(resumed, "resume/step") == [(4, 4.0)]
    tail, want = _history(resumed)[4:], _history(straight)[4:]
    assert [s for s, _ in tail] == [5, 6]
    for (_, got), (_, expected) in zip(tail, want):
        assert got == pytest.approx(expected, rel=1e-3)
    # every step of the resumed part trained on 4 samples of P = 256 tokens, whatever the worker count
    for (_, speed), (_, seconds) in zip(_history(resumed, "train/tokens_per_s")[4:],
                                        _history(resumed, "train/step_time_s")[4:]):
        assert speed * seconds == pytest.approx(4 * 256, rel=1e-6)


def _kill_one_worker(record: Path) -> UserCallback:
    """A callback that, after the first checkpoint is persisted, SIGKILLs one training worker, its pid taken from
    Ray's actor table (callbacks run in Ray Train's controller, on this node). `record`: a file the test reads back.
    Defined here so that Ray pickles the class by value (the controller cannot import test modules)."""

    class KillOneWorker(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is None or record.exists():
                return
            import ray._private.state  # the public ray.util.state needs the dashboard; the tests' Ray has none

            workers = sorted(a["Pid"] for a in ray._private.state.actors().values()
                             if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE")
            os.kill(workers[-1], signal.SIGKILL)
            record.write_text(json.dumps({"pid": workers[-1], "workers": len(workers), "step": metrics[0]["step"]}))

    return KillOneWorker()


def test_a_killed_worker_is_restarted_from_the_checkpoint_and_ends_with_the_uninterrupted_weights(
        local_ray, tmp_path, straight):
    record = tmp_path / "killed.json"
    result = run_extend(_cfg(tmp_path, "killed", "train.max_steps=6", "train.checkpoint_every=2",
                             "train.max_failures=1"), train_callbacks=[_kill_one_worker(record)])
    killed = json.loads(record.read_text())
    assert killed["workers"] == 2 and killed["step"] == 2
    assert _history(result, "resume/step") == [(2, 2.0)]  # Ray Train restarted the group from step 2
    assert result.final_metrics["step"] == 6
    # the restart trained steps 3-6 exactly as the uninterrupted run did
    weights, expected = (load_file(Path(run.model_dir) / "model.safetensors") for run in (result, straight))
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def test_zero3_trains_and_exports_gathered_weights(local_ray, tmp_path):
    """Also reads a corpus file: its read tasks must fit beside the CPU training workers on a 2-CPU Ray."""
    import json

    from endprompt_ray.corpora.reports import generate_documents

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in generate_documents(200, seed=5)))
    result = run_extend(_cfg(tmp_path, "z3", "train.max_steps=5", "train.checkpoint_every=5",
                             "train.deepspeed_config=zero3.json", f"data.paths=[{corpus}]"))
    losses = _history(result)
    assert len(losses) == 5 and losses[-1][1] < losses[0][1]
    _check_export(result.model_dir)
    exported = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert all(p.numel() > 0 for p in exported.parameters())  # ZeRO-3 shards were gathered, not saved empty


def test_baselines_run_through_the_same_pipeline(local_ray, tmp_path):
    """rope_only exports the untouched weights with scaled RoPE; PoSE trains through the same trainer."""
    rope_only = run_extend(_cfg(tmp_path, "rope-only", "method.kind=rope_only"))
    assert rope_only.final_metrics["step"] == 0 and not _history(rope_only)
    _check_export(rope_only.model_dir)
    from endprompt_ray.models.loading import load_model

    original = load_model("tiny").state_dict()
    exported = AutoModelForCausalLM.from_pretrained(rope_only.model_dir).state_dict()
    for name, tensor in original.items():  # 16-bit export of the original weights
        torch.testing.assert_close(exported[name].float(), tensor.to(torch.bfloat16).float())

    pose = run_extend(_cfg(tmp_path, "pose", "method.kind=pose", "train.max_steps=2", "train.checkpoint_every=2"))
    assert [s for s, _ in _history(pose)] == [1, 2]
    _check_export(pose.model_dir)


@pytest.mark.parametrize("variant", [
    # the fixed-anchor reference's sample (continuation), no loss on segment 1, chunked loss, linear decay
    ["method.prompt_source=continuation", "method.anchor=fixed", "method.mask=segment1", "train.loss_chunk_size=48",
     "train.lr_schedule=linear"],
    # the random-anchor reference's sample (document tail), no loss on segment 2, cosine decay to 10%
    ["method.prompt_source=tail", "method.anchor=random", "method.mask=segment2", "train.lr_schedule=cosine",
     "train.min_lr_ratio=0.1"],
], ids=["continuation-mask1-chunked-linear", "tail-random-mask2-cosine"])
def test_accumulation_prompts_masks_and_schedules_through_the_trainer(local_ray, tmp_path, variant):
    """Gradient accumulation 2 on 2 workers: 2 x 2 x 2 samples of P = 256 tokens per step."""
    result = run_extend(_cfg(tmp_path, "variant", "train.max_steps=4", "train.checkpoint_every=2",
                             "train.gradient_accumulation_steps=2", "train.learning_rate=1e-3", *variant))
    losses = _history(result)
    assert [s for s, _ in losses] == [1, 2, 3, 4] and all(0 < v < 20 for _, v in losses)
    # warm-up 1 step, then decay over steps 2..4 (p = 0, 1/3, 2/3), by hand
    floor = 0.1 if "train.min_lr_ratio=0.1" in variant else 0.0
    decay = ([1 - p for p in (0, 1 / 3, 2 / 3)] if "train.lr_schedule=linear" in variant
             else [floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2 for p in (0, 1 / 3, 2 / 3)])
    rates = [v for _, v in _history(result, "train/learning_rate")]
    assert rates == pytest.approx([1e-3 * f for f in [1.0, *decay]], rel=1e-6)
    # throughput counts every rank's tokens: per step 2 workers x 2 micro-batches x 2 samples x 256 tokens
    for (_, speed), (_, seconds) in zip(_history(result, "train/tokens_per_s"), _history(result, "train/step_time_s")):
        assert speed * seconds == pytest.approx(2048, rel=1e-6)
    assert len(_history(result, "train/checkpoint_s")) == 2  # steps 2 and 4 saved a checkpoint
    _check_export(result.model_dir)


def test_longlora_baseline_on_zero3_exports_a_merged_plain_model(local_ray, tmp_path):
    """LoRA on q/k/v/o + trained embeddings and norms + S2-Attn, full-length, ZeRO-3: the export is a plain HF model
    (adapters merged) whose frozen weights are the base's and whose adapted ones moved; the adapter is saved too."""
    from endprompt_ray.models.loading import load_model

    result = run_extend(_cfg(tmp_path, "longlora", "method.kind=full_length", "method.target_length=512",
                             "train.max_steps=3", "train.checkpoint_every=3", "train.micro_batch_size=1",
                             "train.deepspeed_config=zero3.json", "train.lora.enabled=true",
                             "train.lora.trainable=[embed_tokens,norm]", "train.lora.save_adapter=true",
                             "model.attn_implementation=s2_sdpa"))
    assert [s for s, _ in _history(result)] == [1, 2, 3]
    exported = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    assert not any("lora" in name or "base_layer" in name for name in exported)
    base = load_model("tiny").state_dict()
    same = lambda name: torch.equal(exported[name].float(), base[name].to(torch.bfloat16).float())  # noqa: E731
    assert same("model.layers.0.mlp.gate_proj.weight")  # frozen
    assert not same("model.layers.0.self_attn.q_proj.weight")  # W + BA merged
    assert not same("model.embed_tokens.weight") and not same("model.norm.weight")  # LongLoRA's trained extras
    adapter = Path(result.model_dir) / "adapter"
    assert (adapter / "adapter_config.json").exists() and load_file(adapter / "adapter_model.safetensors")
