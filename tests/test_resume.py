"""What a resume must match and where it continues (pure checks; the end-to-end resumes are in test_extend_e2e)."""

import json

import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.training.resume import Progress, ResumeMismatch, check_resume, latest_progress, run_identity
from endprompt_ray.training.trainer import accumulation_steps


def _identity(*overrides, fingerprint="abc"):
    return run_identity(load_config(None, list(overrides)), fingerprint, "PreTrainedTokenizerFast, vocab 1024")


def test_identity_holds_the_defining_settings_and_nothing_else():
    identity = _identity()
    assert identity["method.physical_length"] == "256" and identity["method.target_length"] == "2048"
    assert identity["rope.type"] == "linear" and identity["model.name_or_path"] == "tiny-base"
    assert identity["data.fingerprint"] == "abc" and identity["run.seed"] == "0"
    assert identity["data.shuffle"] == "True" and identity["train.lora.enabled"] == "False"
    assert not any(k.startswith(("train.max_steps", "train.learning_rate", "train.num_workers", "eval.", "run.name"))
                   for k in identity)
    assert not any(k.startswith("model.tiny.") for k in identity)  # only the random `tiny` preset is built from it
    assert any(k.startswith("model.tiny.") for k in _identity("model.name_or_path=tiny"))


def test_a_changed_setting_is_one_error_naming_each_field_and_the_way_out(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r1", "method.target_length=4096",
                             "train.max_steps=900"])
    saved = Progress(step=200, samples=1600, global_batch=8, world_size=2, identity=_identity(fingerprint="abc"))
    now = _identity("method.target_length=4096", fingerprint="xyz")
    with pytest.raises(ResumeMismatch) as err:
        check_resume(saved, now, cfg)
    text = str(err.value)
    assert "run 'r1' has a checkpoint at step 200" in text
    assert "method.target_length: '2048' in the checkpoint, '4096' now" in text
    assert "data.fingerprint: 'abc' in the checkpoint, 'xyz' now" in text
    assert "rope.factor" not in text  # unchanged fields are not listed
    assert "another run.name" in text and "run.force_resume=true" in text
    check_resume(saved, _identity(fingerprint="abc"), cfg)  # same run, other steps: fine
    check_resume(saved, now, load_config(None, ["run.force_resume=true"]))  # forced


def test_latest_progress_is_the_highest_step_of_the_run(tmp_path):
    run = tmp_path / "store" / "r1"
    assert latest_progress(str(tmp_path / "store"), "r1") is None
    for name, step in (("checkpoint_2026-01-01_00-00-02", 4), ("checkpoint_2026-01-01_00-00-01", 6),
                       ("checkpoint_2026-01-01_00-00-03", 2)):
        (run / name).mkdir(parents=True)
        Progress(step=step, samples=step * 8, global_batch=8, world_size=2, identity={"a": "1"}).write(
            run / name / "progress.json")
    (run / "checkpoint_tmp_being_written").mkdir()  # no progress file yet: ignored
    latest = latest_progress(str(tmp_path / "store"), "r1")
    assert (latest.step, latest.samples, latest.world_size, latest.identity) == (6, 48, 2, {"a": "1"})
    # a copy to storage stopped partway (or still going): skipped and reported, not a JSON error
    (run / "checkpoint_cut_short").mkdir()
    (run / "checkpoint_cut_short" / "progress.json").write_text('{"global_batch": 8, "identity": {"a": "1"}, "sa')
    incomplete = []
    assert latest_progress(str(tmp_path / "store"), "r1", incomplete).step == 6
    assert incomplete == [str(run / "checkpoint_cut_short" / "progress.json")]
    (run / "checkpoint_old").mkdir()
    (run / "checkpoint_old" / "progress.json").write_text(json.dumps({"step": 9}))  # an older format
    with pytest.raises(ValueError, match="older version.*start a fresh run"):
        latest_progress(str(tmp_path / "store"), "r1")


@pytest.mark.parametrize("global_batch, micro, world, expected", [(8, 2, 2, 2), (8, 2, 1, 4), (8, 4, 2, 1),
                                                                    (12, 2, 3, 2), (16, 1, 4, 4)])
def test_accumulation_keeps_the_global_batch(global_batch, micro, world, expected):
    assert accumulation_steps(global_batch, micro, world) == expected
    assert expected * micro * world == global_batch


def test_a_global_batch_that_cannot_split_is_a_clear_error():
    with pytest.raises(ValueError, match=r"global batch of 8 samples cannot be split over 3 workers x micro-batch 2"):
        accumulation_steps(8, 2, 3)


def test_global_batch_counts_the_largest_worker_count():
    cfg = load_config(None, ["train.micro_batch_size=2", "train.gradient_accumulation_steps=3",
                             "train.num_workers=[1, 4]"])
    assert cfg.global_batch == 24
