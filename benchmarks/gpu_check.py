"""One GPU check in one command: the training call's attention, bf16 training throughput/MFU/memory against the
planner, and long-context generation speed of the passkey and RULER runners, in at most 7 minutes on one H200.

    python benchmarks/gpu_check.py [--out DIR] [--cpu]

Imports only what a bare GPU image has (torch, transformers, numpy) and the project's own modules; no Ray, MLflow or
DeepSpeed (the planner's model-state figures need DeepSpeed: without it each row says why its prediction is missing).
Sections, each under its own time cap, in this order (JSON rewritten after every row, so a run cut short keeps what
it measured):
  environment  versions, device, the SDPA backends torch enables
  peak         the measured dense matmul peak in the run's dtype (the MFU denominator)
  attention    gpu_check_attention.py: segment-2 logits of the training call vs a KV-cache reference, fp32 and the
               run's low precision, with and without the all-ones mask
  training     gpu_check_train.py: a ~1B Llama (Llama-3.2-1B's shape, random weights, RoPE scaled PI x8 to 64K):
               EndPrompt at P = 8192 (L = 65536), contiguous at 8192, full-length at 16K/32K/64K as far as they fit;
               each row beside the planner's prediction for it
  evaluation   prefill and decode speed of the passkey and RULER runners' prompts at 32K and 64K through their
               greedy_generate; random weights retrieve nothing, so no score is reported
--cpu: the same sections at tiny shapes in fp32 (about a minute on 2 cores), run by tests/test_gpu_check.py.
Writes gpu_check.json and gpu_check.md under --out (default $OUT if set, else outputs/gpu_check).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run from the working tree: no install on the GPU image

import torch
import transformers
from gpu_check_attention import LAYOUTS, check_layout, layout_sample
from gpu_check_report import markdown
from gpu_check_train import MasterAdamW, matmul_peak, time_generation, time_training, training_batch
from transformers import LlamaConfig, LlamaForCausalLM

from endprompt_ray.errors import ConfigError
from endprompt_ray.eval.passkey import PasskeySettings
from endprompt_ray.eval.passkey import build_samples as passkey_samples
from endprompt_ray.eval.ruler.runner import RulerSettings, build_jobs
from endprompt_ray.eval.ruler.sources import Sources
from endprompt_ray.models.loading import TOY_BASE, enable_activation_checkpointing, load_tokenizer
from endprompt_ray.plan.architectures import Architecture
from endprompt_ray.plan.estimate import Workload, estimate
from endprompt_ray.plan.gpus import GPUS
from endprompt_ray.rope.scaling import RopeScaling, scaled_config

RULER_TASKS = ["niah_single_1", "vt"]  # the two that need no downloaded data (noise haystacks)


@dataclass(frozen=True)
class Shapes:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    window: int  # the model's original context, extended PI x (target / window)
    physical_length: int  # P
    target_length: int  # L
    full_lengths: tuple[int, ...]
    eval_lengths: tuple[int, ...]
    loss_chunk_size: int
    matmul_size: int
    warmup_steps: int
    measured_steps: int
    caps_s: dict  # section -> seconds


GPU = Shapes(vocab_size=128256, hidden_size=2048, intermediate_size=8192, layers=16, heads=32, kv_heads=8,
             window=8192, physical_length=8192, target_length=65536, full_lengths=(16384, 32768, 65536),
             eval_lengths=(32768, 65536), loss_chunk_size=4096, matmul_size=8192, warmup_steps=2, measured_steps=3,
             caps_s={"peak": 20, "attention": 75, "training": 170, "evaluation": 90, "total": 400})
# CPU: sized to take well under a minute on an idle core; the caps only keep a crowded machine from stopping it
CPU = Shapes(vocab_size=640, hidden_size=64, intermediate_size=172, layers=2, heads=4, kv_heads=2, window=128,
             physical_length=128, target_length=2048, full_lengths=(256, 512), eval_lengths=(1024,),
             loss_chunk_size=64, matmul_size=256, warmup_steps=2, measured_steps=1,
             caps_s={"peak": 60, "attention": 300, "training": 300, "evaluation": 300, "total": 900})


class TotalCapReached(BaseException):  # not an Exception: the per-row handlers must let it through
    pass


def failure(err: Exception) -> dict:
    """What a row or section records instead of its figures: a lease is too short to lose the rest to one error."""
    if isinstance(err, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return {"fits": False, "error": "out of memory: " + str(err).splitlines()[0]}
    return {"error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exception(err)[-3:]}


class Run:
    """The JSON being filled: every `save()` rewrites gpu_check.json and gpu_check.md."""

    def __init__(self, out: Path, shapes: Shapes, mode: str):
        self.out, self.shapes, self.started = out, shapes, time.monotonic()
        self.data = {"mode": mode, "complete": False, "shapes": asdict(shapes), "sections": {}, "skipped": [],
                     "errors": []}
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"seconds": 0.0})

    def deadline(self, name: str) -> float:
        return time.monotonic() + self.shapes.caps_s[name]

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.save()

    def failed(self, what: str, err: Exception) -> dict:
        record = failure(err)
        self.data["errors"].append({"what": what, **record})
        self.save()
        return record

    def save(self) -> None:
        self.data["wall_s"] = time.monotonic() - self.started
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def build_model(shapes: Shapes, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0):
    config = LlamaConfig(vocab_size=shapes.vocab_size, hidden_size=shapes.hidden_size,
                         intermediate_size=shapes.intermediate_size, num_hidden_layers=shapes.layers,
                         num_attention_heads=shapes.heads, num_key_value_heads=shapes.kv_heads,
                         max_position_embeddings=shapes.window, rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 500000.0},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    config = scaled_config(config, shapes.target_length, RopeScaling())
    torch.manual_seed(seed)
    with device:
        return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}
    if device.type == "cuda":
        env.update(name=torch.cuda.get_device_name(device), capability=torch.cuda.get_device_capability(device),
                   memory_gib=torch.cuda.get_device_properties(device).total_memory / 2 ** 30,
                   sdpa_enabled={"flash": torch.backends.cuda.flash_sdp_enabled(),
                                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                                 "math": torch.backends.cuda.math_sdp_enabled()})
    try:
        import deepspeed
        env["deepspeed"] = deepspeed.__version__
    except ImportError as err:
        env["deepspeed"] = f"not importable ({err})"
    return env


def gpu_type(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((spec for spec in GPUS.values() if any(a in name for a in spec.ray_accelerator_types)), None)


def prediction(model, sequence_length: int, shapes: Shapes, device: torch.device) -> dict:
    """The planner's figures for this row: one GPU (nothing sharded), bf16 unless the run is fp32."""
    workload = Workload(sequence_length=sequence_length, micro_batch=1, zero_stage=0, gradient_checkpointing=True,
                        loss_chunk_size=shapes.loss_chunk_size, attention="sdpa", gpus_per_node=1,
                        bf16=model.dtype == torch.bfloat16)
    try:
        e = estimate(Architecture.from_hf_config(model.config), workload, gpu_type(device))
    except ConfigError as err:
        return {"missing": str(err)}
    return {"peak_gib": e.peak_bytes / 2 ** 30, "reserved_gib": e.reserved_bytes / 2 ** 30, "fits": e.fits,
            "step_time_s": e.step_time_s, "at_mfu": e.mfu,
            "breakdown_gib": {k: v / 2 ** 30 for k, v in e.breakdown.items()}}


