"""The passkey-control corpus: documents of the evaluation's format whose needle lies where an EndPrompt tail
sample keeps it, checked by reading the documents back (regex, the toy base's tokenizer) and by building samples."""

import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from endprompt_ray.corpora.passkey import PASSKEY_QUESTION, passkey_documents
from endprompt_ray.method.anchoring import IGNORE_INDEX, AnchorSpec, build_samples
from endprompt_ray.resources import TOY_BASE_DIR

NEEDLE = re.compile(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.")
P, L, B = 256, 2048, 20


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOY_BASE_DIR)


def test_needle_inside_the_head_answer_at_the_end_within_the_length(tokenizer):
    docs = passkey_documents(tokenizer, 40, L, P - B - 1, seed=3)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    needle_ends, keys = [], []
    for doc in docs:
        found = NEEDLE.search(doc)
        assert found, doc[:300]
        key = found.group(1)
        assert doc.endswith(f"{PASSKEY_QUESTION} {key}.")
        assert count(doc) <= L
        needle_ends.append(count(doc[:found.end()]))
        keys.append(key)
    assert max(needle_ends) <= P - B - 1
    assert len(set(needle_ends)) > 5 and len(set(keys)) == len(keys)  # depths and keys drawn, not fixed
    assert min(count(d) for d in docs) > L - 40  # filled to the length, not far short of it
    assert passkey_documents(tokenizer, 40, L, P - B - 1, seed=3) == docs  # seeded


def test_an_endprompt_tail_sample_holds_the_needle_before_the_jump_and_the_answer_after(tokenizer):
    docs = passkey_documents(tokenizer, 6, L, P - B - 1, seed=0)
    ids = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    spec = AnchorSpec(physical_length=P, target_length=L, prompt_source="tail", tail_length=B, anchor="random",
                      mask="segment1", prefix_ids=(tokenizer.bos_token_id,), eos_id=tokenizer.eos_token_id).validate()
    samples, _ = build_samples(ids, spec, keys=np.arange(1, 7, dtype=np.uint64))  # the stream keys by text hash
    for row, labels, doc in zip(samples["input_ids"], samples["labels"], docs):
        key = NEEDLE.search(doc).group(1)
        head, tail = tokenizer.decode(row[:P - B]), tokenizer.decode(row[P - B:])
        assert NEEDLE.search(head).group(1) == key
        assert tail.endswith(f"The pass key is {key}.") and key not in head.replace(NEEDLE.search(head).group(0), "")
        assert (labels[:P - B] == IGNORE_INDEX).all() and (labels[P - B:] != IGNORE_INDEX).all()
    assert np.unique(samples["position_ids"][:, P - B]).size > 1  # random anchors: the jump varies


def test_a_length_too_short_for_the_prompt_is_refused(tokenizer):
    with pytest.raises(ValueError, match="do not fit"):
        passkey_documents(tokenizer, 2, 40, 30)
