"""RoPE scaling written into transformers 5.x `rope_parameters`."""

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from endprompt_ray.rope import RopeError, RopeScaling, scaled_config


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


def test_dynamic_ntk_keeps_original_window():
    cfg = scaled_config(llama(), 65536, RopeScaling(type="dynamic"))
    assert cfg.rope_parameters == {"rope_type": "dynamic", "factor": 8.0, "rope_theta": 500000.0}
    assert cfg.max_position_embeddings == 8192  # transformers rescales dynamically beyond this


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
    with pytest.raises(RopeError, match="not above the model's original window 8192"):
        scaled_config(llama(), 8192, RopeScaling())
    with pytest.raises(RopeError, match="no RoPE parameters"):
        scaled_config(GPT2Config(), 4096, RopeScaling())
    with pytest.raises(RopeError, match="not one of"):
        scaled_config(llama(), 65536, RopeScaling(type="ntk-by-parts"))
