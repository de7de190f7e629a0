"""The memory/time planner against independent figures: hand-computed bytes for a tiny model, DeepSpeed's own
printed estimator table, parameter counts of real transformers models, and the suggestions' minimality."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re

import pytest

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import ConfigError
from endprompt_ray.jobs.preflight import warn_if_out_of_memory
from endprompt_ray.plan.architectures import KNOWN, Architecture, resolve_architecture
from endprompt_ray.plan.cli import main
from endprompt_ray.plan.estimate import (
    Workload,
    estimate,
    layer_saved_bytes,
    logits_bytes,
    model_states,
)
from endprompt_ray.plan.gpus import GIB, gpu_from_ray_resources, gpu_spec
from endprompt_ray.plan.planner import LOSS_CHUNKS, sequence_parallel_degrees, suggest

TINY = Architecture("tiny", hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4, num_kv_heads=2,
                    vocab_size=1024, tie_embeddings=True)
LLAMA3_8B = KNOWN["meta-llama/meta-llama-3-8b"]
QWEN3_4B = KNOWN["qwen/qwen3-4b"]
H100 = gpu_spec("h100-80gb")


def test_parameter_counts_match_deepspeed_on_real_models():
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    llama = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    qwen = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)
    for config, model_class in ((llama, LlamaForCausalLM), (qwen, Qwen3ForCausalLM)):
        model = model_class(config)  # real (small) tensors: model_to_params tells tied weights by data pointer
        total, largest = model_to_params(model)
        arch = Architecture.from_hf_config(config)
        assert (arch.total_params, arch.largest_layer_params) == (total, largest)
    assert TINY.total_params == 1024 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172 + 2 * 64) + 64
    assert 8.02e9 < LLAMA3_8B.total_params < 8.04e9  # "8B": 8,030,261,248 in the model card's safetensors index


def test_activation_and_logit_bytes_for_a_tiny_model_by_hand():
    w = Workload(128, zero_stage=0, bf16=False, gradient_checkpointing=False, attention="sdpa")  # fp32: 4 bytes
    # per token and layer: norms 2*(4+2*4)*64 = 1536; q,k,v 4*16*(4+2*2) = 512; output 4*64 + lse 4*4 + o_proj
    # input 4*64 = 528; MLP 4*4*172 = 2752 -> 5328
    assert layer_saved_bytes(TINY, w) == 5328 * 128
    assert logits_bytes(TINY, w) == 12 * 1024 * 128
    assert logits_bytes(TINY, dataclasses.replace(w, loss_chunk_size=32)) == 12 * 1024 * 32 + 4 * 1024 * 64
    assert logits_bytes(TINY, dataclasses.replace(w, loss_chunk_size=32, zero_stage=3)) == 12 * 1024 * 32
    head_inputs = (4 + 8) * 64 * 128
    gate_up_gradients = 2 * 4 * 172 * 128
    attention_backward = 16 * 128 * (4 * (4 + 4) + 2 * 2 * 4)  # dq (+ fp32 accumulator), dk, dv
    loss_phase, layer_phase = head_inputs + 12 * 1024 * 128, gate_up_gradients + attention_backward
    result = estimate(TINY, w)
    states = sum(result.breakdown[k] for k in ("weights", "gradients", "optimizer states"))
    assert result.phases == {"loss backward": loss_phase, "layer backward": layer_phase}
    assert result.peak_bytes - states == 2 * 5328 * 128 + max(loss_phase, layer_phase)
    chunked = estimate(TINY, dataclasses.replace(w, gradient_checkpointing=True, loss_chunk_size=16))
    # checkpointing keeps each layer's input; chunk 16 makes the layer's backward (recomputed saves) the peak
    assert chunked.peak_bytes - states == 2 * 4 * 64 * 128 + 5328 * 128 + layer_phase
    assert chunked.breakdown["logits/loss"] == 0


def _printed_gpu_gib(print_table, options: str, *args) -> float:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table(*args)
    row = next(line for line in out.getvalue().splitlines() if re.search(options + "$", line.strip()))
    return float(re.findall(r"([\d.]+)GB", row)[1])


@pytest.mark.parametrize("offload", [(False, False), (True, False), (True, True)])
def test_model_states_are_deepspeeds_zero3_table(offload):
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs_all_cold,
    )

    w = Workload(8192, zero_stage=3, offload_optimizer=offload[0], offload_params=offload[1], gpus_per_node=8)
    device = lambda on: r"\S*cpu" if on else "none"
    options = f"offload_param={device(offload[1])}, offload_optimizer={device(offload[0])}, zero_init=1"
    printed = _printed_gpu_gib(estimate_zero3_model_states_mem_needs_all_cold, options, LLAMA3_8B.total_params,
                               LLAMA3_8B.largest_layer_params, 8, 1)
    states, _ = model_states(LLAMA3_8B, w)
    assert sum(states.values()) / GIB == pytest.approx(printed, abs=0.006)


def test_model_states_are_deepspeeds_zero2_table():
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    printed = _printed_gpu_gib(estimate_zero2_model_states_mem_needs_all_cold, "offload_optimizer=none",
                               QWEN3_4B.total_params, 4, 1)
    states, _ = model_states(QWEN3_4B, Workload(8192, zero_stage=2, gpus_per_node=4))
    assert sum(states.values()) / GIB == pytest.approx(printed, abs=0.006)
    assert states["weights"] == 2 * QWEN3_4B.total_params  # ZeRO-2 keeps the 16-bit weights on every GPU


def test_memory_moves_the_right_way():
    base = Workload(32768, gpus_per_node=8, loss_chunk_size=0)
    peak = lambda **change: estimate(LLAMA3_8B, dataclasses.replace(base, **change)).peak_bytes
    assert peak() < peak(sequence_length=65536)
    assert peak(sequence_parallel=2) < peak() and peak(sequence_parallel=8) < peak(sequence_parallel=2)
    assert peak(loss_chunk_size=4096) < peak()
    assert peak() < peak(gradient_checkpointing=False)
    assert peak(offload_optimizer=True) < peak() and peak(offload_optimizer=True, offload_params=True) < peak(
        offload_optimizer=True)
    # with the loss chunked a layer's backward is the peak, and there the attention kernel matters
    assert peak(attention="flash_attention_2", loss_chunk_size=4096) < peak(loss_chunk_size=4096) < peak(
        attention="eager", loss_chunk_size=4096)
    assert peak(attention="flash_attention_2") == peak()  # the unchunked loss is the peak: kernels do not matter
    assert peak() < peak(micro_batch=2)


def test_sequence_parallel_divides_gpus_heads_and_sequence():
    with pytest.raises(ConfigError, match="divide"):
        estimate(LLAMA3_8B, Workload(65536, gpus_per_node=8, sequence_parallel=3))
    assert sequence_parallel_degrees(QWEN3_4B, Workload(65536, gpus_per_node=8)) == [2, 4, 8]


def test_suggested_sp_degree_is_the_smallest_that_fits():
    w = Workload(262144, gpus_per_node=8, loss_chunk_size=4096)
    assert estimate(LLAMA3_8B, w, H100).fits is False
    found = {s.change.split("=")[0]: s for s in suggest(LLAMA3_8B, w, H100)}
    degree = found["train.sequence_parallel"].estimate.workload.sequence_parallel
    assert found["train.sequence_parallel"].estimate.fits
    smaller = [n for n in [1] + sequence_parallel_degrees(LLAMA3_8B, w) if n < degree]
    assert smaller and not any(estimate(LLAMA3_8B, dataclasses.replace(w, sequence_parallel=n), H100).fits
                               for n in smaller)


def test_suggested_loss_chunk_is_the_largest_that_fits():
    w = Workload(131072, gpus_per_node=4, sequence_parallel=4, attention="flash_attention_2")  # HF's 128K OOM
    assert estimate(QWEN3_4B, w, H100).fits is False
    chunk = next(s for s in suggest(QWEN3_4B, w, H100) if s.change.startswith("train.loss_chunk_size"))
    size = chunk.estimate.workload.loss_chunk_size
    larger = [c for c in LOSS_CHUNKS if c > size]
    assert chunk.estimate.fits and all(
        not estimate(QWEN3_4B, dataclasses.replace(w, loss_chunk_size=c), H100).fits for c in larger)


def test_workload_from_the_llama3_preset():
    w = Workload.from_config(load_config("llama3-8b-64k"))
    assert (w.sequence_length, w.zero_stage, w.loss_chunk_size, w.gradient_checkpointing, w.world_size) == (
        8192, 3, 4096, True, 8)
    full = Workload.from_config(load_config("llama3-8b-64k", ["method.kind=full_length",
                                                              "train.deepspeed_config=zero3_offload"]))
    assert (full.sequence_length, full.offload_optimizer, full.offload_params) == (65536, True, True)


def test_gpu_type_from_ray_resources():
    assert gpu_from_ray_resources({"GPU": 8.0, "accelerator_type:H100": 1.0}) is H100
    assert gpu_from_ray_resources({"GPU": 8.0}) is None
    assert gpu_from_ray_resources({"accelerator_type:H100": 1.0, "accelerator_type:A10G": 1.0}) is None


def test_unknown_hub_id_asks_for_a_model_config():
    with pytest.raises(ConfigError, match="--model-config"):
        resolve_architecture("someone/unknown-model")


def test_cli_on_the_llama3_preset(capsys):
    assert main(["--config", "configs/llama3-8b-64k.yaml", "--gpu", "h100-80gb", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    endprompt, full = out.split("full_length baseline at L = 65536")
    assert "endprompt (as configured)" in endprompt and "8192 tokens per sample" in endprompt
    assert "65536 tokens per sample" in full and "SP degree it needs:" in full
    for part in ("weights", "gradients", "optimizer states", "activations", "logits/loss", "attention workspace"):
        assert part in endprompt and part in full
    assert main(["--config", "llama3-8b-64k", "--gpu", "tpu-v9"]) == 2
    assert "unknown GPU type" in capsys.readouterr().err


def test_cli_names_the_sp_degree_128k_needs(capsys):
    assert main(["--config", "llama3-8b-64k", "--gpus", "8", "--set", "method.kind=full_length",
                 "--set", "method.target_length=262144"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "--set train.sequence_parallel=" in out
    assert re.search(r"SP degree it needs: [248]", out)


def test_preflight_warns_on_gpu_runs_only(capsys):
    cpu = load_config("tiny-cpu")
    warn_if_out_of_memory(cpu, {"accelerator_type:A10G": 1.0})
    assert capsys.readouterr().err == ""
    too_long = load_config("llama3-8b-64k", ["method.kind=full_length", "method.target_length=262144"])
    warn_if_out_of_memory(too_long, {"GPU": 8.0, "accelerator_type:H100": 1.0})
    err = capsys.readouterr().err
    assert "predicted not to fit" in err and "h100-80gb" in err and "--set train.sequence_parallel=" in err
    warn_if_out_of_memory(too_long, {"GPU": 8.0})
    assert "GPU type is unknown" in capsys.readouterr().err
