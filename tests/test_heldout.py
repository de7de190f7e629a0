"""Held-out retrieval probes: exact budgets with the toy base's tokenizer, the needle where its depth says, one number
per prompt, an oracle that reads the key from the prompt, bad input, and the toy base end to end (files)."""

import json
import re

import pytest

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.heldout import (HELDOUT_PROBES, PROBE_SIGNATURES, HeldoutSettings, build_heldout_samples,
                                        run_heldout)
from endprompt_ray.eval.passkey import score_continuations
from endprompt_ray.eval.passkey_report import aggregate
from endprompt_ray.models.loading import load_config, load_model, load_tokenizer, toy_base_dir
from endprompt_ray.rope.scaling import RopeScaling, scaled_config

PNG = b"\x89PNG\r\n\x1a\n"
NEEDLE = {"locker": re.compile(r"The locker of ([A-Z][a-z]+ [A-Z][a-z]+) holds the number (\d+)\."),
          "ticket_qa": re.compile(r"([A-Z][a-z]+ [A-Z][a-z]+) paid (\d+) coins for a ticket to the [a-z]+ [a-z]+\.")}
QUESTION = {"locker": "Which number does the locker of {name} hold? The locker of {name} holds the number",
            "ticket_qa": "Question: How many coins did {name} pay for the ticket?\nAnswer: {name} paid"}


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_tokenizer("tiny-base")


@pytest.mark.parametrize("probe", HELDOUT_PROBES)
@pytest.mark.parametrize("length,min_fill", [(256, 0.8), (1024, 0.95)])
def test_prompts_fill_their_budget_and_state_one_number(toy_tokenizer, probe, length, min_fill):
    depths = [0.0, 0.5, 1.0]
    samples = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[length], probe=probe, depths=depths,
                                                                   num_samples=2))
    assert [(s.depth, s.index) for s in samples] == [(d, i) for d in depths for i in range(2)]
    for s in samples:
        real = len(toy_tokenizer(s.prompt)["input_ids"])  # with special tokens, as the model receives it
        assert real == s.prompt_tokens and real + s.tokens_to_generate <= length
        assert s.fill >= min_fill
        assert re.findall(r"\d+", s.prompt) == [str(s.key)]  # the needle holds the only number
        (name, key), = NEEDLE[probe].findall(s.prompt)
        assert int(key) == s.key
        assert s.prompt.endswith("\n" + QUESTION[probe].format(name=name))
        assert all(sig in s.prompt for sig in PROBE_SIGNATURES[probe])


@pytest.mark.parametrize("probe", HELDOUT_PROBES)
def test_the_needle_sits_at_its_depth(toy_tokenizer, probe):
    """Counted independently: haystack sentences (ends of '.') before the needle over all of them."""
    samples = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[2048], probe=probe,
                                                                   depths=[0.0, 0.25, 0.5, 0.75, 1.0], num_samples=1))
    for s in samples:
        haystack = s.prompt.rsplit("\n", 2 if probe == "ticket_qa" else 1)[0]
        if probe == "ticket_qa":
            haystack = haystack.split("\n", 1)[1]  # after the task line
        match = NEEDLE[probe].search(haystack)
        before = haystack[:match.start()].count(".")
        after = haystack[match.end():].count(".")
        assert before + after > 40
        assert abs(before / (before + after) - s.depth) <= 0.02, (s.depth, before, after)


def test_samples_are_seeded_and_independent_of_what_else_runs(toy_tokenizer):
    one = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[512], depths=[0.5], num_samples=3))
    more = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[256, 512], depths=[0.0, 0.5], num_samples=3))
    assert [s.prompt for s in one] == [s.prompt for s in more if s.length == 512 and s.depth == 0.5]
    assert len({s.prompt for s in one}) == 3 and len({s.key for s in one}) == 3
    other_seed = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[512], depths=[0.5], num_samples=3,
                                                                      seed=7))
    assert not {s.prompt for s in one} & {s.prompt for s in other_seed}


def test_an_oracle_reading_the_prompt_scores_everything(toy_tokenizer):
    samples = build_heldout_samples(toy_tokenizer, HeldoutSettings(lengths=[256, 512], probe="ticket_qa",
                                                                   num_samples=2))
    oracle = [" " + NEEDLE["ticket_qa"].search(s.prompt).group(2) for s in samples]
    result = aggregate(score_continuations(samples, oracle), "ticket_qa")
    assert result.by_length == {256: 100.0, 512: 100.0} and result.samples == 20
    wrong = aggregate(score_continuations(samples, [" 1" + o.strip() for o in oracle]), "ticket_qa")
    assert wrong.overall == 0.0


@pytest.mark.parametrize("settings,match", [
    (HeldoutSettings(lengths=[256], probe="passkey"), "unknown held-out probe 'passkey'; choose one of locker"),
    (HeldoutSettings(lengths=[256], depths=[0.5, 1.5]), "each in \\[0, 1\\]"),
    (HeldoutSettings(lengths=[0]), "positive integers"),
    (HeldoutSettings(lengths=[256], num_samples=0), "num_samples must be at least 1"),
    (HeldoutSettings(lengths=[40]), "does not fit in length 40 .* drop or raise that length"),
])
def test_bad_settings_say_what_to_fix(toy_tokenizer, settings, match):
    with pytest.raises(EvalInputError, match=match):
        build_heldout_samples(toy_tokenizer, settings)


def test_the_toy_base_end_to_end(tmp_path):
    settings = HeldoutSettings(lengths=[256], probe="locker", depths=[0.0, 1.0], num_samples=2, progress=False)
    result = run_heldout(str(toy_base_dir()), None, settings, tmp_path)
    assert set(result.accuracy[256]) == {0.0, 1.0} and result.samples == 4
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["probe"] == "locker" and r["score"] == int(r["pred"] == r["key"])
                                     for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["by_length"] == {"256": result.by_length[256]} and summary["settings"]["probe"] == "locker"
    assert (tmp_path / "locker_heatmap.png").read_bytes()[:8] == PNG


def test_a_length_scores_the_same_after_a_longer_one_under_dynamic_ntk(tmp_path):
    """transformers keeps a dynamic-NTK module scaled for the longest call it has seen; each length starts afresh."""
    config = scaled_config(load_config("tiny-base"), 2048, RopeScaling(type="dynamic"))
    model, tokenizer = load_model("tiny-base", config=config), load_tokenizer("tiny-base")
    short = HeldoutSettings(lengths=[1024], depths=[0.0, 1.0], num_samples=2, progress=False)  # above the window
    fresh = [json.loads(line)["raw_pred"] for line in
             (run_heldout(model, tokenizer, short, tmp_path / "a").files["predictions"]).read_text().splitlines()]
    run_heldout(model, tokenizer, HeldoutSettings(lengths=[2048], depths=[0.5], num_samples=1, progress=False),
                tmp_path / "long")
    again = [json.loads(line)["raw_pred"] for line in
             (run_heldout(model, tokenizer, short, tmp_path / "b").files["predictions"]).read_text().splitlines()]
    assert again == fresh
