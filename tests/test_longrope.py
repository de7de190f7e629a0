"""rope.type=longrope: factor files and their errors, transformers' longrope parameters, export round trip, exact
logits against independent computations, and swapping factors in a loaded model."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from endprompt_ray.config.loader import config_from_dict, load_config
from endprompt_ray.errors import ConfigError, RopeError
from endprompt_ray.rope.longrope import (FactorsError, default_attention_factor, reference_factors, resolve_factors,
                                         set_longrope_factors)
from endprompt_ray.rope.scaling import RopeScaling, describe, scaled_config

D, THETA, WINDOW, TARGET = 16, 10000.0, 64, 512  # 8 factors; s = 8


def llama(window=WINDOW, rope_parameters=None) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=97, max_position_embeddings=window,
                       rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": THETA})


def with_weights(config, source=None):
    """A model for `config`; with `source`, the same weights (a model's RoPE holds no weights)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    if source is not None:
        model.load_state_dict(source.state_dict())
    return model


def logits(model, length=300):
    ids = torch.arange(length)[None] * 7 % 97
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def longrope(long=None, short=None, attention=None, **kw) -> RopeScaling:
    """The settings as the config loader resolves them (factors file read, every list checked)."""
    return resolve_factors(RopeScaling(type="longrope", long_factor=long, short_factor=short,
                                       attention_factor=attention, **kw))


RISING = [1.0, 1.0, 1.5, 2.0, 4.0, 6.0, 8.0, 9.0]


# ---- files and validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, match", [
    ([1.0, 0.5] + [2.0] * 6, r"rope.long_factor\[1\]=0.5 is below 1"),
    ([1.0, 3.0, 2.0] + [4.0] * 5, r"non-decreasing .* rope.long_factor\[2\]=2 < rope.long_factor\[1\]=3"),
    ([1.0, "x"], r"rope.long_factor\[1\]='x' is not a finite number"),
    ([1.0, float("nan")], r"is not a finite number"),
    ([], "must be a non-empty list"),
])
def test_bad_factor_lists_are_refused_when_the_config_is_built(values, match):
    with pytest.raises(FactorsError, match=match):
        longrope(values)


def test_a_factor_list_of_the_wrong_length_names_both_lengths():
    with pytest.raises(FactorsError, match=r"rope.long_factor has 4 factors but the model needs 8.*rotary "
                                           r"dimension 16"):
        scaled_config(llama(), TARGET, longrope([1.0, 2.0, 3.0, 4.0]))


def test_factors_files(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(RISING))
    assert longrope(factors_file=str(listed)).long_factor == RISING
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"long_factor": RISING, "short_factor": [1.0] * 7 + [1.5], "metadata": {"a": 1}}))
    rope = longrope(factors_file=str(both))
    assert rope.short_factor == [1.0] * 7 + [1.5] and rope.factors_file == str(both)
    params = scaled_config(llama(), TARGET, rope).rope_parameters
    assert params["long_factor"] == RISING and params["short_factor"][-1] == 1.5


@pytest.mark.parametrize("text, match", [
    ("long_factor: [1, 2]\nlong_factors: [1]\n", "unknown key 'long_factors'"),
    ("short_factor: [1, 1]\n", "a mapping with long_factor"),
    ("long_factor: [1, 2\n", "not valid YAML or JSON"),
    ("long_factor: [2, 1]\n", r"rope.factors_file .*: long_factor must be non-decreasing"),
])
def test_bad_factors_files(tmp_path, text, match):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(FactorsError, match=match):
        longrope(factors_file=str(path))


def test_settings_errors_are_config_errors_with_the_way_forward(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(None, ["rope.type=longrope", f"rope.factors_file={tmp_path / 'missing.yaml'}"])
    with pytest.raises(ConfigError, match=r"rope.long_factor only apply to rope.type=longrope .*rope.type is linear"):
        load_config(None, ["rope.long_factor=[1, 2]"])
    with pytest.raises(ConfigError, match="rope.attention_factor=0.0 must be positive"):
        load_config(None, ["rope.type=longrope", "rope.attention_factor=0"])
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(RISING))
    with pytest.raises(ConfigError, match="give different factors; give only one of them"):
        load_config(None, ["rope.type=longrope", f"rope.factors_file={path}", "rope.long_factor=[1, 2]"])


