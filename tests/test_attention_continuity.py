"""The trap from the design notes: in the exact training forward call, segment 2 must attend to all of segment 1.

The loss is restricted to predictions made by segment-2 tokens (segment-1 labels and the first segment-2 label,
which segment 1's last token predicts, are masked), so changing one segment-1 token can change it only through
attention across the position-id jump.
"""

import numpy as np
import pytest
import torch

from endprompt_ray.anchoring import AnchorSpec, build_samples
from endprompt_ray.forward import attention_kwargs, training_forward
from endprompt_ray.modeling import enable_activation_checkpointing, load_config, load_model, load_tokenizer
from endprompt_ray.rope import RopeScaling, scaled_config

P, L = 64, 2048


@pytest.fixture(scope="module")
def batch():
    tokenizer = load_tokenizer("tiny")
    prompt = tuple(tokenizer("This is the end of text, please pay attention here", add_special_tokens=False)
                   ["input_ids"])
    spec = AnchorSpec(physical_length=P, target_length=L, prompt_ids=prompt, mask="segment1", short_docs="skip",
                      prefix_ids=(tokenizer.bos_token_id,)).validate()
    docs = [np.arange(3, 200) % 900 + 3, np.arange(50, 400) % 900 + 3]
    out, _ = build_samples(docs, spec)
    b = len(prompt)
    assert out["position_ids"][0, -b] == L - b  # a real jump of ~2000 positions
    out["labels"][:, -b] = -100
    return {k: torch.from_numpy(v) for k, v in out.items()}, b


def _model(attn, checkpointing):
    cfg = scaled_config(load_config("tiny"), L, RopeScaling())
    model = load_model("tiny", config=cfg, attn_implementation=attn)
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()  # the training call: dropout off in Llama anyway, checkpointing active only in train mode
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("batch_rows", [1, 2])
def test_segment1_change_moves_segment2_loss(batch, attn, checkpointing, batch_rows):
    data, b = batch
    data = {k: v[:batch_rows] for k, v in data.items()}
    model = _model(attn, checkpointing)
    changed = {k: v.clone() for k, v in data.items()}
    changed["input_ids"][:, 5] = (changed["input_ids"][:, 5] + 17) % 1000 + 3
    loss = training_forward(model, data, attn).loss
    loss.backward()  # the backward pass through checkpointed layers must work too
    changed_loss = training_forward(model, changed, attn).loss
    assert abs(loss.item() - changed_loss.item()) > 1e-4


def test_trap_is_real_without_the_explicit_mask(batch):
    """Documents why forward.py exists: the same call without our attention kwargs cuts segment 2 off."""
    data, _ = batch
    model = _model("sdpa", False)
    changed = data["input_ids"].clone()
    changed[:, 5] += 1
    plain = [model(input_ids=ids, position_ids=data["position_ids"], labels=data["labels"], use_cache=False).loss
             for ids in (data["input_ids"], changed)]
    assert plain[0].item() == pytest.approx(plain[1].item(), abs=1e-6), (
        "transformers no longer infers packed sequences from position ids; forward.attention_kwargs may be "
        "simplified, but keep test_segment1_change_moves_segment2_loss")


def test_flash_attention_kwargs_make_each_row_one_sequence():
    ids = torch.zeros(3, 10, dtype=torch.long)
    kwargs = attention_kwargs(ids, "flash_attention_2")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 10, 20, 30] and kwargs["max_length_k"] == 10
    assert kwargs["attention_mask"].shape == (3, 10) and kwargs["attention_mask"].all()
    assert set(attention_kwargs(ids, "sdpa")) == {"attention_mask"}