def attention_section(run: Run, shapes: Shapes, tokenizer, device: torch.device, low: torch.dtype) -> None:
    section, deadline = run.section("attention"), run.deadline("attention")
    model = build_model(shapes, tokenizer, device, torch.float32)
    results = section.setdefault("results", {})
    for dtype in (torch.float32, low) if low != torch.float32 else (torch.float32,):
        model.to(dtype)
        name = str(dtype).removeprefix("torch.")
        for layout in LAYOUTS:
            if time.monotonic() > deadline:
                run.skip(f"attention {layout} {name}", "section time cap")
                continue
            start = time.monotonic()
            try:
                sample = layout_sample(layout, tokenizer, shapes.physical_length, shapes.target_length,
                                       shapes.vocab_size)
                results[f"{layout}/{name}"] = {"layout": layout, **check_layout(model, sample, name)}
            except Exception as err:  # noqa: BLE001  recorded; the other rows still run
                results[f"{layout}/{name}"] = {"layout": layout, "dtype": name,
                                               **run.failed(f"attention {layout} {name}", err)}
            section["seconds"] += time.monotonic() - start
            run.save()
    del model


def training_section(run: Run, shapes: Shapes, tokenizer, device: torch.device, dtype: torch.dtype):
    section, deadline = run.section("training"), run.deadline("training")
    model = build_model(shapes, tokenizer, device, dtype)
    enable_activation_checkpointing(model)
    optimizer = MasterAdamW(model)
    peak = run.data["sections"].get("peak", {}).get("tflops")
    P, L = shapes.physical_length, shapes.target_length
    rows = [("endprompt", "endprompt", P), ("contiguous", "contiguous", P)]
    rows += [(f"full_length_{n // 1024}k" if n >= 1024 else f"full_length_{n}", "full_length", n)
             for n in shapes.full_lengths]
    results = section.setdefault("results", {})
    for name, method, length in rows:
        if time.monotonic() > deadline:
            run.skip(f"training {name}", "section time cap")
            continue
        start = time.monotonic()
        row = {"method": method, "planner": prediction(model, length, shapes, device)}
        try:
            batch = training_batch(method, length, L if method != "full_length" else length, tokenizer,
                                   shapes.vocab_size)
            row.update(time_training(model, optimizer, batch, shapes.loss_chunk_size, shapes.warmup_steps,
                                     shapes.measured_steps, peak))
        except Exception as err:  # noqa: BLE001  recorded (out of memory: fits = false); the other rows still run
            optimizer.zero_grad()
            row.update(run.failed(f"training {name}", err))
        planned = row["planner"]
        if row.get("max_allocated_gib") and planned.get("peak_gib"):
            row["measured_over_planned_memory"] = row["max_allocated_gib"] / planned["peak_gib"]
        if row.get("seconds_per_step") and planned.get("step_time_s"):
            row["measured_over_planned_time"] = row["seconds_per_step"] / planned["step_time_s"]
        results[name] = row
        section["seconds"] += time.monotonic() - start
        section["ratios"] = ratios(results, shapes)
        run.save()
    del optimizer
    model.eval()
    return model


