"""Passkey and report_code probes: scoring by hand, exact budgets with the tiny tokenizer, an oracle that reads the key
from the prompt, and the tiny model end to end (files, MLflow)."""

import json
import re
from pathlib import Path

import pytest

from endprompt_ray.corpora.passkey import PASSKEY_NEEDLE, PASSKEY_QUESTION, PASSKEY_TASK
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.passkey import (PasskeySettings, ProbeSample, build_samples, first_integer, format_passkey,
                                        log_passkey_to_mlflow, run_passkey, score_continuations)
from endprompt_ray.eval.passkey_report import aggregate

PNG = b"\x89PNG\r\n\x1a\n"


def _sample(length: int, depth: float, key: int, index: int = 0) -> ProbeSample:
    return ProbeSample("passkey", length, depth, index, key, "prompt", length - 10, 10)


def test_first_integer_is_the_answer():
    assert first_integer(" 12345. Remember it.") == 12345
    assert first_integer("the key: 007 then 12345") == 7
    assert first_integer(" twelve") is None
    samples = [_sample(256, 0.0, 12345)] * 7
    continuations = [" 12345.", "12345", " 1234", " 123456", " is 12345 or 54321", " none", " 12 345"]
    assert [r["score"] for r in score_continuations(samples, continuations)] == [1, 1, 0, 0, 1, 0, 0]
    with pytest.raises(EvalInputError, match="one per sample"):
        score_continuations(samples, continuations[:3])


def test_aggregate_by_length_depth_and_half():
    # 256: depth 0 -> 2/2, depth 0.5 -> 1/2, depth 1 -> 0/2; 512: depth 0 -> 1/2, 0.5 -> 0/2, 1 -> 2/2
    scores = {(256, 0.0): [1, 1], (256, 0.5): [1, 0], (256, 1.0): [0, 0],
              (512, 0.0): [1, 0], (512, 0.5): [0, 0], (512, 1.0): [1, 1]}
    records = [{"length": n, "depth": d, "score": s, "fill": 0.99 - 0.01 * i}
               for (n, d), ss in scores.items() for i, s in enumerate(ss)]
    result = aggregate(records, "passkey")
    assert result.accuracy == {256: {0.0: 100.0, 0.5: 50.0, 1.0: 0.0}, 512: {0.0: 50.0, 0.5: 0.0, 1.0: 100.0}}
    assert result.by_length == {256: 50.0, 512: 50.0} and result.overall == 50.0
    assert result.early_by_length == {256: 100.0, 512: 50.0} and result.early == 75.0
    assert result.late_by_length == {256: 25.0, 512: 50.0} and result.late == 37.5
    assert result.samples == 12 and result.min_fill == 0.98
    table = format_passkey(result)
    assert "depth 50%" in table and "early (<50%)" in table and "overall 50.00" in table


@pytest.mark.parametrize("length", [256, 512, 1024, 4096])
def test_passkey_prompts_fill_their_budget(tiny_tokenizer, length):
    depths = [0.0, 0.3, 0.5, 1.0]
    samples = build_samples(tiny_tokenizer, PasskeySettings(lengths=[length], depths=depths, num_samples=2))
    assert [(s.depth, s.index) for s in samples] == [(d, i) for d in depths for i in range(2)]
    for s in samples:
        real = len(tiny_tokenizer(s.prompt)["input_ids"])  # with special tokens, as the model receives it
        assert real == s.prompt_tokens and real + s.tokens_to_generate <= length
        assert s.fill >= 0.98
        assert 10_000 <= s.key <= 99_999
        lines = s.prompt.split("\n")
        assert lines[0] == PASSKEY_TASK and lines[2] == PASSKEY_NEEDLE.format(key=s.key)
        assert lines[4] == PASSKEY_QUESTION and len(lines) == 5
        before, after = len(lines[1].split()), len(lines[3].split())
        assert before == round(s.depth * (before + after))  # the needle sits after depth x the filler's words
    assert len({s.key for s in samples}) == len(samples)
    again = build_samples(tiny_tokenizer, PasskeySettings(lengths=[length], depths=depths, num_samples=2))
    assert [s.prompt for s in again] == [s.prompt for s in samples]  # seeded


def test_report_code_prompts(tiny_tokenizer):
    samples = build_samples(tiny_tokenizer, PasskeySettings(lengths=[256, 1024, 2048], num_samples=3,
                                                            probe="report_code"))
    assert {s.depth for s in samples} == {0.0} and len(samples) == 9
    for s in samples:
        head = re.match(r"Report for station ([a-z ]+), code (\d+)\. ", s.prompt)
        assert head and int(head.group(2)) == s.key
        assert s.prompt.endswith(f" End of report for {head.group(1)}, code")
        assert s.prompt.count(str(s.key)) == 1  # only the head states the code
        assert len(tiny_tokenizer(s.prompt)["input_ids"]) == s.prompt_tokens
        assert s.prompt_tokens + s.tokens_to_generate <= s.length
        assert s.fill >= (0.9 if s.length == 256 else 0.98)  # whole sentences: within one sentence of the budget
    station = re.match(r"Report for station ([a-z ]+),", samples[-1].prompt).group(1)
    body = re.split(r"(?<=\.) ", samples[-1].prompt)[1:-1]
    sentence = re.compile(rf"[A-Z][a-z ]+, the [a-z ]+ at {station} [a-z ]+ to \d+ units\.")  # the generator's form
    assert len(body) > 50 and all(sentence.fullmatch(x) for x in body)


