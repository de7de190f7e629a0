"""Copy documents (corpora/copying.py), copy accuracy (eval/copying.py), the recall recipe's two corpora and its
extension corpus (corpora/recall.py)."""

import dataclasses
import types

import numpy as np
import pytest
import torch

from endprompt_ray.corpora.copying import MARGIN, copy_document, copy_documents, word_pieces
from endprompt_ray.corpora.recall import EXTENSION_MIN_TOKENS, long_recall_documents
from endprompt_ray.corpora.toy import pretraining_documents, toy_documents
from endprompt_ray.errors import ConfigError
from endprompt_ray.eval.copying import copy_accuracy
from endprompt_ray.models.toy import RECALL_SPEC, ToyBaseSpec, build_toy_tokenizer


@pytest.fixture(scope="module")
def recall_tokenizer():
    return build_toy_tokenizer(RECALL_SPEC)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_word_pieces_are_single_word_start_tokens(recall_tokenizer):
    pieces = word_pieces(recall_tokenizer)
    assert len(pieces) > 500 and len(set(pieces)) == len(pieces)
    assert all(p[0] == " " and p[1:].isalpha() for p in pieces)
    assert all(len(_ids(recall_tokenizer, p)) == 1 for p in pieces[::7])


@pytest.mark.parametrize("window", [32, 256])
def test_the_span_recurs_exactly_in_tokens_inside_a_bos_prefixed_window(recall_tokenizer, window):
    pieces = word_pieces(recall_tokenizer)
    rng = np.random.default_rng(0)
    for _ in range(50):
        text, (start, span, repeat) = copy_document(rng, pieces, window)
        ids = _ids(recall_tokenizer, text)
        assert len(ids) == window + MARGIN  # a word is one token, a number a space token plus one per digit
        assert repeat >= start + span and max(2, window // 8) <= span <= (window - 1) // 2
        assert ids[repeat:repeat + span] == ids[start:start + span]
        assert repeat + span <= window - 1  # with a BOS ahead, the window still holds the whole repeat


def test_the_units_include_numbers_and_gaps_of_varied_length(recall_tokenizer):
    pieces = word_pieces(recall_tokenizer)
    rng = np.random.default_rng(3)
    layouts = [copy_document(rng, pieces, 256) for _ in range(200)]
    digit_share = np.mean([sum(c.isdigit() for c in text) / len(text) for text, _ in layouts])
    gaps = [repeat - start - span for _, (start, span, repeat) in layouts]
    assert 0.05 < digit_share < 0.5  # the evaluations' answers are numbers, so copies must carry digits
    assert min(gaps) < 5 and max(gaps) > 50  # adjacent and distant repeats both occur


def test_copy_documents_are_seeded(recall_tokenizer):
    docs = copy_documents(recall_tokenizer, 5, 32, seed=1)
    assert docs == copy_documents(recall_tokenizer, 5, 32, seed=1)
    assert docs != copy_documents(recall_tokenizer, 5, 32, seed=2)


def test_a_window_too_short_for_a_copy_is_refused(recall_tokenizer):
    with pytest.raises(ConfigError, match="at least 16 tokens"):
        copy_documents(recall_tokenizer, 1, 8, seed=0)


def test_the_main_stage_mixes_copies_at_the_recipes_share(recall_tokenizer):
    spec = dataclasses.replace(RECALL_SPEC, documents=40)
    docs = pretraining_documents(spec, recall_tokenizer)
    copies = set(copy_documents(recall_tokenizer, 20, 256, seed=spec.seed + 4))
    assert len(docs) == 40 and sum(d in copies for d in docs) == 20
    assert any(d in copies for d in docs[:20]) and any(d not in copies for d in docs[20:])  # interleaved
    assert sorted(d for d in docs if d not in copies) == sorted(toy_documents(spec, recall_tokenizer, count=20))


def test_recipes_without_copies_keep_their_corpus(recall_tokenizer):
    spec = dataclasses.replace(ToyBaseSpec(), documents=30)
    assert pretraining_documents(spec, recall_tokenizer) == toy_documents(spec, recall_tokenizer)


class _InductionCopier(torch.nn.Module):
    """Copying written out by hand: predict what followed the latest earlier occurrence of the last few tokens
    (three, else two, else one: digits and spaces recur too often for one token to find the span)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.anchor = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        seq = ids[0].tolist()
        logits = torch.zeros(1, len(seq), self.vocab)
        for p in range(len(seq)):
            for k in (3, 2, 1):
                earlier = [j for j in range(k - 1, p) if seq[j - k + 1:j + 1] == seq[p - k + 1:p + 1]]
                if p >= k - 1 and earlier:
                    logits[0, p, seq[earlier[-1] + 1]] = 1.0
                    break
        return types.SimpleNamespace(logits=logits)


def test_copy_accuracy_scores_a_hand_written_copier_high_and_a_constant_guess_low(recall_tokenizer):
    copier = _InductionCopier(len(recall_tokenizer))
    scores = copy_accuracy(copier, recall_tokenizer, [64, 128], samples=6)
    assert set(scores) == {64, 128} and all(s > 85 for s in scores.values())  # misses only where a token recurs
    constant = torch.nn.Linear(1, 1)  # ignores its input: predicts token 0 everywhere
    constant.forward = lambda ids: types.SimpleNamespace(logits=torch.zeros(1, ids.shape[1], len(recall_tokenizer)))
    assert all(s < 5 for s in copy_accuracy(constant, recall_tokenizer, [64], samples=6).values())


def test_the_extension_corpus_recalls_at_its_end_what_it_stated_far_before(recall_tokenizer):
    docs = long_recall_documents(recall_tokenizer, 60, seed=3)
    assert docs == long_recall_documents(recall_tokenizer, 60, seed=3) and len(docs) == 60
    lengths = [len(_ids(recall_tokenizer, d)) for d in docs]
    assert min(lengths) >= EXTENSION_MIN_TOKENS and max(lengths) > 1024  # every one past the 256-token window
    for doc in docs:  # the last item recalled (a fact's value, a span's last item) was stated earlier
        answer = doc.rstrip(".").split()[-1]
        assert doc.count(answer) >= 2, doc[-200:]
