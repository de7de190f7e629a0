"""Perplexity by length: the arithmetic against models whose logits are known, the chunked head against a plain
forward pass, counted skips, bad input, and the tiny model end to end (files, MLflow)."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.eval import perplexity
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.perplexity import (PerplexitySettings, demo_documents, format_perplexity,
                                           log_perplexity_to_mlflow, read_documents, run_perplexity, summarize,
                                           token_nll)

PNG = b"\x89PNG\r\n\x1a\n"


class KnownLogits(torch.nn.Module):
    """Uniform logits, except that the last `sure` positions of each row put all their mass on the true next token
    (read from the input: an oracle, for arithmetic only). sure=0: NLL log(V) everywhere; sure=n-1: NLL 0."""

    def __init__(self, vocab: int, sure: int = 0):
        super().__init__()
        self.vocab, self.sure = vocab, sure
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.masks = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.masks.append(attention_mask)
        batch, n = input_ids.shape
        logits = torch.zeros(batch, n, self.vocab)
        for t in range(max(0, n - 1 - self.sure), n - 1):  # position t predicts token t + 1
            logits[torch.arange(batch), t, input_ids[:, t + 1]] = 100.0
        return SimpleNamespace(logits=logits)


@pytest.fixture
def documents(tiny_tokenizer, tmp_path):
    """A .jsonl of three long reports and one short line; token counts measured independently."""
    texts = generate_documents(3, seed=5, mean_sentences=30) + ["Report for station iron bay."]
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    return path, [len(tiny_tokenizer(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("sure, expected_tail", [(0, math.log(1040)), (7, 0.0), (63, 0.0)])
def test_known_logits_give_known_perplexity(tiny_tokenizer, documents, tmp_path, sure, expected_tail):
    path, counts = documents
    model = KnownLogits(vocab=1040, sure=sure)
    settings = PerplexitySettings(lengths=[16, 64], documents_path=str(path), text_field="body", tail_tokens=7,
                                  batch_size=2, progress=False)
    result = run_perplexity(model, tiny_tokenizer, settings, tmp_path / "ppl")
    for n in (16, 64):
        uniform = max(0, (n - 1) - sure)  # predicted tokens left uniform
        assert result.nll[n] == pytest.approx(uniform / (n - 1) * math.log(1040), abs=1e-5)
        assert result.ppl[n] == pytest.approx(1040 ** (uniform / (n - 1)), rel=1e-5)
        assert result.tail_nll[n] == pytest.approx(expected_tail, abs=1e-5)
        assert result.windows[n] == sum(c >= n for c in counts) and result.skipped_documents[n] == 4 - result.windows[n]
    assert result.skipped_documents[64] == 1 and result.tail_tokens == 7
    assert all(m is not None and bool(m.all()) for m in model.masks)  # an explicit all-ones mask on every call
    if sure == 0:
        assert result.ppl[16] == pytest.approx(1040, rel=1e-5)  # uniform over V tokens: PPL = V


def test_summarize_by_hand():
    records = [{"length": 8, "document": 0, "nll": 1.0, "tail_nll": 2.0},
               {"length": 8, "document": 2, "nll": 3.0, "tail_nll": 0.0},
               {"length": 16, "document": 2, "nll": 0.5, "tail_nll": 0.25}]
    result = summarize(records, [8, 16, 32], num_documents=3, tail_tokens=4, source="hand")
    assert result.nll == {8: 2.0, 16: 0.5} and result.ppl[8] == pytest.approx(math.e ** 2)
    assert result.tail_nll == {8: 1.0, 16: 0.25} and result.tail_ppl[16] == pytest.approx(math.exp(0.25))
    assert result.windows == {8: 2, 16: 1, 32: 0} and result.skipped_documents == {8: 1, 16: 2, 32: 3}
    table = format_perplexity(result)
    assert "     32        0        3" in table and "last 4 tokens" in table


def test_chunked_head_matches_a_plain_forward(tiny_dir, monkeypatch, one_thread):
    from endprompt_ray.models.loading import load_model

    model = load_model(tiny_dir).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
        reference = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        monkeypatch.setattr(perplexity, "_LOGIT_ELEMENTS", 2 * 7 * model.config.vocab_size)  # 7-position chunks
        chunked = token_nll(model, ids)
    assert perplexity._plain_head(model) and chunked.shape == (2, 39)
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)


def test_reading_documents(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first document")
    (tmp_path / "docs" / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third"}\n')
    (tmp_path / "docs" / "notes.csv").write_text("ignored")
    assert read_documents(tmp_path / "docs") == ["first document", "second", "third"]
    assert read_documents(tmp_path / "docs", limit=2) == ["first document", "second"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(EvalInputError, match=r"bad.jsonl:2: expected a JSON object with a string 'text' field"):
        read_documents(tmp_path / "bad.jsonl")
    with pytest.raises(EvalInputError, match="do not exist"):
        read_documents(tmp_path / "missing")
    with pytest.raises(EvalInputError, match="unsupported file type .csv"):
        read_documents(tmp_path / "docs" / "notes.csv")


def test_bad_settings(tiny_tokenizer, tmp_path):
    with pytest.raises(EvalInputError, match=r"tail_tokens must be in \[1, 15\]"):
        run_perplexity(KnownLogits(8), tiny_tokenizer, PerplexitySettings(lengths=[16, 64], tail_tokens=16), tmp_path)
    with pytest.raises(EvalInputError, match="lengths must be integers >= 2"):
        run_perplexity(KnownLogits(8), tiny_tokenizer, PerplexitySettings(lengths=[1]), tmp_path)
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(EvalInputError, match="no held-out document reaches 64 tokens"):
        run_perplexity(KnownLogits(8), tiny_tokenizer,
                       PerplexitySettings(lengths=[64], documents_path=str(tmp_path / "short.txt")), tmp_path)


def test_demo_documents_are_held_out_and_long_enough(tiny_tokenizer):
    docs = demo_documents(tiny_tokenizer, 3, min_tokens=2048)
    assert all(len(tiny_tokenizer(d)["input_ids"]) >= 2048 for d in docs)
    assert all(d.startswith("Report for station ") and " End of report for " in d for d in docs)
    training_heads = {d.split(".")[0] for d in generate_documents(400, seed=0)}
    assert not {d.split(".")[0] for d in docs} & training_heads  # other stations' codes than training's seed 0


def test_tiny_model_end_to_end(tiny_dir, tmp_path, mlflow_uri, one_thread):
    import mlflow

    settings = PerplexitySettings(lengths=[64, 256, 512], num_documents=2, batch_size=2, progress=False)
    result = run_perplexity(tiny_dir, None, settings, tmp_path / "ppl")
    assert set(result.ppl) == {64, 256, 512} and result.windows == {64: 2, 256: 2, 512: 2}
    assert all(1.0 < result.ppl[n] < 5 * 1027 for n in result.ppl)  # a random model: near-uniform over the vocab
    assert result.skipped_documents == {64: 0, 256: 0, 512: 0} and "held-out seed 1234" in result.source
    assert result.files["plot"].read_bytes().startswith(PNG)
    summary = json.loads(result.files["summary_json"].read_text())
    assert set(summary["ppl"]) == {"64", "256", "512"} and summary["ppl"]["64"] == result.ppl[64]
    assert summary["tail_tokens"] == 32 and summary["settings"]["lengths"] == [64, 256, 512]
    windows = [json.loads(x) for x in result.files["windows"].read_text().splitlines()]
    assert len(windows) == 6 and {w["tokens"] for w in windows} == {63, 255, 511}

    with mlflow.start_run() as run:
        log_perplexity_to_mlflow(result)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert {"ppl/64", "ppl/512", "ppl_tail/64", "ppl_tail/512", "ppl/windows/256"} <= set(logged)
    assert logged["ppl/256"] == pytest.approx(result.ppl[256])
    artifacts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "perplexity")}
    assert artifacts == {"ppl.png", "summary.json", "windows.jsonl"}
