"""The method module against hand-computed arrays, for every mode."""

import numpy as np
import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import ConfigError
from endprompt_ray.method.anchoring import (AnchorError, AnchorSpec, IGNORE_INDEX, build_samples, cut_to_span,
                                            pack_short_documents, sample_keys, to_flat, uniform_draws)


def spec(**kw):
    base = dict(method="endprompt", physical_length=8, target_length=32, prompt_source="template",
                prompt_ids=(90, 91), anchor="fixed", anchor_offset=0, short_docs="skip", eos_id=2)
    base.update(kw)
    return AnchorSpec(**base).validate()


DOC = list(range(10, 20))  # 10 tokens: 10..19


def test_reference_numbers_tail_fixed():
    """Reference setting: P = 8192, L = 65536, the document's last 20 tokens at positions 65516..65535."""
    doc = np.arange(10_000) + 5
    s = AnchorSpec(physical_length=8192, target_length=65536, prompt_source="tail", tail_length=20,
                   anchor="fixed", anchor_offset=0, short_docs="skip").validate()
    out, stats = build_samples([doc], s)
    ids, pos, labels = out["input_ids"][0], out["position_ids"][0], out["labels"][0]
    assert ids.shape == pos.shape == labels.shape == (8192,)
    np.testing.assert_array_equal(ids[:8172], doc[:8172])
    np.testing.assert_array_equal(ids[8172:], doc[-20:])
    np.testing.assert_array_equal(pos[:8172], np.arange(8172))
    np.testing.assert_array_equal(pos[8172:], np.arange(65516, 65536))
    np.testing.assert_array_equal(labels, ids)  # loss over both segments by default
    assert stats == {"documents": 1, "samples": 1, "packs": 0, "skipped_short": 0, "dropped_pack_remainder": 0}


def test_template_fixed_with_bos_prefix_and_offset():
    out, _ = build_samples([DOC], spec(prefix_ids=(1,)))
    np.testing.assert_array_equal(out["input_ids"], [[1, 10, 11, 12, 13, 14, 90, 91]])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 30, 31]])
    out, _ = build_samples([DOC], spec(prefix_ids=(1,), anchor_offset=3))
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 27, 28]])
    # the largest offset puts segment 2 right after segment 1: plain contiguous positions
    out, _ = build_samples([DOC], spec(anchor_offset=24))
    np.testing.assert_array_equal(out["position_ids"], [np.arange(8)])


def test_reference_numbers_continuation_fixed():
    """The fixed-anchor reference's sample: a P-token chunk whose last 20 tokens (the ones after segment 1) sit at
    positions 65516..65535."""
    doc = np.arange(10_000) + 5
    s = AnchorSpec(physical_length=8192, target_length=65536, prompt_source="continuation", tail_length=20,
                   anchor="fixed", short_docs="skip").validate()
    out, _ = build_samples([doc], s)
    np.testing.assert_array_equal(out["input_ids"][0], doc[:8192])
    np.testing.assert_array_equal(out["position_ids"][0], np.r_[np.arange(8172), np.arange(65516, 65536)])


@pytest.mark.parametrize("source, prefix, segment2", [
    ("tail", (), [28, 29]), ("continuation", (), [16, 17]),  # segment 1 is 10..15
    ("tail", (1,), [28, 29]), ("continuation", (1,), [15, 16]),  # segment 1 is BOS + 10..14
])
def test_tail_and_continuation_prompts(source, prefix, segment2):
    doc = list(range(10, 30))  # 20 tokens: 10..29
    out, _ = build_samples([doc], spec(prompt_source=source, tail_length=2, prefix_ids=prefix))
    head = list(prefix) + list(range(10, 16 - len(prefix)))
    np.testing.assert_array_equal(out["input_ids"], [head + segment2])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 30, 31]])
    # both need P - prefix document tokens (no token used twice); a shorter document is skipped and counted
    out, stats = build_samples([doc[: 7 - len(prefix)]], spec(prompt_source=source, tail_length=2, prefix_ids=prefix))
    assert out["input_ids"].shape == (0, 8) and stats["skipped_short"] == 1


