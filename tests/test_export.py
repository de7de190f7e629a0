"""Export of LoRA-trained models: a plain merged HF model (no peft needed to load it) and, on request, the adapter."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from endprompt_ray.models.export import (ADAPTER_SUBDIR, EXPORT_SUBDIR, METADATA_FILE, TRAINABLE_FILE,
                                         export_from_checkpoint, save_hf_model, write_hf_model)
from endprompt_ray.models.lora import LONGLORA_TRAINABLE, LoraError, LoraSpec, apply_lora
from endprompt_ray.rope.scaling import RopeScaling, scaled_config

SPEC = LoraSpec(enabled=True, rank=4, alpha=8.0, trainable=list(LONGLORA_TRAINABLE), save_adapter=True)


def scaled(tiny_dir):
    return scaled_config(AutoConfig.from_pretrained(tiny_dir), 2048, RopeScaling())  # linear x8, as training uses


def load_base(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, config=scaled(tiny_dir), dtype=torch.float32)


def trained_peft(tiny_dir, spec: LoraSpec = SPEC):
    """The tiny preset with scaled RoPE, LoRA-wrapped, its adapters and extras moved away from their init."""
    model = apply_lora(load_base(tiny_dir), spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=g))
    return model.eval()


def ids():
    return torch.randint(3, 500, (2, 40), generator=torch.Generator().manual_seed(1))


def test_a_lora_model_is_exported_merged_as_its_plain_base_architecture(tiny_dir, tiny_tokenizer, tmp_path):
    model = trained_peft(tiny_dir)
    reference = copy.deepcopy(model).merge_and_unload().eval()  # PEFT's own merge, in float32
    rounded = {name: tensor.to(torch.bfloat16) for name, tensor in reference.state_dict().items()}
    target = tmp_path / "model"
    write_hf_model(model, model.state_dict(), tiny_tokenizer, target, metadata={"steps": 3}, lora=SPEC)

    saved = json.loads((target / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["use_cache"]
    assert saved["rope_parameters"] == scaled(tiny_dir).rope_parameters  # the extended RoPE travels with it
    assert "peft" not in json.dumps(saved).lower() and not (target / "adapter_config.json").exists()
    assert json.loads((target / METADATA_FILE).read_text()) == {"steps": 3}
    assert (target / "tokenizer.json").exists()
    weights = load_file(target / "model.safetensors")
    assert not any("lora" in name or "base_layer" in name or name.startswith("base_model") for name in weights)
    assert all(tensor.dtype == torch.bfloat16 for tensor in weights.values())

    exported = AutoModelForCausalLM.from_pretrained(target, dtype=torch.bfloat16)  # no peft involved
    assert type(exported).__name__ == "LlamaForCausalLM"
    for name, tensor in rounded.items():
        assert torch.equal(exported.state_dict()[name], tensor), name
    exported = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    reference.load_state_dict({name: tensor.float() for name, tensor in rounded.items()})
    with torch.no_grad():
        logits = exported(input_ids=ids()).logits
        assert torch.equal(logits, reference(input_ids=ids()).logits)
        # and it is the trained function: the unmerged adapter's output, up to the bf16 rounding of the weights
        torch.testing.assert_close(logits, model(input_ids=ids()).logits, atol=0.05, rtol=0.05)


def test_the_adapter_alone_rebuilds_the_trained_model_with_peft(tiny_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    model = trained_peft(tiny_dir)
    write_hf_model(model, model.state_dict(), tiny_tokenizer, tmp_path, metadata={}, lora=SPEC)
    adapter = tmp_path / ADAPTER_SUBDIR
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    base = load_base(tiny_dir)  # the base with the exported (scaled) RoPE config
    extras = load_file(adapter / TRAINABLE_FILE)  # LongLoRA's fully trained embeddings and norms
    assert "model.embed_tokens.weight" in extras and "model.norm.weight" in extras
    missing, unexpected = base.load_state_dict(extras, strict=False)
    assert not unexpected
    rebuilt = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids()).logits, model(input_ids=ids()).logits)


def test_no_adapter_directory_unless_asked(tiny_dir, tiny_tokenizer, tmp_path):
    spec = LoraSpec(enabled=True, rank=4, alpha=8.0)
    model = trained_peft(tiny_dir, spec)
    write_hf_model(model, model.state_dict(), tiny_tokenizer, tmp_path, metadata={}, lora=spec)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / ADAPTER_SUBDIR).exists()


def test_a_lora_model_needs_the_spec_it_was_wrapped_with(tiny_dir, tiny_tokenizer, tmp_path):
    model = trained_peft(tiny_dir)
    with pytest.raises(LoraError, match="pass lora=<the LoraSpec it was wrapped with>"):
        write_hf_model(model, model.state_dict(), tiny_tokenizer, tmp_path, metadata={})
    with pytest.raises(LoraError, match=r"rank 4, alpha 8.0.*not the one described by train.lora \(rank 8"):
        write_hf_model(model, model.state_dict(), tiny_tokenizer, tmp_path, metadata={},
                       lora=LoraSpec(enabled=True, rank=8, alpha=8.0))
    assert not (tmp_path / "config.json").exists()


def test_save_hf_model_writes_only_on_the_writer_rank(tiny_dir, tiny_tokenizer, tmp_path):
    model = trained_peft(tiny_dir)
    engine = SimpleNamespace(module=model)  # the one attribute of a DeepSpeed engine the non-ZeRO-3 path reads
    save_hf_model(engine, None, tmp_path / "reader", is_writer=False, zero3=False, metadata={}, lora=SPEC)
    assert not (tmp_path / "reader").exists()
    save_hf_model(engine, tiny_tokenizer, tmp_path / "writer", is_writer=True, zero3=False, metadata={}, lora=SPEC)
    assert (tmp_path / "writer" / "model.safetensors").exists()


def test_a_plain_model_is_exported_as_before(tiny_dir, tiny_tokenizer, tmp_path):
    model = load_base(tiny_dir)
    write_hf_model(model, model.state_dict(), tiny_tokenizer, tmp_path, metadata={})
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"  # what the weights are
    exported = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert exported.dtype == torch.bfloat16
    for name, tensor in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor.to(torch.bfloat16)), name


@pytest.mark.slow
def test_zero3_partitioned_model_wrapped_after_loading_trains_and_exports_merged(tiny_dir, tmp_path):
    """DeepSpeed ZeRO-3 in its own process (one rank, gloo): weights partitioned at from_pretrained, LoRA added
    afterwards, adapters partitioned by deepspeed.initialize; the export reproduces the engine's logits."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    run = subprocess.run([sys.executable, __file__, tiny_dir, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["partitioned_at_load"] and report["adapter_partitioned_by_initialize"]
    assert report["losses"][-1] < report["losses"][0]
    assert report["max_logit_diff"] < 0.02 * report["logit_scale"]  # bf16 export vs the fp32 engine


