"""The one suite runner (eval/suites.py): a dynamic-NTK export scores the same through every entry point (the job's
evaluation, the evaluate command, the LongRoPE comparison, the toy-base scorer) as on a model loaded fresh for each
suite, which no earlier call can have left scaled for a longer length."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from endprompt_ray.config.loader import load_config
from endprompt_ray.eval.compare import evaluate_after_training, final_variant
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import load_model_and_tokenizer
from endprompt_ray.eval.passkey import PasskeySettings, run_passkey
from endprompt_ray.eval.perplexity import PerplexitySettings, run_perplexity
from endprompt_ray.eval.suites import SUITES, Suite, SuiteOptions, evaluate_suites, suite_scores, suite_settings
from endprompt_ray.jobs import evaluate
from endprompt_ray.jobs.toybase import score_toy_base
from endprompt_ray.longrope.compare import compare
from endprompt_ray.models.loading import load_config as load_model_config
from endprompt_ray.models.loading import load_model, load_tokenizer
from endprompt_ray.rope.scaling import RopeScaling, scaled_config

ROOT = Path(__file__).resolve().parents[1]
WINDOW, TARGET = 256, 1024  # the toy base's window; the longest length scored
LENGTHS = [WINDOW, TARGET]
SEED, BATCH, DOCUMENTS = 42, 4, 8  # what the LongRoPE comparison and the toy-base scorer fix; the others are set so


def dynamic_config():
    return scaled_config(load_model_config("tiny-base"), TARGET, RopeScaling(type="dynamic"))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The toy base with dynamic NTK, saved as an export is (weights, config, tokenizer)."""
    path = tmp_path_factory.mktemp("dynamic") / "model"
    load_model("tiny-base", config=dynamic_config()).save_pretrained(path)
    load_tokenizer("tiny-base").save_pretrained(path)
    return str(path)


def fresh(export):
    return load_model_and_tokenizer(export)  # a new model per suite: its rotary module at the original frequencies


def reference_ppl(export, out: Path, num_documents=DOCUMENTS) -> dict[int, float]:
    return run_perplexity(*fresh(export), PerplexitySettings(lengths=LENGTHS, num_documents=num_documents,
                                                             batch_size=BATCH), out).ppl


def reference_passkey(export, out: Path, batch_size=BATCH):
    return run_passkey(*fresh(export), PasskeySettings(lengths=LENGTHS, num_samples=1, batch_size=batch_size,
                                                       seed=SEED), out)


