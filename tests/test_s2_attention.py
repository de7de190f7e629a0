"""S2-Attn against independent computations: plain SDPA with hand-built masks, on the original and rolled sequence."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

from endprompt_ray.models.s2_attention import (S2AttentionError, S2_ATTENTION, check_s2_attention, group_size,
                                               inference_attn_implementation, register_s2_attention,
                                               s2_attention_forward)

BATCH, HEADS, KV_HEADS, DIM, LENGTH = 2, 4, 2, 8, 32


def llama_config(**extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=97, hidden_size=HEADS * DIM, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256, **extra)


@pytest.fixture
def attention_module():
    module = LlamaAttention(llama_config(), layer_idx=0)
    return module.train()


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(BATCH, HEADS, LENGTH, DIM, generator=g), torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=g),
            torch.randn(BATCH, KV_HEADS, LENGTH, DIM, generator=g))


def reference(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA with an explicit (N, N) boolean mask, GQA expanded by hand; returns (B, H, N, D)."""
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                          attn_mask=allowed)


def causal_within(segment: torch.Tensor) -> torch.Tensor:
    """Token i may attend to j iff both carry the same segment id and j <= i."""
    n = segment.shape[0]
    return (segment[:, None] == segment[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()


def s2(module, q, k, v, fraction):
    out, weights = s2_attention_forward(module, q, k, v, None, group_fraction=fraction)
    assert weights is None
    return out.transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.125])
