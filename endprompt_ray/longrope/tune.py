"""The LongRoPE factor search on Ray Tune: a custom Searcher around `longrope_search.Evolution`, and fitness actors
that load the model once and only swap its factors for each candidate.

One Tune trial is one candidate: a light function that asks one of the fitness actors (named, one per GPU on a
cluster) for the candidate's fitness. The Searcher hands out a generation's candidates, waits for all their
results, breeds the next generation, and says FINISHED after the last; Tune runs as many trials at once as there
are actors. A trial that fails (an actor lost, an exception in the forward pass) counts as infinite perplexity.
Tune saves the Searcher's state (`save`/`restore`), so `Tuner.restore` resumes an interrupted search.

Fitness, lower is better:
- ppl: perplexity at the target length on held-out long documents (the user's, or demo-corpus reports drawn with a
  seed of their own, so the search never sees the evaluation's documents);
- needle (LongRoPE2): perplexity of a passkey's answer tokens only, needles at depths 0-90%, prompts filling the
  target length.
Searching `short` factors scores them at the original window instead, with the long factors held fixed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ray import tune
from ray.tune.search import Searcher

from endprompt_ray.errors import ConfigError
from endprompt_ray.eval.errors import EvalInputError
from endprompt_ray.eval.generation import pick_device
from endprompt_ray.eval.passkey import PasskeySettings, build_samples
from endprompt_ray.eval.perplexity import PerplexitySettings, held_out_texts, token_nll, windows
from endprompt_ray.longrope.evolution import Evolution, FINISHED, FactorSpace, SearchError, critical_dim
from endprompt_ray.longrope.report import SearchReporter, SearchResult, finish, write_plan
from endprompt_ray.longrope.spec import RopeSearchSpec
from endprompt_ray.models.loading import load_config, load_model, load_tokenizer
from endprompt_ray.rope.longrope import reference_factors, resolve_factors, set_longrope_factors
from endprompt_ray.rope.scaling import RopeScaling, existing_scaling, scaled_config
from endprompt_ray.runtime.ray_session import connect_ray

SEARCH_SEED = 4321  # the evaluation's held-out documents use 1234, training 0
NEEDLE_DEPTHS = [round(0.1 * i, 1) for i in range(10)]  # LongRoPE2: needles at depths 0-90%


@dataclass
class Plan:
    """What the search needs from the model: the scaled config and the space, seeds and references it implies."""
    config: object  # the longrope HF config the evaluators load (starting factors; swapped per candidate)
    window: int
    scale: float
    length: int  # where candidates are scored: L for long factors, W for short ones
    space: FactorSpace
    seeds: dict  # name -> factors
    references: dict  # PI / NTK / YaRN factors for the report
    fitness: str


def make_plan(spec: RopeSearchSpec) -> Plan:
    base = load_config(spec.model)
    rope = resolve_factors(RopeScaling(
        type="longrope", factor=spec.factor, replace_existing=spec.replace_existing,
        original_max_position_embeddings=spec.original_max_position_embeddings,
        attention_factor=spec.attention_factor, factors_file=spec.factors_file))
    config = scaled_config(base, spec.target_length, rope)
    params = config.rope_parameters
    window, s = params["original_max_position_embeddings"], params["factor"]
    n = len(params["long_factor"])
    references = {k: v.tolist() for k, v in reference_factors(base, window, s).items()}
    upper = spec.upper or 1 + s
    if spec.factors == "short":
        seeds = {"identity": [1.0] * n, **({"file": rope.short_factor} if rope.short_factor else {})}
        space = FactorSpace(n, upper, spec.lower or 1.0, spec.step)
        return Plan(config, window, s, window, space, seeds, references, spec.fitness or "ppl")
    seeds = dict(references)
    if rope.long_factor is not None:
        seeds["file"] = rope.long_factor
    shipped = existing_scaling(base)
    if shipped and shipped["rope_type"] == "longrope" and spec.replace_existing:  # progressive: rescale its factors
        old = shipped.get("factor") or base.max_position_embeddings / shipped["original_max_position_embeddings"]
        if old > 1:
            seeds["model"] = (1 + (np.array(shipped["long_factor"]) - 1) * (s - 1) / (old - 1)).tolist()
    if spec.mode == "longrope2":
        cd = spec.critical_dim if spec.critical_dim is not None else critical_dim(2 * n, params["rope_theta"], window)
        lower, strict = spec.lower or spec.target_length / window, True
    else:
        cd, lower, strict = 0, spec.lower or 1.0, False
    try:
        space = FactorSpace(n, upper, lower, spec.step, cd, strict)
    except SearchError as err:
        raise ConfigError(f"search space: {err}") from err
    fitness = spec.fitness or ("needle" if spec.mode == "longrope2" else "ppl")
    return Plan(config, window, s, spec.target_length, space, seeds, references, fitness)


# ---- fitness actors ----------------------------------------------------------------------------------------------

class FactorEvaluator:
    """Keeps one model loaded and its scoring data tokenised; `evaluate` only swaps the factors (a Ray actor)."""

    def __init__(self, spec: dict, config, length: int, which: str, fitness: str):
        import torch

        spec = RopeSearchSpec(**spec)
        torch.set_num_threads(max(1, int(spec.cpus_per_evaluator)))
        self.which, self.fitness, self.length, self.batch_size = which, fitness, length, spec.batch_size
        tokenizer = load_tokenizer(spec.model)
        gpu = torch.cuda.is_available()
        model = load_model(spec.model, config=config, attn_implementation=spec.attn_implementation,
                           dtype=torch.bfloat16 if gpu else torch.float32)
        self.model = model.to(pick_device(model)).eval()
        self.rows = self._ppl_rows(tokenizer, spec) if fitness == "ppl" else self._needle_rows(tokenizer, spec)

    # rows: (token ids [batch, n], how many final tokens are scored; 0: all of them)
    def _ppl_rows(self, tokenizer, spec: RopeSearchSpec) -> list[tuple[np.ndarray, int]]:
        settings = PerplexitySettings(lengths=[self.length], documents_path=spec.documents, seed=SEARCH_SEED,
                                      text_field=spec.text_field, num_documents=spec.num_documents)
        texts, source = held_out_texts(tokenizer, settings)
        docs, ids = windows(tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"], self.length)
        if not docs:
            raise EvalInputError(f"no held-out document reaches {self.length} tokens ({source}); give longer "
                                 "documents (documents=...) to score candidates at this length")
        return [(ids[i:i + self.batch_size], 0) for i in range(0, len(docs), self.batch_size)]  # 0: every token

    def _needle_rows(self, tokenizer, spec: RopeSearchSpec) -> list[tuple[np.ndarray, int]]:
        rows = []
        settings = PasskeySettings(lengths=[self.length], depths=NEEDLE_DEPTHS, num_samples=spec.needle_samples,
                                   seed=SEARCH_SEED, progress=False)
        for sample in build_samples(tokenizer, settings):
            prompt = tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]
            answer = tokenizer(f" {sample.key}", add_special_tokens=False)["input_ids"][:sample.tokens_to_generate]
            rows.append((np.array([prompt + answer], dtype=np.int64), len(answer)))  # loss on the answer only
        return rows

    def ready(self) -> dict:
        return {"rows": len(self.rows), "length": self.length, "device": str(next(self.model.parameters()).device)}

    def evaluate(self, factors: list[float]) -> dict:
        import torch

        started = time.perf_counter()
        try:
            set_longrope_factors(self.model, **{f"{self.which}_factor": factors})
            device = next(self.model.parameters()).device
            total, count = 0.0, 0
            with torch.inference_mode():
                for ids, scored in self.rows:
                    nll = token_nll(self.model, torch.from_numpy(ids).to(device))
                    nll = nll[:, -scored:] if scored else nll  # needles: the answer's tokens only
                    total, count = total + float(nll.double().sum()), count + nll.numel()
            nll = total / count
            ppl = math.exp(nll) if nll < 700 else math.inf  # NaN fails the test too
            return {"ppl": ppl if math.isfinite(ppl) else math.inf, "seconds": time.perf_counter() - started}
        except Exception as err:  # a failed candidate is scored, not fatal: Tune goes on with the search
            return {"ppl": math.inf, "seconds": time.perf_counter() - started,
                    "error": f"{type(err).__name__}: {err}"[:500]}


def evaluate_trial(config: dict) -> None:
    """One Tune trial: the candidate's fitness from its fitness actor."""
    import ray

    result = ray.get(ray.get_actor(config["evaluator"]).evaluate.remote(config["factors"]))
    tune.report({"ppl": result["ppl"], "seconds": result["seconds"], "error": result.get("error", "")})


