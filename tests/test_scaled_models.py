"""Models that ship their own RoPE scaling (Llama 3.1/3.2: llama3, Phi-3: longrope, linear): composed where that
is exact or the same formula, refused otherwise with the ways forward."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import RopeError
from endprompt_ray.eval.compare import eval_lengths
from endprompt_ray.rope.scaling import RopeScaling, describe, extension_window, scaled_config

D = 16  # head_dim: hidden 32 / 2 heads
THETA = 10000.0
ORIGINAL = 32  # with theta 1e4 and head_dim 16 the llama3 bands (wavelength < 8, 8..32, > 32) are all populated


def shipped(rope_parameters: dict, window: int = 512) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=64, max_position_embeddings=window,
                       rope_parameters={"rope_theta": THETA, **rope_parameters})


def llama31_like() -> LlamaConfig:
    """Llama 3.1's shape in miniature: llama3 x8 from its original window, and a window of 16x that window."""
    return shipped({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": ORIGINAL}, window=16 * ORIGINAL)


def phi3_like() -> LlamaConfig:
    return shipped({"rope_type": "longrope", "short_factor": [1.0] * (D // 2), "long_factor": [1.5] * (D // 2),
                    "original_max_position_embeddings": ORIGINAL}, window=16 * ORIGINAL)


def inv_freq(config) -> np.ndarray:
    return ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, None)[0].numpy()


def test_llama3_on_llama3_scales_the_low_band_by_s_and_keeps_the_high_band():
    base = llama31_like()
    out = scaled_config(base, 2048, RopeScaling(type="llama3"))  # window 512 -> s = 4
    assert out.rope_parameters == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                                   "rope_theta": THETA}
    assert out.max_position_embeddings == 2048 and describe(base, 2048, RopeScaling(type="llama3")) == "llama3 x4"
    wavelength = 2 * np.pi * THETA ** (np.arange(0, D, 2) / D)  # the unscaled frequencies' wavelengths, by hand
    low, high = wavelength > ORIGINAL / 1.0, wavelength < ORIGINAL / 4.0
    assert low.any() and high.any() and (~low & ~high).any()
    np.testing.assert_allclose(inv_freq(out)[low], inv_freq(base)[low] / 4, rtol=1e-6)
    np.testing.assert_allclose(inv_freq(out)[high], inv_freq(base)[high], rtol=1e-6)
    model = LlamaForCausalLM(out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2]]), position_ids=torch.tensor([[0, 2047]])).logits).all()


def test_linear_on_linear_composes_exactly():
    """Position p in the result rotates like position p / s in the model as shipped."""
    base = shipped({"rope_type": "linear", "factor": 4.0}, window=256)
    out = scaled_config(base, 1024, RopeScaling(type="linear"))
    assert out.rope_parameters == {"rope_type": "linear", "factor": 16.0, "rope_theta": THETA}
    x = torch.zeros(1, 1, D)
    cos_b, _ = LlamaForCausalLM(base).model.rotary_emb(x, torch.tensor([[10]]))
    cos_s, _ = LlamaForCausalLM(out).model.rotary_emb(x, torch.tensor([[40]]))
    torch.testing.assert_close(cos_b, cos_s)


@pytest.mark.parametrize("config, kind, rope_type, composable", [
    (llama31_like(), "llama3", "linear", True),
    (llama31_like(), "llama3", "yarn", True),
    (phi3_like(), "longrope", "linear", False),
    (phi3_like(), "longrope", "dynamic", False),
    (shipped({"rope_type": "linear", "factor": 4.0}, 256), "linear", "llama3", True),
    (shipped({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}, 256), "yarn", "yarn",
     False),
])
def test_other_combinations_are_refused_with_the_ways_forward(config, kind, rope_type, composable):
    with pytest.raises(RopeError) as err:
        scaled_config(config, 4096, RopeScaling(type=rope_type))
    message = str(err.value)
    assert f"already ships {kind} RoPE scaling" in message and f"window {config.max_position_embeddings}" in message
    assert "rope.type=none" in message and "rope.replace_existing=true" in message
    assert (f"extend it with rope.type={kind}" in message) == composable


def test_a_target_within_the_shipped_window_is_refused():
    with pytest.raises(RopeError, match="not above the window 512 the model covers with its llama3 RoPE scaling "
                                        r"\(factor 8, original window 32, window 512\)"):
        scaled_config(llama31_like(), 512, RopeScaling(type="llama3"))


def test_none_keeps_the_shipped_scaling():
    base = phi3_like()
    out = scaled_config(base, 4096, RopeScaling(type="none"))
    assert out.rope_parameters == base.rope_parameters and out.max_position_embeddings == 512


@pytest.mark.parametrize("config", [llama31_like(), phi3_like()])
def test_replace_existing_counts_from_the_original_window(config):
    rope = RopeScaling(type="linear", replace_existing=True)
    out = scaled_config(config, 2048, rope)
    assert out.rope_parameters == {"rope_type": "linear", "factor": 64.0, "rope_theta": THETA}  # 2048 / 32
    assert out.max_position_embeddings == 2048 and extension_window(config, rope) == ORIGINAL


def test_replace_needs_an_original_window_when_the_model_records_none():
    base = shipped({"rope_type": "linear", "factor": 4.0}, window=256)
    with pytest.raises(RopeError, match="set rope.original_max_position_embeddings"):
        scaled_config(base, 2048, RopeScaling(type="yarn", replace_existing=True))
    out = scaled_config(base, 2048, RopeScaling(type="yarn", replace_existing=True,
                                                original_max_position_embeddings=64))
    assert out.rope_parameters["factor"] == 32.0 and out.rope_parameters["original_max_position_embeddings"] == 64


def test_evaluation_lengths_start_at_the_window_the_scaling_extends(tmp_path):
    llama31_like().save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.name_or_path={tmp_path}", "rope.type=llama3", "method.target_length=2048"])
    assert eval_lengths(cfg) == [512, 1024, 2048]  # the shipped window, L/2, L
    cfg = load_config(None, [f"model.name_or_path={tmp_path}", "rope.replace_existing=true",
                             "method.target_length=2048"])
    assert eval_lengths(cfg) == [32, 1024, 2048]  # replaced: counted from the original window
