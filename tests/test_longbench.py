"""LongBench: reference prompts/lengths/metrics on hand-made cases, middle truncation, file errors, a tiny-model run."""

import json

import pytest

from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.longbench import (CATEGORIES, DATASETS, LongBenchSettings, config, log_longbench_to_mlflow,
                                          metrics as M, run_longbench, truncate_middle)
from endprompt_ray.eval.longbench.run import load_rows


def test_dataset_facts():
    assert len(DATASETS) == 16 and sorted(d for ds in CATEGORIES.values() for d in ds) == sorted(DATASETS)
    assert all("{context}" in config.PROMPTS[d] for d in DATASETS)
    assert config.MAX_NEW_TOKENS["gov_report"] == 512 and config.MAX_NEW_TOKENS["hotpotqa"] == 32
    assert config.MAX_NEW_TOKENS["samsum"] == 128 and config.MAX_NEW_TOKENS["lcc"] == 64
    assert config.PROMPTS["lcc"] == "Please complete the code given below. \n{context}Next line of code:\n"
    assert config.PROMPTS["hotpotqa"] is config.PROMPTS["musique"]
    assert {config.METRIC[d] for d in ("gov_report", "qmsum", "multi_news", "samsum")} == {"rouge"}
    assert (config.METRIC["trec"], config.METRIC["passage_count"], config.METRIC["repobench-p"]) == \
        ("classification", "count", "code_sim")


def test_qa_f1_and_normalisation():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.qa_f1_score("The Cat sat", "a cat sat down") == pytest.approx(0.8)
    assert M.qa_f1_score("dog", "cat") == 0.0


def test_rouge_l():
    # One sentence each: words {the, cat, is, on, mat} vs {the, cat, sat, on, mat}; LCS words {the, cat, on, mat}.
    assert M.rouge_score("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8, abs=1e-6)
    # Summary level: the union of per-sentence LCS words across candidate sentences.
    score = M.rouge_score("a b. c d", "a b c d")
    assert score == pytest.approx(1.0, abs=1e-6)
    assert M.rouge_score("...", "a summary") == 0.0 and M.rouge_score("x y", "") == 0.0


def test_classification_retrieval_count_code():
    classes = ["Location", "Entity", "Number", "Numeric value"]
    assert M.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert M.classification_score("Location or Entity", "Location", all_classes=classes) == 0.5
    assert M.classification_score("Numeric value", "Numeric value", all_classes=classes) == 1.0  # "Number" is not in it
    assert M.classification_score("no idea", "Location", all_classes=classes) == 0.0
    assert M.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval_score("Paragraph 3, maybe 12", "Paragraph 12") == 0.5
    assert M.count_score("There are 7 unique paragraphs", 7) == 1.0 and M.count_score("none", 7) == 0.0
    assert M.code_sim_score("# comment\n```\nx = foo(1)\n", "x = foo(1)") == 1.0
    assert M.code_sim_score("", "x") == 0.0
    assert M.code_sim_score("abcd", "abcf") == 0.75  # difflib ratio 2*3/8, as an integer percent


def test_score_dataset_uses_first_line_for_few_shot():
    score, per = M.score_dataset("triviaqa", ["Paris\nQuestion: next one"], [["Paris", "paris france"]], [None])
    assert score == 100.0 and per == [1.0]
    score, _ = M.score_dataset("hotpotqa", ["Paris\nand more words here"], [["Paris"]], [None])
    assert score == pytest.approx(round(100 * 2 * (1 / 5) / (1 / 5 + 1), 2))


def test_truncate_middle(tiny_tokenizer):
    prompt = "INSTRUCTION AT THE START. " + " ".join(generate_documents(5, seed=3)) + " QUESTION AT THE END?"
    cut = truncate_middle(prompt, tiny_tokenizer, 200)
    assert len(tiny_tokenizer(cut)["input_ids"]) <= 200
    assert cut.startswith("INSTRUCTION AT THE START.") and cut.endswith("QUESTION AT THE END?")
    assert truncate_middle("short", tiny_tokenizer, 200) == "short"


def _write_data(root):
    data = root / "data"
    data.mkdir(parents=True)
    docs = generate_documents(8, seed=5)
    rows = {"hotpotqa": [{"input": "Which code?", "context": " ".join(docs[:4]), "answers": ["12345"], "length": 900,
                          "all_classes": None, "_id": "a"},
                         {"input": "Which station?", "context": docs[4], "answers": ["north ridge"], "length": 300,
                          "all_classes": None, "_id": "b"}],
            "samsum": [{"input": "Dialogue: A: hi\nSummary: ", "context": "Dialogue: B: hey\nSummary: B greets.",
                        "answers": ["A says hi."], "length": 20, "all_classes": None, "_id": "c"}]}
    for name, items in rows.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


def test_run_tiny_model(tiny_dir, tmp_path, one_thread):
    import mlflow

    root = _write_data(tmp_path / "LongBench")
    settings = LongBenchSettings(str(root), ["hotpotqa", "samsum", "qasper"], context_length=512, progress=False)
    result = run_longbench(tiny_dir, None, settings, tmp_path / "out")
    assert set(result.scores) == {"hotpotqa", "samsum"} and "qasper" in result.skipped
    assert result.covered == {"multi_doc_qa": ["hotpotqa"], "few_shot": ["samsum"]}
    assert result.macro_avg == pytest.approx((result.categories["multi_doc_qa"] + result.categories["few_shot"]) / 2,
                                             abs=0.01)
    preds = (tmp_path / "out" / "predictions" / "hotpotqa.jsonl").read_text().splitlines()
    assert len(preds) == 2 and {"pred", "answers", "score"} <= set(json.loads(preds[0]))
    assert "\n" not in json.loads((tmp_path / "out" / "predictions" / "samsum.jsonl").read_text())["pred"].strip()
    assert result.files["summary_csv"].read_text().startswith("category,dataset,score")

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        with mlflow.start_run() as run:
            log_longbench_to_mlflow(result)
        logged = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(before)
    assert {"longbench/hotpotqa", "longbench/category/few_shot", "longbench/avg", "longbench/macro_avg"} <= set(logged)


def test_bad_files(tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "trec.jsonl").write_text('{"input": "q", "context": "c", "answers": ["x"]}\n\n{"input": "q"\n')
    with pytest.raises(EvalInputError, match=r"trec\.jsonl:3: not valid JSON"):
        load_rows(bad / "trec.jsonl")
    (bad / "trec.jsonl").write_text('{"input": "q", "context": "c", "answers": "x"}\n')
    with pytest.raises(EvalInputError, match=r"trec\.jsonl:1: a LongBench row needs context, input, answers"):
        load_rows(bad / "trec.jsonl")
    with pytest.raises(EvalInputError, match="unknown LongBench dataset"):
        run_longbench(None, None, LongBenchSettings(str(tmp_path), ["trek"]), tmp_path / "o")
    with pytest.raises(EvalInputError, match="no LongBench data found"):
        run_longbench(None, None, LongBenchSettings(str(tmp_path), ["qasper"]), tmp_path / "o")
    with pytest.raises(EvalInputError, match="does not exist"):
        run_longbench(None, None, LongBenchSettings(str(tmp_path / "nope")), tmp_path / "o")
