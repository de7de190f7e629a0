"""gpu_check.py's markdown: one table per section from the JSON, whatever part of it a run managed to fill."""

from __future__ import annotations


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]


def _planner(row: dict) -> tuple[str, str]:
    plan = row.get("planner", {})
    if "missing" in plan:
        return "missing (below)", "-"
    return _f(plan.get("peak_gib")), _f(plan.get("step_time_s"), 3)


def markdown(data: dict) -> str:
    env, sections = data.get("environment", {}), data.get("sections", {})
    title = (f"# gpu_check ({data.get('mode')}): {env.get('name', env.get('device', '?'))}, torch "
             f"{env.get('torch')}, transformers {env.get('transformers')}, DeepSpeed {env.get('deepspeed')}")
    lines = [title, ""]
    if "peak" in sections:
        p = sections["peak"]
        lines += [f"Measured matmul peak: {_f(p['tflops'], 4)} TFLOP/s ({p['dtype']}, {p['size']}^3).", ""]
    attention = sections.get("attention", {}).get("results", {})
    if attention:
        lines += ["## Segment 2 in the training call vs a KV-cache reference", ""]
        lines += _table(["layout", "dtype", "SDPA op", "max abs diff", "without the mask", "tolerance", "ok",
                         "trap shown"],
                        [[r["layout"], r["dtype"], ", ".join(r.get("sdpa_kernels", [])) or r.get("error", "-"),
                          r.get("max_abs_diff"), r.get("max_abs_diff_without_mask"), r.get("tolerance"),
                          r.get("within_tolerance"), r.get("trap_shown_without_mask")]
                         for r in attention.values()]) + [""]
    training = sections.get("training", {})
    if training.get("results"):
        lines += ["## Training steps (micro-batch 1, activation checkpointing, AdamW)", ""]
        rows = []
        for name, r in training["results"].items():
            planned_memory, planned_time = _planner(r)
            if "error" in r:
                rows.append([name, "-", "-", "-", "-", "-", "did not fit" if r.get("fits") is False else "error",
                             planned_memory, planned_time])
                continue
            rows.append([name, r["sequence_length"], _f(r["seconds_per_step"], 3), round(r["tokens_per_s"]),
                         r["achieved_tflops"], r["mfu"], r["max_allocated_gib"], planned_memory, planned_time])
        lines += _table(["run", "tokens", "s/step", "tokens/s", "TFLOP/s", "MFU", "max alloc GiB",
                         "planned peak GiB", "planned s/step"], rows) + [""]
        missing = sorted({r["planner"]["missing"] for r in training["results"].values()
                          if "missing" in r.get("planner", {})})
        lines += [f"- planner prediction missing: {why}" for why in missing]
        for key, value in training.get("ratios", {}).items():
            lines.append(f"- {key}: {_f(value, 3)}")
        lines.append("")
    evaluation = sections.get("evaluation", {})
    if evaluation.get("results"):
        lines += ["## Generation speed (" + evaluation["note"] + ")", ""]
        lines += _table(["runner", "length", "prompt tokens", "prefill s", "prefill tokens/s", "new tokens",
                         "decode tokens/s"],
                        [[r["runner"], r["length"], r.get("prompt_tokens"), r.get("prefill_s"),
                          round(r["prefill_tokens_per_s"]) if "prefill_tokens_per_s" in r else r.get("error"),
                          r.get("new_tokens"), r.get("decode_tokens_per_s")] for r in evaluation["results"].values()])
        lines.append("")
    for item in data.get("skipped", []):
        lines.append(f"- skipped {item['what']}: {item['why']}")
    for item in data.get("errors", []):
        lines.append(f"- failed {item['what']}: {item['error'].splitlines()[0][:300]}")
    lines.append(f"\nComplete: {_f(data.get('complete'))}; wall {_f(data.get('wall_s'), 3)} s.")
    return "\n".join(lines) + "\n"