def test_tail_document_of_exactly_p_tokens():
    doc = list(range(100, 108))  # exactly P = 8: segment 2 is the last 2 tokens, right after segment 1
    out, _ = build_samples([doc], spec(prompt_source="tail", tail_length=2))
    np.testing.assert_array_equal(out["input_ids"], [doc])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3, 4, 5, 30, 31]])


def test_masks():
    out, _ = build_samples([DOC], spec(mask="segment1"))
    np.testing.assert_array_equal(out["labels"], [[IGNORE_INDEX] * 6 + [90, 91]])
    out, _ = build_samples([DOC], spec(mask="segment2"))
    np.testing.assert_array_equal(out["labels"], [[10, 11, 12, 13, 14, 15, IGNORE_INDEX, IGNORE_INDEX]])


def test_random_anchor_range_seeded_and_batch_independent():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 1000, size=rng.integers(8, 30)) for _ in range(2000)]
    s = spec(anchor="random", seed=7)
    out, _ = build_samples(docs, s)
    starts = out["position_ids"][:, 6]
    assert starts.min() >= 6 and starts.max() <= 30  # uniform in [P - b, L - b]
    assert set(np.unique(starts)) == set(range(6, 31))  # every start is reachable
    counts = np.bincount(starts - 6)
    assert counts.min() > 0.5 * counts.mean()  # roughly uniform
    np.testing.assert_array_equal(out["position_ids"][:, 7], starts + 1)
    again, _ = build_samples(docs[1000:], s)  # the same document gets the same draw in any batch
    np.testing.assert_array_equal(again["position_ids"], out["position_ids"][1000:])
    other_seed, _ = build_samples(docs, spec(anchor="random", seed=8))
    assert (other_seed["position_ids"][:, 6] != starts).any()


def test_keyed_draws_are_new_every_epoch_and_the_same_in_any_batch():
    rng = np.random.default_rng(4)
    docs = [rng.integers(3, 1000, size=12) for _ in range(500)]
    keys = rng.integers(0, 2**63, size=500).astype(np.uint64)
    s = spec(anchor="random", seed=7)
    first, _ = build_samples(docs, s, keys=keys, epoch=0)
    second, _ = build_samples(docs, s, keys=keys, epoch=1)
    assert (first["position_ids"][:, 6] != second["position_ids"][:, 6]).mean() > 0.8  # 25 possible starts
    np.testing.assert_array_equal(first["input_ids"], second["input_ids"])
    part, _ = build_samples(docs[100:200], s, keys=keys[100:200], epoch=1)
    np.testing.assert_array_equal(part["position_ids"], second["position_ids"][100:200])
    same_docs_other_keys, _ = build_samples(docs, s, keys=keys + np.uint64(1), epoch=0)
    assert (same_docs_other_keys["position_ids"] != first["position_ids"]).any()
    legacy, _ = build_samples(docs, s, epoch=1)  # keyed by content without keys: also new each epoch
    assert (legacy["position_ids"] != build_samples(docs, s)[0]["position_ids"]).any()
    with pytest.raises(AnchorError, match="shorter than the 6 a sample needs"):
        build_samples([DOC, [5, 6]], spec(), keys=np.array([1, 2], dtype=np.uint64))


@pytest.mark.parametrize("kw, span", [
    (dict(), (6, 0)),  # template: P - b (b = 2)
    (dict(prefix_ids=(1,)), (5, 0)),
    (dict(prompt_source="tail", tail_length=3, prefix_ids=(1,)), (4, 3)),  # P - 1 - b head, b tail
    (dict(prompt_source="continuation", tail_length=3), (8, 0)),
    (dict(method="contiguous", prefix_ids=(1,)), (7, 0)),
    (dict(method="full_length", target_length=12), (12, 0)),
    (dict(method="pose", prefix_ids=(1,)), (39, 0)),  # 5 P - 1
])
def test_token_span_is_what_a_sample_reads(kw, span):
    s = spec(**kw)
    assert s.token_span == span
    doc = np.arange(100, 160)
    cut = cut_to_span(doc, *span)
    np.testing.assert_array_equal(cut, np.r_[doc[:span[0]], doc[len(doc) - span[1]:]])
    keys = np.array([9], dtype=np.uint64)
    np.testing.assert_array_equal(build_samples([cut], s, keys=keys, epoch=2)[0]["input_ids"],
                                  build_samples([doc], s, keys=keys, epoch=2)[0]["input_ids"])
    np.testing.assert_array_equal(cut_to_span(doc[:5], *span), doc[:5])


