"""RoPE scaling written into transformers 5.x `rope_parameters`."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from endprompt_ray.errors import RopeError
from endprompt_ray.rope.scaling import RopeScaling, describe, scaled_config


def llama(window=8192, theta=500000.0):
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=64, max_position_embeddings=window,
                       rope_parameters={"rope_type": "default", "rope_theta": theta})


def test_linear_pi_reference_factor():
    cfg = scaled_config(llama(), 65536, RopeScaling(type="linear"))
    assert cfg.rope_parameters == {"rope_type": "linear", "factor": 8.0, "rope_theta": 500000.0}
    assert cfg.max_position_embeddings == 65536


def test_round_up_versus_exact_factor():
    assert scaled_config(llama(256), 3000, RopeScaling()).rope_parameters["factor"] == 12.0  # ceil(11.72)
    assert scaled_config(llama(256), 3000, RopeScaling(round_up=False)).rope_parameters["factor"] == 3000 / 256
    assert scaled_config(llama(256), 3000, RopeScaling(factor=4.0)).rope_parameters["factor"] == 4.0


def ntk_inv_freq(base: float, d: int, s: float) -> np.ndarray:
    """The NTK-aware frequencies for scale s, by hand: base' = base * s^(d/(d-2)), inv_freq_i = base'^(-2i/d)."""
    scaled_base = base * s ** (d / (d - 2))
    return 1.0 / scaled_base ** (np.arange(0, d, 2) / d)


def test_dynamic_ntk_keeps_original_window():
    cfg = scaled_config(llama(), 65536, RopeScaling(type="dynamic"))
    assert cfg.rope_parameters == {"rope_type": "dynamic", "factor": 1.0, "rope_theta": 500000.0}  # s = L / W = 8
    assert cfg.max_position_embeddings == 8192  # transformers rescales dynamically beyond this
    assert describe(llama(), 65536, RopeScaling(type="dynamic")) == "dynamic x8"


@pytest.mark.parametrize("window, target, rope, s", [
    (8192, 65536, RopeScaling(type="dynamic"), 8.0),  # the paper's 8x
    (256, 3000, RopeScaling(type="dynamic"), 12.0),  # rounded up: ceil(11.72)
    (256, 3000, RopeScaling(type="dynamic", round_up=False), 3000 / 256),
    (8192, 65536, RopeScaling(type="dynamic", factor=10.0), 10.0),
])
def test_dynamic_ntk_base_at_the_target_is_the_ntk_base_for_s(window, target, rope, s):
    """transformers' own dynamic init at seq_len = L gives base * s^(d/(d-2)); at or below W the base is untouched."""
    cfg = scaled_config(llama(window), target, rope)
    d = cfg.hidden_size // cfg.num_attention_heads
    init = ROPE_INIT_FUNCTIONS["dynamic"]
    at_target, _ = init(cfg, None, seq_len=target)
    np.testing.assert_allclose(at_target.numpy(), ntk_inv_freq(500000.0, d, s), rtol=1e-5)
    at_window, _ = init(cfg, None, seq_len=window)
    np.testing.assert_allclose(at_window.numpy(), ntk_inv_freq(500000.0, d, 1.0), rtol=1e-6)
    midway = (window + target) // 2  # the NTK scale grows linearly with the length between W and L
    at_mid, _ = init(cfg, None, seq_len=midway)
    s_mid = 1 + (s - 1) * (midway / window - 1) / (target / window - 1)
    np.testing.assert_allclose(at_mid.numpy(), ntk_inv_freq(500000.0, d, s_mid), rtol=1e-5)


def test_dynamic_ntk_in_a_training_forward_uses_the_base_at_the_target():
    """An EndPrompt-shaped call (positions 0..P-b-1, then L-b..L-1) rescales the model's rotary module to base'(L)."""
    window, target = 64, 512
    model = LlamaForCausalLM(scaled_config(llama(window, 10000.0), target, RopeScaling(type="dynamic")))
    positions = torch.cat([torch.arange(0, 40), torch.arange(target - 8, target)])[None]
    model(input_ids=torch.ones_like(positions), position_ids=positions, attention_mask=torch.ones_like(positions))
    d = model.config.hidden_size // model.config.num_attention_heads
    np.testing.assert_allclose(model.model.rotary_emb.inv_freq.numpy(), ntk_inv_freq(10000.0, d, 8.0), rtol=1e-5)


def test_yarn_and_llama3_record_the_original_window():
    yarn = scaled_config(llama(), 65536, RopeScaling(type="yarn")).rope_parameters
    assert yarn == {"rope_type": "yarn", "factor": 8.0, "rope_theta": 500000.0,
                    "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0}
    l3 = scaled_config(llama(), 65536, RopeScaling(type="llama3")).rope_parameters
    assert l3 == {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0,
                  "original_max_position_embeddings": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_every_variant_builds_a_working_model(kind):
    cfg = scaled_config(llama(64, 10000.0), 512, RopeScaling(type=kind))
    model = LlamaForCausalLM(cfg)
    out = model(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 300, 511]]))
    assert torch.isfinite(out.logits).all()
    assert model.model.rotary_emb.rope_type == kind


def test_linear_interpolation_compresses_positions():
    """Linear PI with factor 8: position 8p in the scaled model rotates like position p in the original."""
    base, scaled = LlamaForCausalLM(llama(64, 10000.0)), LlamaForCausalLM(scaled_config(llama(64, 10000.0), 512,
                                                                                          RopeScaling()))
    x = torch.zeros(1, 1, 16)
    cos_b, _ = base.model.rotary_emb(x, torch.tensor([[5]]))
    cos_s, _ = scaled.model.rotary_emb(x, torch.tensor([[40]]))
    torch.testing.assert_close(cos_b, cos_s)


def test_errors():
    with pytest.raises(RopeError, match="not above the window 8192 the model covers"):
        scaled_config(llama(), 8192, RopeScaling())
    with pytest.raises(RopeError, match="no RoPE parameters"):
        scaled_config(GPT2Config(), 4096, RopeScaling())
    with pytest.raises(RopeError, match="not one of"):
        scaled_config(llama(), 65536, RopeScaling(type="ntk-by-parts"))
    with pytest.raises(RopeError, match="would shrink the window"):
        scaled_config(llama(), 65536, RopeScaling(factor=0.5))
    with pytest.raises(RopeError, match="below target_length / window = 8"):
        scaled_config(llama(), 65536, RopeScaling(type="dynamic", factor=4.0))


def test_every_rope_type_has_one_builder():
    from endprompt_ray.rope.scaling import BUILDERS, ROPE_TYPES

    assert set(BUILDERS) == set(ROPE_TYPES) - {"none"}  # "none" keeps the config as it is