@pytest.mark.parametrize("probe", ["passkey", "report_code"])
def test_prompts_are_fitted_without_retokenising(tiny_tokenizer, monkeypatch, probe):
    from endprompt_ray.eval import passkey

    counters = []

    class Counted(passkey.TokenCounter):
        def __init__(self, tokenizer):
            super().__init__(tokenizer)
            counters.append(self)

    monkeypatch.setattr(passkey, "TokenCounter", Counted)
    samples = build_samples(tiny_tokenizer, PasskeySettings(lengths=[16384], num_samples=2, probe=probe))
    assert counters[0].tokenisations <= 3 * len(samples)  # calibrate + verify, not a re-tokenisation per probe size
    assert min(s.fill for s in samples) >= 0.99


def test_an_oracle_scores_100_and_a_silent_model_0(tiny_tokenizer):
    settings = PasskeySettings(lengths=[256, 1024], num_samples=2)
    samples = build_samples(tiny_tokenizer, settings)
    oracle = [" " + re.search(r"The pass key is (\d+)\.", s.prompt).group(1) + ". Remember it." for s in samples]
    result = aggregate(score_continuations(samples, oracle), "passkey")
    assert result.overall == 100.0 and result.early == 100.0 and result.late == 100.0
    assert all(v == 100.0 for by_depth in result.accuracy.values() for v in by_depth.values())
    assert set(result.accuracy[256]) == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert aggregate(score_continuations(samples, [" the grass is green."] * len(samples)), "passkey").overall == 0.0

    reports = build_samples(tiny_tokenizer, PasskeySettings(lengths=[512], num_samples=3, probe="report_code"))
    recall = [" " + re.match(r"Report for station [a-z ]+, code (\d+)\.", s.prompt).group(1) + "." for s in reports]
    result = aggregate(score_continuations(reports, recall), "report_code")
    assert result.overall == 100.0 and result.late is None and result.early == 100.0


def test_bad_settings(tiny_tokenizer):
    with pytest.raises(EvalInputError, match="unknown probe 'needle'"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[512], probe="needle"))
    with pytest.raises(EvalInputError, match=r"each in \[0, 1\]"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[512], depths=[0.5, 50]))
    with pytest.raises(EvalInputError, match="leave depths unset"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[512], depths=[0.5], probe="report_code"))
    with pytest.raises(EvalInputError, match="lengths must be positive integers"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[0]))
    with pytest.raises(EvalInputError, match=r"passkey does not fit in length 100 .*needs at least \d+ tokens"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[512, 100]))
    with pytest.raises(EvalInputError, match="report_code does not fit in length 8"):
        build_samples(tiny_tokenizer, PasskeySettings(lengths=[8], probe="report_code"))


def test_tiny_model_end_to_end(tiny_dir, tiny_tokenizer, tmp_path, mlflow_uri, one_thread):
    import mlflow

    from endprompt_ray.models.loading import load_model

    settings = PasskeySettings(lengths=[256, 512], depths=[0.0, 0.5, 1.0], num_samples=2, batch_size=4,
                               progress=False)
    result = run_passkey(tiny_dir, None, settings, tmp_path / "passkey")
    assert set(result.accuracy) == {256, 512} and set(result.accuracy[256]) == {0.0, 0.5, 1.0}
    assert 0.0 <= result.overall <= 100.0 and result.samples == 12 and result.min_fill >= 0.98
    assert set(result.files) == {"predictions", "summary_json", "heatmap"}
    assert result.files["heatmap"].read_bytes().startswith(PNG)
    records = [json.loads(x) for x in result.files["predictions"].read_text().splitlines()]
    assert len(records) == 12 and all(r["prompt_tokens"] + r["tokens_to_generate"] <= r["length"] for r in records)
    assert {"key", "pred", "raw_pred", "score", "depth", "fill"} <= set(records[0])
    summary = json.loads(result.files["summary_json"].read_text())
    assert summary["overall"] == result.overall and set(summary["accuracy"]) == {"256", "512"}
    assert set(summary["accuracy"]["256"]) == {"0.0", "0.5", "1.0"} and summary["settings"]["depths"] == [0, 0.5, 1]

    settings.lengths = [256]  # samples do not depend on which other lengths run
    in_memory = run_passkey(load_model(tiny_dir), tiny_tokenizer, settings, tmp_path / "in_memory")
    raw = [[json.loads(x)["raw_pred"] for x in r.files["predictions"].read_text().splitlines()]
           for r in (result, in_memory)]
    assert raw[1] == raw[0][:6] and in_memory.accuracy[256] == result.accuracy[256]

    reports = run_passkey(tiny_dir, None, PasskeySettings(lengths=[256], num_samples=2, probe="report_code",
                                                          progress=False), tmp_path / "report_code")
    assert reports.files["heatmap"].name == "report_code_heatmap.png" and set(reports.accuracy[256]) == {0.0}

    with mlflow.start_run() as run:
        log_passkey_to_mlflow(result)
        log_passkey_to_mlflow(reports)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert {"passkey/acc/256", "passkey/acc/512", "passkey/avg", "passkey/early", "passkey/late",
            "passkey/acc/512/depth_50", "report_code/acc/256", "report_code/avg"} <= set(logged)
    assert logged["passkey/avg"] == result.overall and "report_code/late" not in logged
    client = mlflow.MlflowClient()
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "passkey")} == {
        "predictions.jsonl", "summary.json", "passkey_heatmap.png"}