# ---- the Searcher --------------------------------------------------------------------------------------------------

class LongRopeSearcher(Searcher):
    """LongRoPE's evolutionary search as a Ray Tune Searcher (metric: ppl, minimised)."""

    def __init__(self, evolution: Evolution, evaluators: list[str], reporter=None, metric: str = "ppl"):
        super().__init__(metric=metric, mode="min")
        self.evolution, self.evaluators, self.reporter = evolution, list(evaluators), reporter
        self.trials: dict[str, tuple] = {}  # trial id -> genome
        self.slots: dict[str, str] = {}  # trial id -> the fitness actor it uses

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return metric in (None, self._metric) and mode in (None, "min")

    def suggest(self, trial_id: str):
        candidate = self.evolution.ask()
        if candidate is None:
            return None  # the generation's last results are pending
        if candidate == FINISHED:
            return Searcher.FINISHED
        busy = set(self.slots.values())
        free = [name for name in self.evaluators if name not in busy]
        self.trials[trial_id] = candidate.genome
        self.slots[trial_id] = free[0] if free else self.evaluators[len(self.slots) % len(self.evaluators)]
        return {"factors": self.evolution.space.factors(candidate.genome).tolist(), "generation": candidate.generation,
                "origin": candidate.origin, "evaluator": self.slots[trial_id]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        genome = self.trials.pop(trial_id, None)
        self.slots.pop(trial_id, None)
        if genome is None:
            return
        ppl = math.inf if error or not result else result.get(self._metric, math.inf)
        if self.evolution.tell(genome, ppl) and self.reporter is not None:
            self.reporter.generation_done(self.evolution)

    def get_state(self) -> dict:
        return {"evolution": self.evolution.state_dict(), "slots": self.slots,
                "trials": {k: list(v) for k, v in self.trials.items()}}

    def set_state(self, state: dict) -> None:
        self.evolution = Evolution.from_state(state["evolution"])
        self.trials = {k: tuple(v) for k, v in state["trials"].items()}
        self.slots = dict(state["slots"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


# ---- running it --------------------------------------------------------------------------------------------------


def start_evaluators(spec: RopeSearchSpec, plan: Plan) -> list:
    import ray

    remote = ray.remote(FactorEvaluator)
    which = spec.factors
    names = [f"longrope-eval-{spec.name}-{i}" for i in range(spec.evaluators)]
    actors = [remote.options(name=name, num_cpus=spec.cpus_per_evaluator, num_gpus=spec.gpus_per_evaluator)
              .remote(asdict(spec), plan.config, plan.length, which, plan.fitness) for name in names]
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayActorError as err:
        for actor in actors:
            ray.kill(actor)
        cause = getattr(err, "cause", None) or err
        raise ConfigError(f"the fitness actors could not start: {str(cause).strip().splitlines()[-1]}") from err
    return list(zip(names, actors))


def run_search(spec: RopeSearchSpec, resume: bool = False, trial_cpus: float = 0.05) -> SearchResult:
    """Run (or resume) the search; writes the best factors, a config snippet for extend.py, plots, and MLflow."""
    import ray

    started = time.perf_counter()
    plan = make_plan(spec)
    storage = str(Path(spec.output_dir).expanduser().resolve() / "ray_results")
    experiment = str(Path(storage) / spec.name)
    if resume and not tune.Tuner.can_restore(experiment):
        raise ConfigError(f"nothing to resume at {experiment}: no search named {spec.name!r} was started with "
                          f"output_dir={spec.output_dir!r}; run without --resume")
    connect_ray()
    write_plan(spec, plan)
    evaluators = start_evaluators(spec, plan)
    trainable = tune.with_resources(evaluate_trial, {"CPU": trial_cpus})
    try:
        if resume:  # the Searcher (with its reporter and MLflow run) comes back from Tune's saved state
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
        else:
            reporter = SearchReporter.open(spec, plan)
            searcher = LongRopeSearcher(Evolution.start(plan.space, spec.settings(), plan.seeds),
                                        [name for name, _ in evaluators], reporter)
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=-1, max_concurrent_trials=len(evaluators), reuse_actors=True),
                run_config=tune.RunConfig(name=spec.name, storage_path=storage, verbose=0))
        tuner.fit()
    finally:
        for _, actor in evaluators:
            ray.kill(actor)
    return finish(spec, plan, started)