def test_unshifted_heads_attend_causally_within_their_group(attention_module, qkv, fraction):
    q, k, v = qkv
    g = group_size(LENGTH, fraction)
    positions = torch.arange(LENGTH)
    expected = reference(q, k, v, causal_within(positions // g))[:, :HEADS // 2]
    torch.testing.assert_close(s2(attention_module, q, k, v, fraction)[:, :HEADS // 2], expected)
    if fraction == 1.0:  # one group: exactly plain causal attention for these heads
        plain = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                               is_causal=True)[:, :HEADS // 2]
        torch.testing.assert_close(expected, plain)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.125])
def test_shifted_heads_equal_grouped_attention_on_the_rolled_sequence_rolled_back(attention_module, qkv, fraction):
    q, k, v = qkv
    g = group_size(LENGTH, fraction)
    shift = g // 2
    rolled = [torch.roll(x, -shift, dims=2) for x in (q, k, v)]  # rolled position r holds token (r + G/2) mod N
    r = torch.arange(LENGTH)
    # groups of G on the rolled sequence; the last one wraps (the sequence's last G/2 tokens, then its first G/2)
    # and is cut in two so that the first tokens do not attend to the last ones (LongLoRA's training code)
    segment = torch.where(r < LENGTH - shift, r // g, LENGTH)
    expected = torch.roll(reference(*rolled, causal_within(segment)), shift, dims=2)[:, HEADS // 2:]
    torch.testing.assert_close(s2(attention_module, q, k, v, fraction)[:, HEADS // 2:], expected)


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_no_token_attends_to_a_later_one(attention_module, qkv, fraction):
    q, k, v = qkv
    base = s2(attention_module, q, k, v, fraction)
    for last in (LENGTH - 1, LENGTH // 2):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, last:] += 3.0
        v2[:, :, last:] -= 3.0
        changed = s2(attention_module, q, k2, v2, fraction)
        torch.testing.assert_close(changed[:, :, :last], base[:, :, :last], rtol=0, atol=0)
        assert not torch.allclose(changed[:, :, last:], base[:, :, last:])


def test_shifted_heads_carry_information_across_group_boundaries(attention_module, qkv):
    q, k, v = qkv
    g = group_size(LENGTH, 0.25)
    base = s2(attention_module, q, k, v, 0.25)
    v2 = v.clone()
    v2[:, :, g - 1] += 5.0  # last token of group 0
    changed = s2(attention_module, q, k, v2, 0.25)
    torch.testing.assert_close(changed[:, :HEADS // 2, g], base[:, :HEADS // 2, g])  # group 1 cannot see it
    assert not torch.allclose(changed[:, HEADS // 2:, g], base[:, HEADS // 2:, g])  # the shifted group can


def test_outside_training_it_is_plain_causal_sdpa(attention_module, qkv):
    q, k, v = qkv
    attention_module.eval()
    out = s2(attention_module, q, k, v, 0.25)
    plain = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(out, plain)


def test_training_input_it_cannot_group_is_refused(attention_module, qkv):
    q, k, v = qkv
    with pytest.raises(S2AttentionError, match="divisible by 8"):
        s2(attention_module, q[:, :, :28], k[:, :, :28], v[:, :, :28], 0.25)
    padding = torch.ones(BATCH, 1, LENGTH, LENGTH, dtype=torch.bool)
    with pytest.raises(S2AttentionError, match="unpadded"):
        s2_attention_forward(attention_module, q, k, v, padding, group_fraction=0.25)


def _tiny_pair(name: str):
    """The same random weights loaded with plain SDPA and with S2-Attn under `name`."""
    torch.manual_seed(0)
    plain = LlamaForCausalLM._from_config(llama_config(), attn_implementation="sdpa")
    s2_model = LlamaForCausalLM._from_config(llama_config(), attn_implementation=name)
    s2_model.load_state_dict(plain.state_dict())
    return plain, s2_model


def test_a_model_loaded_with_the_registered_name_trains_with_s2_and_evaluates_with_full_attention():
    from endprompt_ray.training.forward import training_forward

    name = register_s2_attention(0.25, name="s2_sdpa_test_quarter")
    plain, s2_model = _tiny_pair(name)
    assert s2_model.config._attn_implementation == name
    ids = torch.randint(0, 97, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "position_ids": torch.arange(LENGTH).expand(2, -1), "labels": ids}
    plain.train(), s2_model.train()
    full = training_forward(plain, batch, "sdpa").logits  # the project's training call: all-ones attention mask
    sparse = training_forward(s2_model, batch, name).logits
    shift = group_size(LENGTH, 0.25) // 2
    # before G/2 every head's group holds the whole past, in every layer: identical to full attention; later not
    torch.testing.assert_close(sparse[:, :shift], full[:, :shift])
    assert not torch.allclose(sparse[:, shift:], full[:, shift:], atol=1e-4)
    sparse.float().sum().backward()  # trainable: gradients reach the projections
    assert s2_model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with pytest.raises(S2AttentionError, match="unpadded"):
        s2_model(input_ids=ids, attention_mask=torch.tensor([[0] * 4 + [1] * (LENGTH - 4)] * 2))
    plain.eval(), s2_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(s2_model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_the_default_name_is_registered_on_request():
    from transformers import AttentionInterface

    assert register_s2_attention() == S2_ATTENTION
    assert S2_ATTENTION in AttentionInterface._global_mapping
    assert inference_attn_implementation(S2_ATTENTION) == "sdpa"
    assert inference_attn_implementation("eager") == "eager"


@pytest.mark.parametrize("method", ["endprompt", "pose"])
def test_s2_with_endprompt_or_pose_is_refused(method):
    with pytest.raises(S2AttentionError, match=rf"cannot train method.kind={method}.*method.kind=full_length"):
        check_s2_attention(S2_ATTENTION, method, 2048)
    check_s2_attention("sdpa", method, 2048)  # other implementations are not S2's business


def test_full_length_training_lengths_and_fractions_are_checked():
    check_s2_attention(S2_ATTENTION, "full_length", 2048, 0.25)
    check_s2_attention(S2_ATTENTION, "contiguous", 256, 0.5)
    with pytest.raises(S2AttentionError, match="divisible by 8"):
        check_s2_attention(S2_ATTENTION, "full_length", 2044, 0.25)
    for bad in (0, 1.5, 0.3, True):
        with pytest.raises(S2AttentionError, match="group fraction"):
            check_s2_attention(S2_ATTENTION, "full_length", 2048, bad)
    with pytest.raises(S2AttentionError, match="group fraction"):
        register_s2_attention(0.3, name="s2_sdpa_test_bad")
