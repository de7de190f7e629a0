"""RULER scoring on hand-made cases: string_match_all / string_match_part and prediction post-processing."""

import pytest

from endprompt_ray.eval.ruler.metrics import postprocess_pred, string_match_all, string_match_part
from endprompt_ray.eval.ruler.report import aggregate


def test_string_match_all():
    preds = ["The numbers are 123 and 456.", "nothing here", "ABC-def"]
    refs = [["123", "456", "789"], ["x"], ["abc-DEF"]]
    assert string_match_all(preds, refs) == pytest.approx(round((2 / 3 + 0 + 1) / 3 * 100, 2))
    assert string_match_all(["a"], [["A"]]) == 100.0  # case-insensitive
    assert string_match_all(["1234567"], [["123456"]]) == 100.0  # substring, as the reference
    assert string_match_all(["x", "y"], [["a", "b"], ["y", "z"]]) == 25.0


def test_string_match_part():
    preds = ["Paris, I think", "in 1999", "no idea"]
    refs = [["Paris", "paris, france"], ["1998", "1999"], ["London"]]
    assert string_match_part(preds, refs) == pytest.approx(66.67)
    assert string_match_part(["FRANCE"], [["france", "Paris"]]) == 100.0


def test_postprocess_pred():
    assert postprocess_pred("  7654321\tand\x00more \n") == "7654321\nand\nmore"
    assert postprocess_pred("\n\n answer") == "answer"
    assert postprocess_pred("") == ""


def test_averages_state_their_tasks():
    result = aggregate({("niah_single_1", 1024): 80.0, ("vt", 1024): 40.0, ("niah_single_1", 2048): 50.0},
                       skipped={"vt": "too long for length 2048"}, notes=[])
    assert result.scores == {"niah_single_1": {1024: 80.0, 2048: 50.0}, "vt": {1024: 40.0}}
    assert result.averages == {1024: 60.0, 2048: 50.0} and result.overall == 55.0
    assert result.coverage == {1024: ["niah_single_1", "vt"], 2048: ["niah_single_1"]}
    assert result.covered_tasks == ["niah_single_1", "vt"]
    assert any("cover different tasks" in n for n in result.notes)


def test_redraw_counts_reach_the_result():
    counts = {"requested": 10, "built": 9, "redrawn": 4, "redraws": 57, "dropped": [6]}
    result = aggregate({("cwe", 4096): 20.0, ("cwe", 8192): 10.0}, skipped={}, notes=["cwe @ 4096: ..."],
                       draws={("cwe", 4096): counts})
    assert result.draws == {"cwe": {4096: counts}} and result.notes == ["cwe @ 4096: ..."]
    assert result.to_dict()["draws"] == {"cwe": {"4096": counts}}
    assert aggregate({("vt", 1024): 5.0}, {}, []).draws == {}
