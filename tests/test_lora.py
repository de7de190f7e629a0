"""LoRA / LongLoRA wrapping and merging, checked against PEFT's own merge_and_unload and state-dict export."""

import copy
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from endprompt_ray.models.lora import (LONGLORA_TRAINABLE, LoraError, LoraSpec, adapter_state_dict, apply_lora,
                                       merged_state_dict, trainable_state_dict)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def tiny_llama(seed: int = 0, **extra) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, **extra)
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def trained(spec: LoraSpec, seed: int = 0, **extra):
    """A PEFT-wrapped tiny Llama whose adapters (B is zero at init) and extras hold random nonzero values."""
    model = apply_lora(tiny_llama(seed, **extra), spec)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    return model


def inputs():
    return torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("extra", [{}, {"attention_bias": True}], ids=["no-bias", "bias"])
@pytest.mark.parametrize("trainable", [[], list(LONGLORA_TRAINABLE)], ids=["lora", "longlora"])
def test_merge_equals_peft_merge_and_unload(extra, trainable):
    spec = LoraSpec(enabled=True, rank=4, alpha=8.0, target_modules=TARGETS + ["down_proj"], trainable=trainable)
    model = trained(spec, **extra)
    assert all(model.state_dict()[n].abs().sum() > 0 for n in model.state_dict() if ".lora_B." in n)
    merged = merged_state_dict(model.state_dict(), spec)
    reference = copy.deepcopy(model).merge_and_unload()  # PEFT's own merge: an independent implementation
    expected = reference.state_dict()
    assert sorted(merged) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name
    plain = tiny_llama(seed=123, **extra)  # other random weights: every one must come from the merged dict
    plain.load_state_dict(merged, strict=True)
    plain.eval(), reference.eval(), model.eval()
    with torch.no_grad():
        logits = plain(input_ids=inputs()).logits
        assert torch.equal(logits, reference(input_ids=inputs()).logits)
        torch.testing.assert_close(logits, model(input_ids=inputs()).logits)  # the unmerged adapter computes it too


def test_merge_is_done_in_float32_and_returned_in_the_weights_dtype():
    spec = LoraSpec(enabled=True, rank=4, alpha=8.0)
    model = trained(spec)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    merged = merged_state_dict(state, spec)
    name = "model.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    w, a, b = (state[f"{prefix}.{part}.weight"].float() for part in ("base_layer", "lora_A.default", "lora_B.default"))
    assert merged[name].dtype == torch.bfloat16
    assert torch.equal(merged[name], (w + 2.0 * b @ a).to(torch.bfloat16))


def test_only_adapters_train_and_longlora_adds_embeddings_and_norms():
    lora = trained(LoraSpec(enabled=True, rank=4, alpha=8.0))
    names = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * len(TARGETS) * 2  # A and B, per target, per layer
    longlora = trained(LoraSpec(enabled=True, rank=4, alpha=8.0, trainable=list(LONGLORA_TRAINABLE)))
    extras = {n.removeprefix("base_model.model.") for n, p in longlora.named_parameters()
              if p.requires_grad and ".lora_" not in n}
    assert extras == {"model.embed_tokens.weight", "model.norm.weight",
                      *(f"model.layers.{i}.{norm}.weight" for i in range(2)
                        for norm in ("input_layernorm", "post_attention_layernorm"))}
    frozen = {n for n, p in longlora.named_parameters() if not p.requires_grad}
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in frozen
    assert "base_model.model.model.layers.0.mlp.up_proj.weight" in frozen


def test_disabled_lora_leaves_the_model_alone():
    model = tiny_llama()
    assert apply_lora(model, LoraSpec()) is model
    assert all(p.requires_grad for p in model.parameters())


def test_adapter_state_dict_is_what_peft_saves():
    from peft import get_peft_model_state_dict

    spec = LoraSpec(enabled=True, rank=4, alpha=8.0, trainable=["norm"])
    model = trained(spec)
    ours, peft_own = adapter_state_dict(model.state_dict()), get_peft_model_state_dict(model)
    assert sorted(ours) == sorted(peft_own)
    assert all(torch.equal(ours[name], peft_own[name]) for name in ours)
    extras = trainable_state_dict(model.state_dict(), spec)
    assert sorted(extras) == sorted(n for n, _ in tiny_llama().named_parameters() if "norm" in n)
    assert torch.equal(extras["model.norm.weight"], model.base_model.model.model.norm.weight)