def _zero3_worker(tiny_dir: str, out: Path) -> None:
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from endprompt_ray.training.forward import training_forward
    from endprompt_ray.models.loading import enable_activation_checkpointing, load_tokenizer

    deepspeed.init_distributed(dist_backend="gloo")
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2,
          "zero_optimization": {"stage": 3}, "bf16": {"enabled": False},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    hook = HfDeepSpeedConfig(ds)  # noqa: F841 - what train.py holds during from_pretrained
    model = load_base(tiny_dir)
    report = {"partitioned_at_load": hasattr(model.model.layers[0].self_attn.q_proj.weight, "ds_id")}
    model.config.use_cache = False
    enable_activation_checkpointing(model)
    model = apply_lora(model, SPEC)
    engine, *_ = deepspeed.initialize(model=model, config=ds,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.weight
    report["adapter_partitioned_by_initialize"] = hasattr(lora_a, "ds_id")
    batch = {"input_ids": ids(), "position_ids": torch.arange(40).expand(2, -1), "labels": ids()}
    report["losses"] = []
    engine.train()
    for _ in range(3):
        loss = training_forward(engine, batch, "sdpa").loss
        engine.backward(loss)
        engine.step()
        report["losses"].append(loss.item())
    engine.eval()
    with torch.no_grad():
        expected = engine(input_ids=ids()).logits.float()
    save_hf_model(engine, load_tokenizer(tiny_dir), out / "model", is_writer=True, zero3=True, metadata={},
                  lora=SPEC)
    unset_hf_deepspeed_config()
    exported = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (exported(input_ids=ids()).logits - expected).abs().max().item()
    report.update(max_logit_diff=diff, logit_scale=expected.abs().max().item())
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _zero3_worker(sys.argv[1], Path(sys.argv[2]))


def test_export_reads_only_the_model_folder_of_the_final_checkpoint(tmp_path):
    """The DeepSpeed state beside the exported model is never copied (for 8B it is ~100 GB)."""
    from ray.train import Checkpoint

    ckpt = tmp_path / "checkpoint_0"
    (ckpt / EXPORT_SUBDIR / "sub").mkdir(parents=True)
    (ckpt / EXPORT_SUBDIR / "config.json").write_text("{}")
    (ckpt / EXPORT_SUBDIR / "sub" / "tokenizer.json").write_text("[]")
    (ckpt / "state").mkdir()
    (ckpt / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 1000)
    out = export_from_checkpoint(Checkpoint.from_directory(str(ckpt)), tmp_path / "model")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["config.json", "sub/tokenizer.json"]
    (ckpt / EXPORT_SUBDIR / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds no exported model"):
        export_from_checkpoint(Checkpoint.from_directory(str(ckpt)), tmp_path / "model")
