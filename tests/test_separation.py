"""Which evaluation formats a model could have trained on: every probe's distinctive strings against every generated
training corpus (the toy base's pretraining corpus at its shipped recipe, the extension demo's corpora, the station
reports, the mini-reproduction's passkey control). Held-out probes and RULER's templates must occur in none; the
probes labelled in-distribution must occur in the toy base's corpus, so the label fails this test the moment it goes
stale either way."""

from dataclasses import replace

import pytest

from endprompt_ray.config.schema import DataConfig
from endprompt_ray.corpora.passkey import passkey_documents
from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.corpora.copying import copy_documents
from endprompt_ray.corpora.toy import pretraining_documents, toy_documents
from endprompt_ray.data.dataset import demo_texts
from endprompt_ray.eval.heldout import (HELDOUT_PROBES, IN_DISTRIBUTION_PROBES, PROBE_SIGNATURES, HeldoutSettings,
                                        build_heldout_samples)
from endprompt_ray.eval.passkey import PasskeySettings, build_samples
from endprompt_ray.eval.ruler.tasks import NEEDLE, NIAH_ANSWER_PREFIX, NIAH_TEMPLATE, VT_ANSWER_PREFIX, VT_TEMPLATE
from endprompt_ray.models.loading import load_tokenizer
from endprompt_ray.models.toy import RECALL_SPEC, ToyBaseSpec, build_toy_tokenizer

# Episode formats are fixed strings drawn at every episode, so the recipe's first documents hold every one of them;
# the full 24000 would take a minute.
TOY_DOCUMENTS = 2000
RULER_TEXT = {"niah": NIAH_TEMPLATE + NIAH_ANSWER_PREFIX + NEEDLE, "variable_tracking": VT_TEMPLATE + VT_ANSWER_PREFIX}


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_tokenizer("tiny-base")


@pytest.fixture(scope="module")
def corpora(toy_tokenizer) -> dict[str, str]:
    """Every generated training corpus, each joined into one string."""
    return {
        "toy base pretraining": "\n".join(toy_documents(ToyBaseSpec(), toy_tokenizer, count=TOY_DOCUMENTS)),
        "demo corpus 'retrieval'": "\n".join(demo_texts(DataConfig(demo_corpus="retrieval"), toy_tokenizer)),
        "demo corpus 'reports'": "\n".join(demo_texts(DataConfig(demo_corpus="reports"), toy_tokenizer)),
        "station reports": "\n".join(generate_documents(3200, seed=0)),
        "minirepro's passkey control": "\n".join(passkey_documents(toy_tokenizer, 20, 2048, 235)),
    }


def _found(signatures, corpora) -> dict[str, list[str]]:
    return {sig: [name for name, text in corpora.items() if sig in text] for sig in signatures}


@pytest.fixture(scope="module")
def evaluation_text(toy_tokenizer) -> dict[str, str]:
    """What each evaluation actually shows a model, so a signature that no longer matches its format fails here."""
    text = dict(RULER_TEXT)
    for probe in HELDOUT_PROBES:
        text[probe] = "\n".join(s.prompt for s in build_heldout_samples(
            toy_tokenizer, HeldoutSettings(lengths=[512], probe=probe, num_samples=2)))
    for probe in IN_DISTRIBUTION_PROBES:
        text[probe] = "\n".join(s.prompt for s in build_samples(
            toy_tokenizer, PasskeySettings(lengths=[512], probe=probe, num_samples=2)))
    return text


def test_every_probe_is_labelled_and_its_signatures_are_its_own(evaluation_text):
    assert set(PROBE_SIGNATURES) == set(evaluation_text) == {*HELDOUT_PROBES, *IN_DISTRIBUTION_PROBES, *RULER_TEXT}
    for probe, signatures in PROBE_SIGNATURES.items():
        assert signatures, probe
        for sig in signatures:
            assert sig in evaluation_text[probe], f"{probe}'s signature {sig!r} is not in its own prompts"
            others = [p for p, text in evaluation_text.items() if p != probe and sig in text]
            assert not others, f"{probe}'s signature {sig!r} also occurs in {others}"


@pytest.mark.parametrize("probe", [*HELDOUT_PROBES, *RULER_TEXT])
def test_held_out_formats_occur_in_no_training_corpus(corpora, probe):
    leaks = {sig: where for sig, where in _found(PROBE_SIGNATURES[probe], corpora).items() if where}
    assert not leaks, f"{probe} is not held out: {leaks}"


@pytest.mark.parametrize("probe", IN_DISTRIBUTION_PROBES)
def test_in_distribution_probes_are_what_the_toy_base_trained_on(corpora, probe):
    toy = {"toy base pretraining": corpora["toy base pretraining"]}
    missing = [sig for sig, where in _found(PROBE_SIGNATURES[probe], toy).items() if not where]
    assert not missing, f"{probe} is labelled in-distribution but the toy base's corpus lacks {missing}"


def test_the_recall_corpus_holds_no_evaluation_format():
    """The recall recipe (corpora/recall.py, with its copy documents: corpora/copying.py) and its extension corpus
    are meant to hold every probe out, the in-distribution ones included."""
    tokenizer = build_toy_tokenizer(RECALL_SPEC)
    main_stage = pretraining_documents(replace(RECALL_SPEC, documents=TOY_DOCUMENTS), tokenizer)
    warmup = copy_documents(tokenizer, TOY_DOCUMENTS, RECALL_SPEC.copy_window, seed=0)
    extension = demo_texts(DataConfig(demo_corpus="recall", demo_documents=400), tokenizer)  # tiny-heldout's corpus
    text = "\n".join(main_stage + warmup + extension)
    leaks = {probe: [sig for sig in signatures if sig in text] for probe, signatures in PROBE_SIGNATURES.items()}
    assert not any(leaks.values()), leaks