def test_chunked_training_loss_runs_through_the_peft_wrapper():
    from endprompt_ray.training.loss import training_loss

    model = trained(LoraSpec(enabled=True, rank=4, alpha=8.0))
    ids = inputs()
    batch = {"input_ids": ids, "position_ids": torch.arange(ids.shape[1]).expand(2, -1), "labels": ids}
    full = training_loss(model, batch, "sdpa")
    torch.testing.assert_close(training_loss(model, batch, "sdpa", chunk_size=5), full)


@pytest.mark.parametrize(("changes", "message"), [
    ({"rank": 0}, r"train\.lora\.rank=0 must be a positive integer"),
    ({"rank": 2.5}, r"train\.lora\.rank=2\.5"),
    ({"alpha": 0}, r"train\.lora\.alpha=0 must be a positive number"),
    ({"dropout": 1.0}, r"train\.lora\.dropout=1\.0 must be in \[0, 1\)"),
    ({"target_modules": []}, r"train\.lora\.target_modules is empty"),
    ({"trainable": "embed_tokens"}, r"train\.lora\.trainable='embed_tokens' must be a list"),
    ({"target_modules": ["q_proj", ""]}, r"train\.lora\.target_modules=.* must be a list of non-empty names"),
])
def test_invalid_settings_say_where_and_how_to_fix(changes, message):
    with pytest.raises(LoraError, match=message):
        LoraSpec(enabled=True, **changes).validate()


def test_settings_that_need_lora_enabled_are_refused_without_it():
    with pytest.raises(LoraError, match=r"train\.lora\.save_adapter is set but train\.lora\.enabled=false"):
        LoraSpec(save_adapter=True).validate()
    with pytest.raises(LoraError, match=r"train\.lora\.trainable is set but train\.lora\.enabled=false"):
        LoraSpec(trainable=["norm"]).validate()
    LoraSpec().validate()


def test_names_that_match_nothing_in_the_model_are_refused():
    with pytest.raises(LoraError, match=r"train\.lora\.target_modules=\['qkv_proj'\] cannot be adapted"):
        apply_lora(tiny_llama(), LoraSpec(enabled=True, target_modules=["qkv_proj"]))
    with pytest.raises(LoraError, match=r"train\.lora\.trainable: 'embeddings' matches no parameter"):
        apply_lora(tiny_llama(), LoraSpec(enabled=True, trainable=["embeddings"]))


def test_merging_refuses_what_it_cannot_merge():
    with pytest.raises(LoraError, match="not the state dict of a PEFT-wrapped"):
        merged_state_dict(tiny_llama().state_dict(), LoraSpec(enabled=True))
    model = trained(LoraSpec(enabled=True, rank=4, alpha=8.0))
    with pytest.raises(LoraError, match="at rank 8; pass the LoraSpec the model was wrapped with"):
        merged_state_dict(model.state_dict(), LoraSpec(enabled=True, rank=8))


def _config_with_lora(spec: LoraSpec):
    from endprompt_ray.config.loader import load_config

    return load_config(None, ["eval.enabled=false", f"train.lora.enabled={str(spec.enabled).lower()}"])


def test_lora_enabled_probes_peft_and_names_the_extra_when_missing(monkeypatch):
    from endprompt_ray.jobs.preflight import MissingDependency, check_runtime, probes

    assert not any("train.lora" in p.feature for p in probes(_config_with_lora(LoraSpec())))
    cfg = _config_with_lora(LoraSpec(enabled=True))
    assert any("train.lora" in p.feature for p in probes(cfg))
    check_runtime(cfg)  # peft is installed here
    monkeypatch.delitem(sys.modules, "peft", raising=False)
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail as on a machine without it
    with pytest.raises(MissingDependency, match=r"train\.lora\.enabled=true .* needs the package 'peft'.*"
                                                r"pip install 'endprompt-ray\[lora\]'"):
        check_runtime(cfg)