def test_settings_are_a_plain_value_resolved_by_the_loader(tmp_path):
    """Building RopeScaling reads no file and changes nothing; the loader returns a new value with the factors."""
    missing = RopeScaling(type="longrope", factors_file=str(tmp_path / "later.yaml"))
    assert missing.long_factor is None and missing.factors_file == str(tmp_path / "later.yaml")
    path = tmp_path / "later.yaml"
    path.write_text(yaml.safe_dump(RISING))
    resolved = resolve_factors(missing)
    assert resolved.long_factor == RISING and missing.long_factor is None
    assert load_config(None, ["rope.type=longrope", f"rope.factors_file={path}"]).rope == resolved


def test_the_factors_travel_inside_the_config(tmp_path):
    """Workers rebuild the config from its dict, possibly on a node without the file."""
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"long_factor": RISING}))
    cfg = load_config(None, ["rope.type=longrope", f"rope.factors_file={path}"])
    path.unlink()
    rebuilt = config_from_dict(cfg.to_dict())
    assert rebuilt.rope.long_factor == RISING and json.loads(cfg.flat_params()["rope.long_factor"]) == RISING


# ---- transformers' parameters --------------------------------------------------------------------------------------

def test_longrope_parameters_and_default_attention_factor():
    out = scaled_config(llama(), TARGET, longrope(RISING))
    s = 8.0
    assert out.rope_parameters == {
        "rope_type": "longrope", "rope_theta": THETA, "factor": s, "original_max_position_embeddings": WINDOW,
        "short_factor": [1.0] * 8, "long_factor": RISING, "attention_factor": math.sqrt(1 + math.log(8) / math.log(64))}
    assert out.max_position_embeddings == s * WINDOW and describe(llama(), TARGET, longrope(RISING)) == "longrope x8"
    assert scaled_config(llama(), TARGET, longrope(RISING, attention=1.0)).rope_parameters["attention_factor"] == 1.0
    assert default_attention_factor(1.0, WINDOW) == 1.0
    model = LlamaForCausalLM(out)
    assert model.model.rotary_emb.attention_scaling == pytest.approx(math.sqrt(1 + math.log(8) / math.log(64)))


def test_reference_factors_reproduce_pi_ntk_and_yarn():
    """Each reference factor list, as longrope long factors, gives the frequencies of the method it stands for."""
    config = llama()
    refs = reference_factors(config, WINDOW, 8.0)
    base = 1.0 / THETA ** (np.arange(0, D, 2) / D)
    ntk_base = THETA * 8.0 ** (D / (D - 2))  # the NTK-aware base for s = 8, by hand
    expected = {"PI": base / 8, "NTK": 1.0 / ntk_base ** (np.arange(0, D, 2) / D)}
    yarn = LlamaForCausalLM(scaled_config(config, TARGET, RopeScaling(type="yarn"))).model.rotary_emb.inv_freq
    expected["YaRN"] = yarn.double().numpy()
    for name, factors in refs.items():
        model = LlamaForCausalLM(scaled_config(config, TARGET, longrope(list(factors))))
        logits(model, 100)  # beyond the window: transformers switches to the long factors
        np.testing.assert_allclose(model.model.rotary_emb.inv_freq.double().numpy(), expected[name], rtol=2e-5)
        assert factors[0] >= 1 and np.all(np.diff(factors) >= 0)
    assert scaled_config(config, TARGET, longrope()).rope_parameters["long_factor"] == list(refs["YaRN"])