def test_pack_joins_short_documents_with_eos():
    units, packs, dropped = pack_short_documents([[5, 6, 7], [8, 9], [10] * 9, [11]], min_tokens=6, eos_id=2)
    np.testing.assert_array_equal(units[0], [5, 6, 7, 2, 8, 9])  # 3 + EOS + 2 reaches 6 tokens
    np.testing.assert_array_equal(units[1], [10] * 9)  # long documents pass through untouched
    assert (packs, dropped) == (1, 1)
    out, stats = build_samples([[5, 6, 7], [8, 9], [11]], spec(short_docs="pack"))
    np.testing.assert_array_equal(out["input_ids"], [[5, 6, 7, 2, 8, 9, 90, 91]])
    assert stats["packs"] == 1 and stats["dropped_pack_remainder"] == 1


def test_skip_counts_short_documents():
    out, stats = build_samples([[5, 6, 7], DOC, [], [4] * 5], spec(short_docs="skip"))
    assert out["input_ids"].shape == (1, 8)
    assert stats["skipped_short"] == 2 and stats["samples"] == 1


def test_contiguous_and_full_length_baselines():
    out, _ = build_samples([DOC], spec(method="contiguous"))
    np.testing.assert_array_equal(out["input_ids"], [DOC[:8]])
    np.testing.assert_array_equal(out["position_ids"], [np.arange(8)])
    long_doc = np.arange(40)
    out, _ = build_samples([long_doc, DOC], spec(method="full_length", target_length=12))
    np.testing.assert_array_equal(out["input_ids"], [np.arange(12)])
    np.testing.assert_array_equal(out["position_ids"], [np.arange(12)])


def pose_spec(**kw):
    return spec(method="pose", short_docs="skip", **kw)


def test_pose_two_chunks_forced_by_the_ranges():
    """P = 4, L = 5, a 4-token document: the first cut is 1 or 2 (official range [1, (P+1)//2]), the content skip
    is 0 (nothing beyond P tokens) and the position skip is 0 or 1, so exactly three position arrays exist."""
    rng = np.random.default_rng(1)
    docs = [rng.integers(3, 1000, size=4) for _ in range(400)]
    out, _ = build_samples(docs, pose_spec(physical_length=4, target_length=5))
    assert {tuple(row) for row in out["position_ids"]} == {(0, 1, 2, 3), (0, 2, 3, 4), (0, 1, 3, 4)}
    np.testing.assert_array_equal(out["input_ids"], np.stack(docs))


def test_pose_content_skip_forced_by_the_ranges():
    """P = 2: the cut is forced to 1, so a sample is [d0, d1] or [d0, d2] for a 3-token document."""
    docs = [[100 + 3 * i, 101 + 3 * i, 102 + 3 * i] for i in range(200)]
    out, _ = build_samples(docs, pose_spec(physical_length=2, target_length=6))
    first, second = out["input_ids"][:, 0], out["input_ids"][:, 1] - out["input_ids"][:, 0]
    np.testing.assert_array_equal(first, [d[0] for d in docs])
    assert set(second) == {1, 2}  # both content skips occur
    assert (out["position_ids"][:, 0] == 0).all() and set(out["position_ids"][:, 1]) == {1, 2, 3, 4, 5}


def _pose_by_hand(docs, prefix, P, L, k, seed):
    """The official PoSE draws, spelled out per document with the project's keyed draws (one stream per draw:
    cut, content skip, position skip for chunk 1, then the same for chunk 2, ...)."""
    flat, starts, lengths = to_flat(docs)
    keys = sample_keys(flat, starts, lengths, seed)
    ids, positions = [], []
    for key, doc in zip(keys, docs):
        key = np.array([key])
        seq = (list(prefix) + list(doc))[: 5 * P]
        cuts, content, skips = [0], [0], [0]
        for i in range(1, k):
            high = (P + 1) // 2 if k == 2 else P - (k - i)
            cuts.append(int(uniform_draws(key, cuts[-1] + 1, high, 3 * (i - 1))[0]))
            content.append(int(uniform_draws(key, content[-1], len(seq) - P, 3 * (i - 1) + 1)[0]))
            skips.append(int(uniform_draws(key, skips[-1], L - P, 3 * (i - 1) + 2)[0]))
        ends = cuts[1:] + [P]
        ids.append(sum((seq[v + a: v + e] for a, e, v in zip(cuts, ends, content)), []))
        positions.append(sum((list(range(a + u, e + u)) for a, e, u in zip(cuts, ends, skips)), []))
    return np.array(ids), np.array(positions)


