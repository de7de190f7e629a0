"""The training stream's index arithmetic and the tokenisation of text windows, against independent computations:
packing as `pack_short_documents` does it over the whole corpus, positions enumerated by hand, full tokenisation."""

import numpy as np
import pytest

from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.data.dataset import encode_spans, rust_tokenizer, text_keys
from endprompt_ray.data.tokenize import encode
from endprompt_ray.method.anchoring import AnchorSpec, build_samples, pack_short_documents
from endprompt_ray.method.stream import Orders, epoch_order, plan_units, step_positions


def _joined(plan, docs, eos):
    units = []
    for u in range(len(plan)):
        parts = [docs[d] if not k else np.r_[eos, docs[d]] for k, d in enumerate(plan.documents_of(u))]
        units.append(np.concatenate(parts))
    return units


def test_units_pack_across_the_whole_corpus():
    """Units are what `pack_short_documents` makes of the whole corpus at once: only a final remainder is lost."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = rng.integers(0, 30, size=rng.integers(0, 40))
        need = int(rng.integers(1, 25))
        docs = [np.full(n, i + 10) for i, n in enumerate(lengths)]
        expected, packs, dropped = pack_short_documents(docs, need, eos_id=-1)
        plan = plan_units(lengths, np.arange(len(docs), dtype=np.uint64), need)
        got = _joined(plan, docs, -1)
        assert len(got) == len(expected) == plan.counts["samples"]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        assert (plan.counts["packs"], plan.counts["dropped_pack_remainder"]) == (packs, dropped)
        used = np.sort(plan.members)
        assert len(np.unique(used)) == len(used)  # no document in two samples
        short = [i for i in range(len(docs)) if 0 < lengths[i] < need]
        lost, packed = [i for i in short if i not in set(used)], [i for i in short if i in set(used)]
        assert len(lost) == dropped and (not lost or not packed or min(lost) > max(packed))  # the final remainder
        skip = plan_units(lengths, np.arange(len(docs), dtype=np.uint64), need, pack=False)
        assert list(skip.members) == [i for i, n in enumerate(lengths) if n >= need]
        assert skip.counts["skipped_short"] == sum(0 < n < need for n in lengths)


def test_units_keep_their_keys_and_a_pack_its_own():
    plan = plan_units(np.array([5, 2, 2, 9, 1]), np.array([50, 20, 21, 90, 10], dtype=np.uint64), need=4)
    assert [list(plan.documents_of(u)) for u in range(len(plan))] == [[0], [1, 2], [3]]  # [4] is the remainder
    assert plan.keys[0] == 50 and plan.keys[2] == 90 and plan.keys[1] not in (20, 21)
    assert plan.counts == {"samples": 3, "packs": 1, "skipped_short": 0, "dropped_pack_remainder": 1}


def test_epoch_orders_are_seeded_permutations_that_change_every_epoch():
    orders = [epoch_order(1000, seed=3, epoch=e) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(1000))
    assert (orders[0] != orders[1]).mean() > 0.9 and (orders[1] != orders[2]).mean() > 0.9
    np.testing.assert_array_equal(epoch_order(1000, seed=3, epoch=1), orders[1])
    assert (epoch_order(1000, seed=4, epoch=1) != orders[1]).mean() > 0.9
    np.testing.assert_array_equal(epoch_order(7, seed=3, epoch=2, shuffle=False), np.arange(7))


def test_step_positions_by_hand():
    # global batch 2 x 3 x 2 = 12: step 1 begins at 12; worker 1 takes 18..23 in three micro-batches of 2
    assert [list(p) for p in step_positions(12, 2, 3, 1, 2)] == [[18, 19], [20, 21], [22, 23]]
    assert [list(p) for p in step_positions(12, 2, 3, 0, 2)] == [[12, 13], [14, 15], [16, 17]]
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        step_positions(0, 1, 1, 2, 2)


@pytest.mark.parametrize("then_accum", [2, 1])  # global batch kept (accumulation doubles) or halved
def test_resume_at_another_world_size_sees_each_sample_once_per_epoch(then_accum):
    """2 workers for 3 steps, then 1 worker to the end of the second epoch: every unit exactly once per epoch."""
    n = 22  # 2 epochs = 3 steps of 4 samples + 8 steps of 4 (or 16 of 2)
    orders = Orders(n, seed=5, shuffle=True)
    seen, start = [], 0
    for _ in range(3):
        for rank in range(2):
            seen += [orders.units_at(p) for p in step_positions(start, 2, 1, rank, 2)]
        start += 2 * 1 * 2
    while start + 2 * then_accum <= 2 * n:
        seen += [orders.units_at(p) for p in step_positions(start, 2, then_accum, 0, 1)]
        start += 2 * then_accum
    epochs = np.concatenate([e for e, _ in seen])
    units = np.concatenate([u for _, u in seen])
    assert len(units) == 2 * n  # nothing skipped, nothing twice: positions 0 .. 2n-1
    for epoch in (0, 1):
        assert sorted(units[epochs == epoch]) == list(range(n))
        np.testing.assert_array_equal(units[epochs == epoch], epoch_order(n, 5, epoch))


# ---- tokenising windows of long texts ------------------------------------------------------------------------------

def _texts():
    """Demo reports, much longer joined documents, and text with runs of digits, spaces, newlines, punctuation,
    non-Latin scripts and no spaces at all."""
    rng = np.random.default_rng(1)
    reports = generate_documents(24, seed=2)
    pieces = ["  ", "\n", "\n\n", "12345", "3.14", "=====", "----\n", "naïve", "東京都", "x_y", "'s", "\t", "!!",
              "a" * 40, "“quoted”", "🙂"]
    messy = [" ".join(w + (pieces[rng.integers(len(pieces))] if rng.random() < 0.3 else "") for w in r.split(" "))
             for r in reports[:8]]
    return reports + ["\n\n".join(reports[i:i + 6]) for i in range(0, 24, 6)] + messy + ["東京" * 3000]


@pytest.mark.parametrize("head, tail", [(200, 0), (180, 20), (1270, 0), (7, 5)])
def test_windows_tokenise_like_the_whole_text(tiny_tokenizer, head, tail):
    texts = _texts()
    core = rust_tokenizer(tiny_tokenizer)
    cut, counts = encode_spans(core, texts, head, tail)
    for ids, got in zip(encode(core, texts), cut):
        want = ids if len(ids) <= head + tail else ids[:head] + (ids[-tail:] if tail else [])
        assert got.dtype == np.int32 and list(got) == want
    assert counts["tokenised_chars"] < counts["text_chars"]


def _spec(tokenizer, **kw):
    prompt = tuple(tokenizer("This is the end of text, please pay attention here", add_special_tokens=False)["input_ids"])
    base = dict(physical_length=64, target_length=1024, prompt_ids=prompt, anchor="random", eos_id=1, seed=3,
                short_docs="skip", prefix_ids=(0,))
    return AnchorSpec(**{**base, **kw}).validate()


@pytest.mark.parametrize("kw", [dict(method="endprompt"), dict(method="endprompt", prompt_source="tail"),
                                dict(method="endprompt", prompt_source="continuation"), dict(method="contiguous"),
                                dict(method="full_length", target_length=300), dict(method="pose", pose_chunks=3)])
def test_cut_documents_give_the_samples_of_whole_documents(tiny_tokenizer, kw):
    """Per method, the span it reads (`AnchorSpec.token_span`), tokenised from windows, builds the samples that the
    fully tokenised documents build, in two epochs (same document keys)."""
    spec = _spec(tiny_tokenizer, **kw)
    texts = _texts()
    core = rust_tokenizer(tiny_tokenizer)
    whole = [np.asarray(ids) for ids in encode(core, texts)]
    cut, counts = encode_spans(core, texts, *spec.token_span)
    keep = [i for i, ids in enumerate(whole) if len(ids) >= spec.min_document_tokens]
    assert len(keep) > 20 and counts["truncated"] > 0
    keys = text_keys([texts[i] for i in keep])
    for epoch in (0, 1):
        want, _ = build_samples([whole[i] for i in keep], spec, keys=keys, epoch=epoch)
        got, _ = build_samples([cut[i] for i in keep], spec, keys=keys, epoch=epoch)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
