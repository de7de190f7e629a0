"""The method module against hand-computed arrays, for every mode."""

import numpy as np
import pytest

from endprompt_ray.anchoring import IGNORE_INDEX, AnchorError, AnchorSpec, build_samples, pack_short_documents


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


def test_pose_positions_enumerated():
    """P = 4, L = 5, two chunks: the only valid position arrays are 0123 with one chunk shifted by the single skip."""
    allowed = {(0, 1, 2, 3), (0, 2, 3, 4), (0, 1, 3, 4), (0, 1, 2, 4)}
    rng = np.random.default_rng(1)
    docs = [rng.integers(3, 1000, size=6) for _ in range(400)]
    out, _ = build_samples(docs, spec(method="pose", physical_length=4, target_length=5, pose_chunks=2))
    seen = {tuple(row) for row in out["position_ids"]}
    assert seen == allowed


def test_pose_many_chunks_span_target():
    rng = np.random.default_rng(2)
    docs = [rng.integers(3, 1000, size=300) for _ in range(200)]
    out, _ = build_samples(docs, spec(method="pose", physical_length=256, target_length=4096, pose_chunks=3))
    pos = out["position_ids"]
    steps = np.diff(pos, axis=1)
    assert (pos[:, 0] == 0).all() and (pos <= 4095).all() and (steps >= 1).all()
    assert ((steps > 1).sum(axis=1) <= 2).all()  # at most chunks - 1 jumps
    assert pos[:, -1].max() > 3500  # skips reach far toward L
    np.testing.assert_array_equal(out["input_ids"], np.stack([d[:256] for d in docs]))


@pytest.mark.parametrize("kw, message", [
    (dict(physical_length=2), "does not fit in physical_length"),
    (dict(target_length=8), "must exceed physical_length"),
    (dict(anchor_offset=25), "overlapping segment 1"),
    (dict(anchor_offset=-1), "past the target"),
    (dict(short_docs="pack", eos_id=None), "no eos_token"),
    (dict(prompt_ids=()), "non-empty prompt"),
])
def test_invalid_settings_explain_themselves(kw, message):
    with pytest.raises(AnchorError, match=message):
        spec(**kw)