def predictions(folder: Path) -> list[str]:
    return [json.loads(line)["raw_pred"] for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(export, tmp_path_factory):
    out, threads = tmp_path_factory.mktemp("reference"), torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread does: a tiny model decodes far faster on one thread
    try:
        passkey = reference_passkey(export, out / "passkey")
        return {"ppl": reference_ppl(export, out / "ppl"), "passkey": passkey.by_length,
                "predictions": predictions(out / "passkey")}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("suites", ["ruler,passkey,ppl", "ruler,ppl"])
def test_the_evaluate_command_after_ruler(export, reference, suites, tmp_path, one_thread):
    """RULER runs first in the command and leaves the rotary module scaled for its longest prompt: without the reset
    passkey's prompts just under it, and perplexity at the window when it follows RULER, score at RULER's
    frequencies (below the window transformers resets by itself)."""
    spec = importlib.util.spec_from_file_location("evaluate_shim", ROOT / "pipelines" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main is evaluate.main  # the script is a shim over the command the package ships
    out = tmp_path / "out"
    assert cli.main(["--model", export, "--suites", suites, "--tasks", "niah_single_1",
                     "--lengths", f"{TARGET},{WINDOW}", "--samples", "1", "--batch-size", str(BATCH),
                     "--seed", str(SEED), "--ppl-num-documents", str(DOCUMENTS), "--output", str(out)]) == 0
    ppl = {int(n): v for n, v in json.loads((out / "perplexity" / "summary.json").read_text())["ppl"].items()}
    assert ppl == pytest.approx(reference["ppl"], rel=1e-6)
    if "passkey" in suites:
        assert predictions(out / "passkey") == reference["predictions"]


def test_the_job_evaluation(export, reference, tmp_path, mlflow_uri, one_thread):
    import mlflow

    cfg = load_config(None, ["rope.type=dynamic", f"run.output_dir={tmp_path}", f"run.seed={SEED}",
                             "eval.compare=false", "eval.suites=[passkey, ppl]", f"eval.lengths={LENGTHS}",
                             "eval.passkey_samples=1", f"eval.batch_size={BATCH}",
                             f"eval.ppl_num_documents={DOCUMENTS}"])
    with mlflow.start_run():
        report = evaluate_after_training(cfg, Path(export))
    scores = report.scores[final_variant(cfg)]
    assert scores["ppl"] == pytest.approx(reference["ppl"], rel=1e-6)
    assert scores["passkey"] == reference["passkey"]
    assert predictions(cfg.run_dir / "eval" / final_variant(cfg) / "passkey") == reference["predictions"]


def test_the_toy_base_scorer(export, tmp_path, one_thread):
    scores = score_toy_base(Path(export), tmp_path / "scores", lengths=tuple(LENGTHS), samples=1)
    passkey = reference_passkey(export, tmp_path / "passkey", batch_size=8)  # the scorer's passkey batch
    assert scores["ppl"] == pytest.approx(reference_ppl(export, tmp_path / "ppl"), abs=5e-4)  # it rounds to 3 places
    assert scores["passkey"] == passkey.by_length
    assert predictions(tmp_path / "scores" / "passkey") == predictions(tmp_path / "passkey")


def test_the_longrope_comparison(export, tmp_path, one_thread):
    """Its NTK row is the toy base with dynamic NTK for the target, the same model as the export."""
    rows = compare("tiny-base", {TARGET: None}, num_documents=2, passkey_samples=1, out_dir=tmp_path / "out")
    (ntk,) = [r for r in rows if r["variant"] == "NTK"]
    ppl = reference_ppl(export, tmp_path / "ppl", num_documents=2)
    passkey = reference_passkey(export, tmp_path / "passkey")
    assert (ntk["ppl_window"], ntk["ppl_target"]) == pytest.approx((ppl[WINDOW], ppl[TARGET]), rel=1e-6)
    assert (ntk["passkey_window"], ntk["passkey_target"]) == (passkey.by_length[WINDOW], passkey.by_length[TARGET])
    assert predictions(tmp_path / "out" / f"{TARGET}-NTK" / "passkey") == predictions(tmp_path / "passkey")


def test_every_suite_starts_at_the_original_frequencies(monkeypatch, tmp_path):
    """A suite is one registry entry; whatever the one before it ran, it starts from the original frequencies."""
    model = load_model("tiny-base", config=dynamic_config()).eval()
    rotary = next(m for m in model.modules() if getattr(m, "rope_type", None) == "dynamic")
    seen = []

    def run(model, tokenizer, settings, out_dir):
        seen.append((settings.lengths, rotary.inv_freq.clone()))
        with torch.no_grad():  # what a suite at its longest length leaves behind
            model(input_ids=torch.ones(1, max(settings.lengths), dtype=torch.long))
        return settings

    entry = Suite(settings=lambda options, lengths: PasskeySettings(lengths=lengths), run=run,
                  scores=lambda r: {"state": {n: 1.0 for n in r.lengths}}, log=lambda r, path: None,
                  format=lambda r: "")
    monkeypatch.setitem(SUITES, "first", entry)
    monkeypatch.setitem(SUITES, "second", entry)
    original = rotary.original_inv_freq.clone()
    results = evaluate_suites(model, None, ["first", "second"], [TARGET, WINDOW, TARGET], tmp_path)
    assert [lengths for lengths, _ in seen] == [[WINDOW, TARGET]] * 2  # ascending, once each
    assert all(torch.equal(freq, original) for _, freq in seen)
    assert not torch.equal(rotary.inv_freq, original)  # the long call did scale it: the reset is what undid it
    assert suite_scores(results) == {"state": {WINDOW: 1.0, TARGET: 1.0}}


def test_the_registry_and_its_settings():
    assert list(SUITES) == ["ruler", "passkey", "report_code", "locker", "ticket_qa", "ppl", "longbench"]
    options = SuiteOptions(seed=3, batch_size=2, passkey_samples=1, ruler_samples=7,
                           overrides={"ruler": {"lengths": [2048, 512]}, "passkey": {"batch_size": 8}})
    ruler = suite_settings("ruler", options, [256])
    assert (ruler.lengths, ruler.num_samples, ruler.seed, ruler.batch_size) == ([512, 2048], 7, 3, 2)
    passkey = suite_settings("passkey", options, [1024, 256, 1024])
    assert (passkey.lengths, passkey.batch_size, passkey.num_samples) == ([256, 1024], 8, 1)
    assert suite_settings("report_code", SuiteOptions(passkey_depths=[0.5]), [256]).depths is None  # depth 0 only
    locker = suite_settings("locker", SuiteOptions(passkey_depths=[0.5], passkey_samples=3), [512, 256])
    assert (locker.probe, locker.lengths, locker.depths, locker.num_samples) == ("locker", [256, 512], [0.5], 3)
    with pytest.raises(EvalInputError, match="unknown suite.s. needles in suites; choose from ruler, passkey"):
        evaluate_suites("unused", None, ["ppl", "needles"], [256], "unused")



def test_each_passkey_length_is_generated_at_its_own_frequencies(export, tmp_path, one_thread):
    """Within the passkey suite too: scoring 512 and 1024 in one call equals scoring each length alone on a fresh
    model. Both are above the window, where transformers keeps the frequencies of the longest call it has seen;
    generation used to run the longest prompts first and score 512 at 1024's frequencies."""
    settings = dict(num_samples=2, batch_size=BATCH, seed=SEED)
    run_passkey(*fresh(export), PasskeySettings(lengths=[512, TARGET], **settings), tmp_path / "together")
    alone = []
    for length in (512, TARGET):
        run_passkey(*fresh(export), PasskeySettings(lengths=[length], **settings), tmp_path / str(length))
        alone += predictions(tmp_path / str(length))
    assert sorted(predictions(tmp_path / "together")) == sorted(alone)
