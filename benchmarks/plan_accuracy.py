"""How right the planner (endprompt_ray/plan/) is: (a) predicted vs measured peak memory of this project's own
training step on this CPU, (b) predicted vs published peaks and fit/out-of-memory outcomes of cited GPU runs.

(a) Each row builds a small Llama model locally (random weights, fp32), runs one warm-up step so the gradients
exist, then measures one more forward + backward of training/loss.py's `training_loss` (the job's forward and
loss, sdpa attention, checkpointing as the job enables it). Memory is the process's peak resident set size
(VmHWM, reset through /proc/self/clear_refs) above the resident size just before the step, in a child process
started with MALLOC_MMAP_THRESHOLD_=65536 so glibc maps every tensor over 64 KiB on its own and returns it on free
(without it freed heap stays resident and the peak is undercounted). It is compared with the planner's transient
part (activations + logits/loss + attention workspace): weights, gradients and optimizer states are resident
before the step. Limits: RSS counts pages touched, including small allocations and the Python heap (a few MB of
noise, which is why the sizes are large enough to dwarf it); ZeRO and SP rows would need DeepSpeed engines and
gloo process groups (minutes per row on 2 shared cores) and are not run here.

(b) Rows cite their source; "peak" is what the source reports. Run: python benchmarks/plan_accuracy.py [--cpu-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from endprompt_ray.plan.architectures import KNOWN, Architecture
from endprompt_ray.plan.estimate import Workload, estimate
from endprompt_ray.plan.gpus import GIB, gpu_spec

MIB = 2**20
CPU_GRID = [  # (name, hidden, intermediate, layers, heads, kv heads, vocab), sequence, checkpointing, loss chunk
    (("small", 256, 688, 4, 8, 4, 8192), 1024, False, 0),
    (("small", 256, 688, 4, 8, 4, 8192), 1024, True, 0),
    (("small", 256, 688, 4, 8, 4, 8192), 4096, False, 0),
    (("small", 256, 688, 4, 8, 4, 8192), 4096, True, 0),
    (("small", 256, 688, 4, 8, 4, 8192), 4096, True, 512),
    (("wide", 512, 1376, 2, 8, 2, 32000), 2048, False, 0),
    (("wide", 512, 1376, 2, 8, 2, 32000), 2048, True, 0),
    (("wide", 512, 1376, 2, 8, 2, 32000), 2048, True, 256),
]


def _rss(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure_step(shape: tuple, sequence: int, checkpointing: bool, chunk: int) -> int:
    """Peak bytes one training step adds on this CPU (run inside the child process)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from endprompt_ray.models.loading import enable_activation_checkpointing
    from endprompt_ray.training.loss import training_loss

    torch.set_num_threads(1)
    _, hidden, intermediate, layers, heads, kv_heads, vocab = shape
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=sequence, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    model.train()
    if checkpointing:
        enable_activation_checkpointing(model)
    ids = torch.randint(0, vocab, (1, sequence))
    batch = {"input_ids": ids, "position_ids": torch.arange(sequence)[None], "labels": ids.clone()}
    training_loss(model, batch, "sdpa", chunk).backward()  # warm-up: gradients allocated, kernels loaded
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _rss("VmRSS")
    training_loss(model, batch, "sdpa", chunk).backward()
    return _rss("VmHWM") - before


def cpu_rows() -> list[dict]:
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    for shape, sequence, checkpointing, chunk in CPU_GRID:
        args = json.dumps([shape, sequence, checkpointing, chunk])
        out = subprocess.run([sys.executable, __file__, "--measure", args], env=env, capture_output=True, text=True,
                             check=True).stdout
        measured = int(out.strip().splitlines()[-1])
        name, hidden, intermediate, layers, heads, kv_heads, vocab = shape
        arch = Architecture(name, hidden, intermediate, layers, heads, kv_heads, vocab)
        result = estimate(arch, Workload(sequence, zero_stage=0, gradient_checkpointing=checkpointing,
                                         loss_chunk_size=chunk, bf16=False))
        predicted = sum(result.breakdown[k] for k in ("activations", "logits/loss", "attention workspace"))
        rows.append(dict(model=f"{name} h{hidden} x{layers}L V{vocab}", sequence=sequence,
                         checkpointing=checkpointing, chunk=chunk, predicted_mib=predicted / MIB,
                         measured_mib=measured / MIB, error=predicted / measured - 1))
    return rows


@dataclass(frozen=True)
class Published:
    source: str
    model: str
    gpu: str
    workload: Workload
    peak_gib: float | None  # reported peak (None: only fit / OOM reported)
    fits: bool
    compare: str = "reserved"  # which prediction the report's figure corresponds to: reserved or allocated
    note: str = ""