@pytest.mark.parametrize("k, prefix", [(2, (1,)), (2, ()), (3, (1,)), (4, ())])
def test_pose_matches_draws_computed_by_hand(k, prefix):
    rng = np.random.default_rng(k)
    docs = [rng.integers(3, 1000, size=rng.integers(8, 60)) for _ in range(300)]  # some beyond the 5 P window
    s = pose_spec(physical_length=8, target_length=64, pose_chunks=k, prefix_ids=prefix, seed=3)
    out, _ = build_samples(docs, s)
    ids, positions = _pose_by_hand(docs, prefix, 8, 64, k, seed=3)
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["position_ids"], positions)
    np.testing.assert_array_equal(out["labels"], ids)


def test_pose_draw_ranges():
    """Official ranges at P = 256, L = 4096: first cut in [1, 128], content skip up to 5P - P, position skip up to
    L - P; with three chunks both kinds of skip are non-decreasing and positions stay below L."""
    rng = np.random.default_rng(2)
    docs = [np.arange(int(n)) for n in rng.integers(256, 3000, size=400)]  # a token's value is its index
    out, _ = build_samples(docs, pose_spec(physical_length=256, target_length=4096, pose_chunks=2))
    ids, pos = out["input_ids"], out["position_ids"]
    jumps = (np.diff(ids, axis=1) != 1) | (np.diff(pos, axis=1) != 1)  # the cut shows where either skip is > 0
    cut = jumps.argmax(axis=1)[jumps.any(axis=1)] + 1
    assert cut.max() <= 128 and cut.max() > 110
    assert ids[:, -1].max() <= 5 * 256 - 1 and ids[:, -1].max() > 1200  # the content window is 5 P tokens
    assert pos[:, -1].max() <= 4095 and pos[:, -1].max() > 3900
    out, _ = build_samples(docs, pose_spec(physical_length=256, target_length=4096, pose_chunks=3))
    ids, pos = out["input_ids"], out["position_ids"]
    assert (np.diff(ids, axis=1) >= 1).all() and (np.diff(pos, axis=1) >= 1).all()
    assert ((np.diff(pos, axis=1) > 1).sum(axis=1) <= 2).all() and (pos <= 4095).all() and (pos[:, 0] == 0).all()


@pytest.mark.parametrize("kw, message", [
    (dict(physical_length=2), "does not fit in physical_length"),
    (dict(target_length=8), "must exceed physical_length"),
    (dict(anchor_offset=25), "overlapping segment 1"),
    (dict(anchor_offset=-1), "past the target"),
    (dict(short_docs="pack", eos_id=None), "no eos_token"),
    (dict(prompt_ids=()), "non-empty prompt"),
    (dict(prompt_source="suffix"), "not one of"),
    (dict(prompt_source="continuation", tail_length=0), "tail_length=0"),
    (dict(method="pose", physical_length=4, pose_chunks=5), "pose_chunks=5"),
])
def test_invalid_settings_explain_themselves(kw, message):
    with pytest.raises(AnchorError, match=message):
        spec(**kw)


def test_the_length_check_is_one_rule_named_where_it_is_made():
    with pytest.raises(AnchorError, match=r"^target_length=8 must exceed physical_length=8: nothing would be"):
        spec(target_length=8)
    with pytest.raises(ConfigError, match=r"^method.target_length=8 must exceed method.physical_length=8: nothing"):
        load_config(None, ["method.physical_length=8", "method.target_length=8"])
    assert spec(method="full_length", target_length=8).sequence_length == 8  # full length trains L itself