def ratios(results: dict, shapes: Shapes) -> dict:
    def get(name, key):
        return results.get(name, {}).get(key)

    longest = next((n for n in reversed(list(results)) if n.startswith("full_length") and get(n, "seconds_per_step")),
                   None)
    out = {}
    if get("endprompt", "seconds_per_step") and get("contiguous", "seconds_per_step"):
        out["endprompt_over_contiguous_time"] = get("endprompt", "seconds_per_step") / get("contiguous",
                                                                                           "seconds_per_step")
    if longest and get("endprompt", "seconds_per_step"):
        out["longest_full_length"] = longest
        out["full_length_over_endprompt_time"] = get(longest, "seconds_per_step") / get("endprompt",
                                                                                       "seconds_per_step")
        if get("endprompt", "max_allocated_gib"):
            out["full_length_over_endprompt_memory"] = get(longest, "max_allocated_gib") / get(
                "endprompt", "max_allocated_gib")
    return out


def evaluation_section(run: Run, shapes: Shapes, model, tokenizer, device: torch.device, dtype: torch.dtype) -> None:
    section, deadline = run.section("evaluation"), run.deadline("evaluation")
    if model is None:  # the training section failed before handing its model on
        model = build_model(shapes, tokenizer, device, dtype).eval()
    section["note"] = "timing only: the weights are random, so no retrieval score is meaningful or reported"
    lengths = list(shapes.eval_lengths)
    prompts = [("passkey", s.length, s.prompt, s.prompt_tokens, s.tokens_to_generate) for s in passkey_samples(
        tokenizer, PasskeySettings(lengths=lengths, depths=[0.5], num_samples=1, progress=False))]
    skipped: dict[str, str] = {}
    jobs = build_jobs(tokenizer, RulerSettings(lengths=lengths, tasks=RULER_TASKS, num_samples=1, progress=False),
                      Sources(None, None, None), RULER_TASKS, skipped)
    prompts += [(f"ruler_{task}", length, s[0].prompt, s[0].prompt_tokens, s[0].tokens_to_generate)
                for task, length, s in jobs]
    for task, why in skipped.items():
        run.skip(f"evaluation ruler_{task}", why)
    results = section.setdefault("results", {})
    for probe, length, prompt, prompt_tokens, new_tokens in sorted(prompts, key=lambda p: p[1]):
        if time.monotonic() > deadline:
            run.skip(f"evaluation {probe} @ {length}", "section time cap")
            continue
        start = time.monotonic()
        try:
            results[f"{probe}@{length}"] = {"runner": probe, "length": length,
                                            **time_generation(model, tokenizer, prompt, prompt_tokens, new_tokens)}
        except Exception as err:  # noqa: BLE001  recorded; the other rows still run
            results[f"{probe}@{length}"] = {"runner": probe, "length": length,
                                            **run.failed(f"evaluation {probe} @ {length}", err)}
        section["seconds"] += time.monotonic() - start
        run.save()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_check")
    parser.add_argument("--cpu", action="store_true", help="tiny shapes in fp32 on the CPU (what the tests run)")
    parser.add_argument("--total-cap", type=float, help="seconds before the run stops, whatever is left "
                        "(default: 400 on a GPU, 900 with --cpu)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; run with --cpu for the CPU mode")
    shapes, device = (CPU, torch.device("cpu")) if args.cpu else (GPU, torch.device("cuda", 0))
    if args.total_cap:
        shapes = replace(shapes, caps_s={**shapes.caps_s, "total": args.total_cap})
    low = torch.float32 if args.cpu else torch.bfloat16
    run = Run(Path(args.out), shapes, "cpu" if args.cpu else "gpu")
    run.data["environment"] = environment(device)
    run.save()

    def cap_reached(_signum, _frame):
        raise TotalCapReached(f"total time cap of {shapes.caps_s['total']} s reached")

    tokenizer = load_tokenizer(TOY_BASE)  # shipped with the package: no download, no training
    signal.signal(signal.SIGALRM, cap_reached)
    signal.setitimer(signal.ITIMER_REAL, shapes.caps_s["total"])  # from here, where the sections catch it

    def guarded(name: str, call, *args):
        try:
            return call(*args)
        except Exception as err:  # noqa: BLE001  recorded; the next section still runs
            run.section(name).update(run.failed(f"section {name}", err))
            return None

    def peak() -> None:
        start = time.monotonic()
        run.data["sections"]["peak"] = {**matmul_peak(device, low, shapes.matmul_size),
                                        "seconds": time.monotonic() - start}
        run.save()

    try:
        guarded("peak", peak)
        guarded("attention", attention_section, run, shapes, tokenizer, device, low)
        model = guarded("training", training_section, run, shapes, tokenizer, device, low)
        guarded("evaluation", evaluation_section, run, shapes, model, tokenizer, device, low)
        run.data["complete"] = True
    except TotalCapReached as err:
        run.skip("the remaining sections", str(err))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        run.save()
    return run.data


if __name__ == "__main__":
    data = main()
    print(json.dumps({key: data[key] for key in ("complete", "skipped", "errors", "wall_s")}, default=str))
    print(markdown(data))
