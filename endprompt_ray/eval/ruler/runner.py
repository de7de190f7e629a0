"""Run RULER on a model: build fitted prompts, generate greedily (in-process or on Ray actors, one per GPU), score."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import greedy_generate, is_model_path, load_model_and_tokenizer, resolve_tokenizer
from endprompt_ray.eval.ruler import report
from endprompt_ray.eval.ruler.fitting import TokenCounter, TooShort
from endprompt_ray.eval.ruler.samples import Sample, TaskSamples, build_samples, min_length
from endprompt_ray.eval.ruler.sources import Sources
from endprompt_ray.eval.ruler.tasks import ALL_TASKS, get_task


@dataclass
class RulerSettings:
    lengths: list[int]
    tasks: list[str] | None = None  # None: every task whose data is available (the rest are skipped with a note)
    num_samples: int = 10
    batch_size: int = 1
    seed: int = 42
    essay_path: str | None = None  # text corpus for the essay haystack (file or folder)
    squad_path: str | None = None  # SQuAD v2 dev JSON, for qa_1
    hotpotqa_path: str | None = None  # HotpotQA dev-distractor JSON, for qa_2
    workers: int | None = None  # Ray actors (one GPU each); None: automatic, see _workers; 0: in-process
    progress: bool = True

    def validate(self) -> None:
        if not self.lengths or any(not isinstance(n, int) or n <= 0 for n in self.lengths):
            raise EvalInputError(f"lengths must be positive integers (tokens), got {self.lengths!r}")
        for task in self.tasks or []:
            get_task(task)
        for name in ("num_samples", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise EvalInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise EvalInputError(f"workers must be >= 0, got {self.workers}")


def _plan(settings: RulerSettings, sources: Sources) -> tuple[list[str], dict[str, str]]:
    """Tasks to run, and tasks skipped for missing data; naming an essay task without a corpus is an error."""
    explicit = settings.tasks is not None
    runnable, skipped = [], {}
    for task in (settings.tasks if explicit else ALL_TASKS):
        spec = get_task(task)
        reason = sources.missing(spec.requires)
        if reason and explicit and spec.requires == "essay":
            raise EvalInputError(f"task {task} {reason}")
        if reason:
            skipped[task] = reason
        elif task not in runnable:
            runnable.append(task)
    return runnable, skipped


def build_jobs(tokenizer, settings: RulerSettings, sources: Sources, tasks: list[str], skipped: dict[str, str],
               draws: dict[tuple[str, int], TaskSamples] | None = None) -> list[tuple[str, int, list[Sample]]]:
    """(task, length, samples) to generate; fills `skipped` with tasks that fit no length asked for, and `draws` with
    the (task, length) pairs where a sample needed a redraw or was dropped."""
    from tqdm.auto import tqdm

    counter = TokenCounter(tokenizer)
    jobs, short = [], {}
    pairs = [(task, length) for length in sorted(set(settings.lengths)) for task in tasks]
    for task, length in tqdm(pairs, desc="RULER prompts", disable=not settings.progress, unit="set"):
        try:
            built = build_samples(task, length, settings.num_samples, counter, sources, settings.seed)
        except TooShort as err:
            short.setdefault(task, []).append((length, min_length(err, get_task(task).tokens_to_generate),
                                               err.draws))
            continue
        if built.redrawn and draws is not None:
            draws[(task, length)] = built
        jobs.append((task, length, built.samples))
    for task, cases in short.items():
        tried = max(d for _, _, d in cases)
        skipped[task] = ("too long for length " + ", ".join(str(n) for n, _, _ in cases)
                         + f" with this tokenizer (needs at least {max(m for _, m, _ in cases)} tokens"
                         + (f"; no fitting draw in {tried} tries)" if tried > 1 else ")"))
    return jobs


class _Predictor:
    """Holds one model replica (one GPU) and answers prompt batches; used as a Ray actor."""

    def __init__(self, model_dir: str, batch_size: int):
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir)
        self.batch_size = batch_size

    def predict(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return greedy_generate(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size, progress=False)


def _predict_with_ray(model_dir: str, jobs, settings: RulerSettings, workers: int) -> list[list[str]]:
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    # Ray only for RULER on Ray workers: in-process RULER (and a GPU image without Ray) never imports it
    from endprompt_ray.runtime.ray_session import connect_ray

    connect_ray()  # attaches to the cluster under `ray job submit`, else starts a local one
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor = ray.remote(num_gpus=gpus, num_cpus=1)(_Predictor)
    pool = ActorPool([actor.remote(model_dir, settings.batch_size) for _ in range(workers)])
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])  # longest lengths first: balances the actors
    for i in order:
        samples = jobs[i][2]
        pool.submit(lambda a, job: a.predict.remote(*job), ([s.prompt for s in samples], samples[0].tokens_to_generate))
    results = [pool.get_next() for _ in tqdm(order, desc="RULER generation (Ray)", disable=not settings.progress)]
    out: list[list[str]] = [[] for _ in jobs]
    for i, preds in zip(order, results):
        out[i] = preds
    return out


def _workers(settings: RulerSettings, model, jobs) -> int:
    """Ray actors for a model directory: one per local GPU when there are 2+, or one per cluster GPU when this
    process sees none but joined a Ray cluster that has some; otherwise 0 (generate in this process)."""
    if settings.workers is not None:
        if settings.workers and not is_model_path(model):
            raise EvalInputError("workers > 0 (Ray actors) needs a model directory, not an in-memory model")
        return settings.workers
    if not is_model_path(model):
        return 0
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and len(jobs) > 1:
        return min(gpus, len(jobs))
    if gpus == 0:  # inside a Ray task that holds no GPU (e.g. a Tune trial's driver): borrow the cluster's GPUs
        import ray

        cluster = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
        return min(cluster, len(jobs)) if cluster else 0
    return 0


def run_ruler(model, tokenizer, settings: RulerSettings, output_dir: str | Path) -> report.RulerResult:
    """Evaluate `model` (a loaded causal LM or a model directory) on RULER; writes files under output_dir."""
    settings.validate()
    sources = Sources(settings.essay_path, settings.squad_path, settings.hotpotqa_path)
    tasks, skipped = _plan(settings, sources)
    tokenizer = resolve_tokenizer(model, tokenizer)
    draws: dict[tuple[str, int], TaskSamples] = {}
    jobs = build_jobs(tokenizer, settings, sources, tasks, skipped, draws)
    if not jobs:
        raise EvalInputError("no RULER task can run with these settings: "
                             + "; ".join(f"{t}: {r}" for t, r in skipped.items()))

    workers = _workers(settings, model, jobs)
    if workers:
        predictions = _predict_with_ray(os.fsdecode(model), jobs, settings, workers)
    else:
        model, tokenizer = load_model_and_tokenizer(model, tokenizer)
        predictions = [greedy_generate(model, tokenizer, [s.prompt for s in samples], samples[0].tokens_to_generate,
                                       settings.batch_size, desc=f"{task} @ {length}", progress=settings.progress)
                       for task, length, samples in jobs]

    task_scores, records = {}, []
    for (task, length, samples), preds in zip(jobs, predictions):
        task_scores[(task, length)], recs = report.score_samples(samples, preds)
        records += recs
    notes = [built.note() for built in draws.values()] + report.fill_note(records)
    if any(get_task(t).requires == "essay" for t, _, _ in jobs):
        notes.append(f"essay haystack from {settings.essay_path}; RULER's own is Paul Graham's essays, so essay-task "
                     "scores are comparable with published numbers only on that corpus")
    result = report.aggregate(task_scores, skipped, notes, {key: built.stats() for key, built in draws.items()})
    return report.write_outputs(result, records, output_dir, dataclasses.asdict(settings))