def test_transformers_uses_the_long_factors_whenever_a_position_passes_the_window():
    """An EndPrompt-shaped call (positions 0..39, then L-8..L-1) runs entirely on the long factors; positions
    within the window run on the short ones."""
    model = LlamaForCausalLM(scaled_config(llama(), TARGET, longrope(RISING, short=[1.0] * 7 + [2.0])))
    base = 1.0 / THETA ** (np.arange(0, D, 2) / D)
    rotary = model.model.rotary_emb
    endprompt = torch.cat([torch.arange(0, 40), torch.arange(TARGET - 8, TARGET)])[None]
    model(input_ids=torch.ones_like(endprompt), position_ids=endprompt, attention_mask=torch.ones_like(endprompt))
    np.testing.assert_allclose(rotary.inv_freq.double().numpy(), base / np.array(RISING), rtol=1e-6)
    within = torch.arange(WINDOW)[None]
    model(input_ids=torch.ones_like(within), position_ids=within, attention_mask=torch.ones_like(within))
    np.testing.assert_allclose(rotary.inv_freq.double().numpy(), base / np.array([1.0] * 7 + [2.0]), rtol=1e-6)


def test_a_model_shipping_longrope_is_refused_unless_replaced():
    phi3 = llama(512, {"rope_type": "longrope", "rope_theta": THETA, "short_factor": [1.0] * 8,
                       "long_factor": [1.5] * 8, "original_max_position_embeddings": 32})
    with pytest.raises(RopeError, match="already ships longrope RoPE scaling"):
        scaled_config(phi3, 2048, longrope(RISING))
    out = scaled_config(phi3, 2048, longrope(RISING, replace_existing=True))
    assert out.rope_parameters["original_max_position_embeddings"] == 32 and out.max_position_embeddings == 2048


# ---- models: export, exact logits, swapping ----------------------------------------------------------------------

def test_export_round_trip_carries_the_factors(tmp_path):
    model = with_weights(scaled_config(llama(), TARGET, longrope(RISING, short=[1.0] * 7 + [1.25], attention=1.1)))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.rope_parameters == model.config.rope_parameters
    assert loaded.config.max_position_embeddings == TARGET
    torch.testing.assert_close(logits(loaded), logits(model))


def test_unit_factors_without_attention_scaling_give_the_original_logits():
    original = with_weights(llama())
    unit = with_weights(scaled_config(llama(), TARGET, longrope([1.0] * 8, attention=1.0)), source=original)
    torch.testing.assert_close(logits(unit, 300), logits(original, 300))  # 300 > window: the long factors
    torch.testing.assert_close(logits(unit, 40), logits(original, 40))  # within the window: the short ones


def test_swapping_factors_matches_a_fresh_load_and_editing_the_config_alone_does_not(tmp_path):
    first, second = RISING, [1.0, 1.2, 1.4, 3.0, 3.0, 5.0, 7.5, 8.0]
    model = with_weights(scaled_config(llama(), TARGET, longrope(first)))
    before = logits(model)  # computes and keeps the long frequencies
    fresh = with_weights(scaled_config(llama(), TARGET, longrope(second, short=[1.0] * 7 + [1.5], attention=1.3)),
                         source=model)
    model.config.rope_parameters = {**model.config.rope_parameters, "long_factor": second}
    torch.testing.assert_close(logits(model), before)  # the trap: the cached long frequencies are still used
    set_longrope_factors(model, long_factor=second, short_factor=[1.0] * 7 + [1.5], attention_factor=1.3)
    torch.testing.assert_close(logits(model), logits(fresh))
    torch.testing.assert_close(logits(model, 40), logits(fresh, 40))
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.rope_parameters == fresh.config.rope_parameters


def test_swapping_needs_a_longrope_model():
    with pytest.raises(RopeError, match="no longrope rotary embedding"):
        set_longrope_factors(LlamaForCausalLM(llama()), long_factor=RISING)
    with pytest.raises(FactorsError, match="long_factor has 2 factors but the model needs 8"):
        set_longrope_factors(LlamaForCausalLM(scaled_config(llama(), TARGET, longrope(RISING))), [1.0, 2.0])