_ALST = "snowflakedb/ArcticTraining projects/sequence-parallelism/"
_ALST_SP1 = dict(gpus_per_node=1, zero_stage=3, offload_optimizer=True, offload_params=True)
_HF = "huggingface.co/blog/ulysses-sp (Qwen3-4B, 4 x H100 80GB, SP 4, ZeRO-3, FA2)"
_QWEN_SP4 = dict(gpus_per_node=4, sequence_parallel=4, attention="flash_attention_2")
PUBLISHED = [
    Published(_ALST + "run-h100-sp1-llama-8b-baseline.yml ('32_000 # w/ param offload: NV 71.91 GB')",
              "meta-llama/Llama-3.1-8B-Instruct", "h100-80gb",
              Workload(32000, attention="flash_attention_2", **_ALST_SP1), 71.91, True,
              note="DeepSpeed's see_memory_usage NV figure: GiB in use on the device"),
    Published(_ALST + "run-h100-sp1-llama-8b-baseline.yml ('36_000 # w/ param offload close to oom')",
              "meta-llama/Llama-3.1-8B-Instruct", "h100-80gb",
              Workload(36000, attention="flash_attention_2", **_ALST_SP1), None, True),
    Published(_ALST + "run-h200-sp1-llama-8b-baseline.yml ('65_000 # ok 137.36 GB'; FA3)",
              "meta-llama/Llama-3.1-8B-Instruct", "h200",
              Workload(65000, attention="flash_attention_2", **_ALST_SP1), 137.36, True),
    Published(_ALST + "run-h200-sp1-llama-8b-liger.yml ('300_000 # ok 134.96 GB'; Liger kernels)",
              "meta-llama/Llama-3.1-8B-Instruct", "h200",
              Workload(300000, attention="flash_attention_2", loss_chunk_size=16384, **_ALST_SP1), 134.96, True,
              note="Liger's fused RMSNorm/SwiGLU keep fewer activations than the HF layers modelled: outside the "
                   "model (its fused loss modelled as a 16K chunk)"),
    Published(_ALST + "run-h100-sp32-llama-8b-baseline.yml ('36_000 # ok', 4 nodes, SP 32, optimizer offload)",
              "meta-llama/Llama-3.1-8B-Instruct", "h100-80gb",
              Workload(36000, gpus_per_node=8, nodes=4, sequence_parallel=32, zero_stage=3, offload_optimizer=True,
                       attention="flash_attention_2", loss_chunk_size=4096), None, True,
              note="SP > 1 in ArcticTraining always tiles the loss; modelled as 4096-token chunks"),
    *(Published(f"{_HF}: peak {peak} GB at {length // 1024}K", "Qwen/Qwen3-4B", "h100-80gb",
                Workload(length, **_QWEN_SP4), peak, True, compare="allocated",
                note="blog figure read as GiB of allocated memory")
      for length, peak in ((8192, 23.0), (32768, 35.0), (65536, 50.5), (98304, 66.0))),
    Published(f"{_HF}: 128K out of memory", "Qwen/Qwen3-4B", "h100-80gb", Workload(131072, **_QWEN_SP4), None,
              False),
]


def published_rows() -> list[dict]:
    rows = []
    for run in PUBLISHED:
        result = estimate(KNOWN[run.model.lower()], run.workload, gpu_spec(run.gpu))
        predicted = (result.reserved_bytes if run.compare == "reserved" else result.peak_bytes) / GIB
        error = predicted / run.peak_gib - 1 if run.peak_gib else None
        ok = result.fits == run.fits and (error is None or abs(error) <= 0.20)
        rows.append(dict(source=run.source, gpu=run.gpu, length=run.workload.sequence_length,
                         sp=run.workload.sequence_parallel, reported=run.peak_gib, predicted_gib=predicted,
                         compare=run.compare, error=error, fits_reported=run.fits, fits_predicted=result.fits,
                         ok=ok, note=run.note))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--published-only", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child process: one CPU measurement
    args = parser.parse_args(argv)
    if args.measure:
        print(measure_step(*json.loads(args.measure)))
        return 0
    if not args.published_only:
        print("(a) this CPU: one training step's added peak RSS vs the planner's activations + logits + attention")
        print(f"{'model':<24}{'seq':>6} {'ckpt':>5} {'chunk':>6} {'predicted MiB':>14} {'measured MiB':>13} "
              f"{'error':>7}")
        for row in cpu_rows():
            print(f"{row['model']:<24}{row['sequence']:>6} {row['checkpointing']!s:>5} {row['chunk']:>6} "
                  f"{row['predicted_mib']:>14.1f} {row['measured_mib']:>13.1f} {row['error']:>+7.1%}")
    if not args.cpu_only:
        print("\n(b) published GPU runs: predicted peak within 20% where one is reported, fit/OOM right otherwise")
        for row in published_rows():
            error = f"{row['error']:+.1%}" if row["error"] is not None else "-"
            reported = f"{row['reported']:.2f}" if row["reported"] else "-"
            print(f"{'OK  ' if row['ok'] else 'MISS'} {row['length']:>7} tokens SP {row['sp']:<2} {row['gpu']:<10} "
                  f"reported {reported:>7} GiB, predicted {row['predicted_gib']:6.2f} GiB ({row['compare']}) "
                  f"error {error:>7}; fits reported {row['fits_reported']}, predicted {row['fits_predicted']}\n"
                  f"       {row['source']}" + (f"\n       note: {row['note']}" if row["note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
