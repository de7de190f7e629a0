"""The toy base: its corpus, its tokenizer, and the shipped model's measurable window."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from endprompt_ray.corpora.passkey import PASSKEY_QUESTION
from endprompt_ray.corpora.toy import toy_documents
from endprompt_ray.eval.copying import copy_accuracy
from endprompt_ray.eval.generation import load_model_and_tokenizer
from endprompt_ray.eval.heldout import HeldoutSettings, run_heldout
from endprompt_ray.eval.passkey import PasskeySettings, run_passkey
from endprompt_ray.eval.perplexity import PerplexitySettings, run_perplexity
from endprompt_ray.jobs.toybase import build_toy_base
from endprompt_ray.models.loading import RECALL_BASE, TOY_BASE, resolve_model_path
from endprompt_ray.models.toy import ToyBaseSpec, build_toy_tokenizer

SPEC = ToyBaseSpec()


@pytest.fixture(scope="module")
def toy_tokenizer():
    return build_toy_tokenizer(SPEC)


def test_documents_are_whole_episodes_at_least_one_window_long(toy_tokenizer):
    docs = toy_documents(SPEC, toy_tokenizer, count=40)
    assert docs == toy_documents(SPEC, toy_tokenizer, count=40)  # deterministic for a seed
    assert docs != toy_documents(SPEC, toy_tokenizer, count=40, seed=SPEC.seed + 1)
    window = SPEC.model.max_position_embeddings
    assert all(len(toy_tokenizer(d, add_special_tokens=False)["input_ids"]) >= window for d in docs)
    answers = re.findall(r"The pass key is (\d+)\. Remember it\.[\s\S]*?" + re.escape(PASSKEY_QUESTION) + r" (\d+)\.",
                         "\n".join(docs))
    assert len(answers) >= 20 and all(needle == answer for needle, answer in answers)


def test_tokenizer_splits_a_key_into_digits(toy_tokenizer):
    assert toy_tokenizer.tokenize(" 40213.")[1:6] == ["4", "0", "2", "1", "3"]


def _assert_measurable_window(path, out_dir):
    """>= 95% passkey at its window of 256; at 8x, no retrieval of a needle farther away than the window (a needle at
    depth 100% sits right before the question, within any window); perplexity rising beyond the window."""
    passkey = run_passkey(path, None, PasskeySettings(lengths=[256, 2048], num_samples=4, batch_size=4,
                                                      progress=False), out_dir / "passkey")
    assert passkey.by_length[256] >= 95.0, passkey.accuracy
    beyond_window = [acc for depth, acc in passkey.accuracy[2048].items() if depth < 1.0]
    assert max(beyond_window) <= 10.0, passkey.accuracy
    ppl = run_perplexity(path, None, PerplexitySettings(lengths=[256, 2048], num_documents=8, progress=False),
                         out_dir / "ppl")
    assert ppl.ppl[2048] > 1.1 * ppl.ppl[256] and ppl.tail_ppl[2048] > 1.3 * ppl.tail_ppl[256], (ppl.ppl, ppl.tail_ppl)


def test_shipped_toy_base_has_a_measurable_window(tmp_path, one_thread):
    _assert_measurable_window(resolve_model_path(TOY_BASE), tmp_path)


def test_shipped_recall_base_copies_and_retrieves_held_out_formats_only_inside_its_window(tmp_path, one_thread):
    """tiny-base-recall never saw the passkey or locker formats: it copies (eval/copying.py) and retrieves them at
    its window, and neither beyond it. Its build record holds the scores measured when it was built."""
    path = resolve_model_path(RECALL_BASE)
    model, tokenizer = load_model_and_tokenizer(path)
    copy = copy_accuracy(model, tokenizer, [256, 2048], samples=8)
    assert copy[256] >= 70 and copy[2048] <= 30, copy
    passkey = run_passkey(path, None, PasskeySettings(lengths=[256, 2048], num_samples=4, batch_size=4,
                                                      progress=False), tmp_path / "passkey")
    assert passkey.by_length[256] >= 80 and passkey.by_length[2048] <= 10, passkey.accuracy
    locker = run_heldout(path, None, HeldoutSettings(lengths=[256, 2048], probe="locker", num_samples=4,
                                                     batch_size=4, progress=False), tmp_path / "locker")
    assert locker.by_length[256] >= 30 and locker.by_length[2048] <= 10, locker.accuracy
    record = json.loads((Path(path) / "toy_base.json").read_text())
    assert record["spec"]["corpus"] == "recall" and record["scores"]["copy"]["256"] >= 70


# A reduced build (40 steps on 640 documents, the full recipe otherwise) and what it gave when it was recorded: the
# build is deterministic (the same weights, bit for bit, run after run, whatever else loads the machine), so any
# change in the corpus, the tokenizer, the initial weights, the data order or the trainer's numerics shows here.
# The full 1500-step build takes about 10 minutes on 2 cores; it is measured by `endprompt build-toy-base`.
REDUCED = dataclasses.replace(SPEC, steps=40, documents=640)
RECORD = Path(__file__).parent / "data" / "toy_base_reduced_build.json"


def _weight_norms(model_dir: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    return {name: float(t.double().norm()) for name, t in sorted(load_file(model_dir / "model.safetensors").items())}


@pytest.mark.slow
def test_a_reduced_build_reproduces_its_recorded_weights(local_ray, tmp_path):
    """`build_toy_base` from nothing (tokenizer, corpus, initial weights, pretraining through the project's own
    trainer) records its spec beside the weights and ends where the recorded reduced build ended. To re-record after
    an intended change: ENDPROMPT_RECORD_TOY_BUILD=1 python -m pytest tests/test_toybase.py -k reduced."""
    built = build_toy_base(tmp_path / "rebuilt", REDUCED, work_dir=tmp_path / "work")
    shipped_record = json.loads((built / "toy_base.json").read_text())
    assert shipped_record["spec"] == dataclasses.asdict(REDUCED)
    result = {"spec": dataclasses.asdict(REDUCED), "final_loss": shipped_record["final_loss"],
              "weight_norms": _weight_norms(built)}
    if os.environ.get("ENDPROMPT_RECORD_TOY_BUILD"):
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(result, indent=2) + "\n")
    recorded = json.loads(RECORD.read_text())
    assert result["spec"] == recorded["spec"]
    assert result["final_loss"] == pytest.approx(recorded["final_loss"], rel=1e-5)
    assert result["weight_norms"].keys() == recorded["weight_norms"].keys()
    assert result["weight_norms"] == pytest.approx(recorded["weight_norms"], rel=1e-5)


def test_spec_sizes_match_the_shipped_config():
    from endprompt_ray.models.loading import load_config

    config = load_config(TOY_BASE)
    model = SPEC.model
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (
        model.hidden_size, model.num_hidden_layers, model.max_position_embeddings)
    assert dataclasses.asdict(SPEC)["steps"] > 0
