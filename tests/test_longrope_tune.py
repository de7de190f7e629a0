"""The LongRoPE search on Ray Tune: the Searcher's protocol and state, the fitness actor against the perplexity
evaluation, and one search end to end with real Ray Tune and MLflow."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.search import Searcher

from endprompt_ray.config.loader import load_config
from endprompt_ray.config.schema import config_fields
from endprompt_ray.errors import ConfigError
from endprompt_ray.longrope.evolution import Evolution, EvolutionSettings, FactorSpace
from endprompt_ray.longrope.spec import RopeSearchSpec, load_spec
from endprompt_ray.longrope.tune import FactorEvaluator, LongRopeSearcher, SEARCH_SEED, make_plan, run_search

ROOT = Path(__file__).resolve().parent.parent
SPACE = FactorSpace(size=8, upper=9.0)
SEEDS = {"PI": [8.0] * 8, "NTK": list(8.0 ** (np.arange(8) / 7)), "YaRN": [1.0, 1.4, 2.4] + [8.0] * 5}


def fitness(factors) -> float:
    return 1.0 + float(np.abs(np.array(factors) - np.linspace(1, 9, 8)).sum())


def searcher(seed=0) -> LongRopeSearcher:
    settings = EvolutionSettings(population=6, iterations=3, mutations=2, crossovers=2, parents=3, seed=seed)
    return LongRopeSearcher(Evolution.start(SPACE, settings, SEEDS), ["eval-0", "eval-1"])


def drive(s: LongRopeSearcher, start: int = 0, stop: int | None = None) -> list:
    """Tune's protocol with two trials at once: suggest until it waits, complete the oldest, repeat."""
    running, suggested, n = [], [], start
    while stop is None or n < stop:
        config = s.suggest(f"t{n}")
        if config == Searcher.FINISHED:
            break
        if config is None:
            tid, config = running.pop(0)
            s.on_trial_complete(tid, {"ppl": fitness(config["factors"])})
            continue
        assert config["evaluator"] not in {c["evaluator"] for _, c in running}  # one trial per fitness actor
        running.append((f"t{n}", config))
        suggested.append(tuple(config["factors"]))
        n += 1
        if len(running) == 2:
            tid, config = running.pop(0)
            s.on_trial_complete(tid, {"ppl": fitness(config["factors"])})
    for tid, config in running:  # stopped early: the running trials finish
        s.on_trial_complete(tid, {"ppl": fitness(config["factors"])})
    return suggested


def test_the_searcher_runs_the_evolution_through_tunes_protocol():
    s = searcher()
    suggested = drive(s)
    assert len(suggested) == 6 + 3 * 4 == len(set(suggested))
    assert len(s.evolution.curve) == 4 and s.suggest("late") == Searcher.FINISHED
    assert s.set_search_properties("ppl", "min", {}) and not s.set_search_properties("loss", "min", {})


def test_a_failed_trial_counts_as_infinite_perplexity():
    s = searcher()
    first, second = s.suggest("a"), s.suggest("b")
    s.on_trial_complete("a", error=True)
    s.on_trial_complete("b", {"seconds": 1.0})  # no metric: failed too
    ppls = {tuple(SPACE.factors(c.genome)): c.ppl for c in s.evolution.candidates.values() if c.ppl is not None}
    assert ppls == {tuple(first["factors"]): math.inf, tuple(second["factors"]): math.inf}
    s.on_trial_complete("unknown", {"ppl": 1.0})  # a trial this searcher never suggested is ignored


def test_save_and_restore_resume_the_same_population(tmp_path):
    original = searcher(seed=4)
    drive(original, stop=9)
    pending = original.suggest("t9")  # still running when the search stops
    original.save(str(tmp_path / "state.json"))
    restored = searcher(seed=99)  # another starting point: restore must replace all of it
    restored.restore(str(tmp_path / "state.json"))
    assert restored.evolution.state_dict() == original.evolution.state_dict()
    assert restored.trials == original.trials and restored.slots == original.slots
    for s in (original, restored):
        s.on_trial_complete("t9", {"ppl": fitness(pending["factors"])})
    assert drive(restored, start=10) == drive(original, start=10)
    assert restored.evolution.best().genome == original.evolution.best().genome


def test_bad_search_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'populaton'"):
        load_spec(None, ["populaton=4"])
    with pytest.raises(ConfigError, match="mode='longrope3' must be one of"):
        load_spec(None, ["mode=longrope3"])
    with pytest.raises(ConfigError, match="evaluators=0 must be at least 1"):
        load_spec(None, ["evaluators=0"])
    with pytest.raises(ConfigError, match="search file .* not found"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="nothing to resume at .*run without --resume"):
        run_search(load_spec(None, ["model=tiny", "target_length=512", f"output_dir={tmp_path}"]), resume=True)
    with pytest.raises(ConfigError, match="documents='/no/such/texts' does not exist"):
        load_spec(None, ["documents=/no/such/texts"])
    with pytest.raises(ConfigError, match="search space: need 1 <= lower"):
        make_plan(load_spec(None, ["model=tiny", "target_length=512", "mode=longrope2", "upper=1.5"]))


def test_the_plan_for_the_toy_base_in_both_modes():
    plan = make_plan(load_spec(None))
    assert (plan.window, plan.scale, plan.length, plan.fitness) == (256, 8.0, 2048, "ppl")
    assert plan.space == FactorSpace(size=16, upper=9.0) and set(plan.seeds) == {"PI", "NTK", "YaRN"}
    plan2 = make_plan(load_spec(None, ["mode=longrope2"]))
    assert plan2.space.critical_dim == 6 and plan2.space.lower == 8.0 and plan2.space.strict
    assert plan2.fitness == "needle"
    short = make_plan(load_spec(None, ["factors=short"]))
    assert short.length == 256 and set(short.seeds) == {"identity"}


def test_the_fitness_actor_scores_like_the_perplexity_evaluation(tiny_dir, tmp_path, one_thread):
    """Swapping factors in one loaded model gives the perplexity a freshly loaded model gets on the same text."""
    from endprompt_ray.eval.perplexity import PerplexitySettings, run_perplexity
    from endprompt_ray.models.loading import load_model, load_tokenizer
    from endprompt_ray.rope.scaling import RopeScaling, scaled_config

    spec = RopeSearchSpec(model="tiny", target_length=512, num_documents=2, batch_size=2)
    plan = make_plan(spec)
    evaluator = FactorEvaluator(spec.__dict__, plan.config, plan.length, "long", "ppl")
    assert evaluator.ready()["rows"] == 1
    chosen = [1.0, 1.1, 1.3, 1.6, 1.9, 2.0, 2.2, 2.5]
    scores = [evaluator.evaluate(f)["ppl"] for f in (plan.seeds["PI"], chosen, plan.seeds["PI"])]
    assert scores[0] == scores[2] != scores[1]
    config = scaled_config(plan.config, 512, RopeScaling(type="longrope", long_factor=chosen, replace_existing=True,
                                                         original_max_position_embeddings=256))
    fresh = load_model("tiny", config=config)
    reference = run_perplexity(fresh, load_tokenizer("tiny"), PerplexitySettings(
        lengths=[512], num_documents=2, seed=SEARCH_SEED, progress=False), tmp_path / "ppl")
    assert scores[1] == pytest.approx(reference.ppl[512], rel=1e-6)
    failed = evaluator.evaluate([1.0, 2.0])
    assert failed["ppl"] == math.inf and "needs 8" in failed["error"]


def test_needle_fitness_scores_only_the_answer(tiny_dir, one_thread):
    from endprompt_ray.models.loading import load_tokenizer

    spec = RopeSearchSpec(model="tiny", target_length=512, mode="longrope2", needle_samples=1)
    plan = make_plan(spec)
    evaluator = FactorEvaluator(spec.__dict__, plan.config, plan.length, "long", plan.fitness)
    tokenizer = load_tokenizer("tiny")
    assert len(evaluator.rows) == 10  # depths 0, 10, ..., 90%
    for ids, scored in evaluator.rows:
        assert ids.shape[1] <= 512 and tokenizer.decode(ids[0, -scored:]).strip().isdigit()
    assert math.isfinite(evaluator.evaluate(list(plan.space.factors(plan.space.genome(plan.seeds["PI"]))))["ppl"])


def test_a_two_iteration_search_end_to_end(local_ray, tiny_dir, tmp_path, capsys):
    spec_file = tmp_path / "search.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "lr-e2e", "model": "tiny", "target_length": 512, "population": 4,
                                         "iterations": 2, "mutations": 2, "crossovers": 2, "parents": 2,
                                         "num_documents": 2, "output_dir": str(tmp_path)}))
    module_spec = importlib.util.spec_from_file_location("search_rope", ROOT / "tune_spaces" / "search_rope.py")
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    assert script.main(["--space", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "generation 2/2" in out and "fine-tune from it: endprompt extend --config" in out
    run_dir = tmp_path / "lr-e2e"
    rows = (run_dir / "candidates.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 12 == len({r.split(",")[3] for r in rows})  # 4 + 2 x (2 + 2), none twice
    best = yaml.safe_load((run_dir / "best_factors.yaml").read_text())
    assert set(best["metadata"]["seeds_ppl"]) == {"PI", "NTK", "YaRN"}
    assert best["metadata"]["ppl"] == min(float(r.split(",")[2]) for r in rows)
    cfg = load_config(run_dir / "extend_longrope.yaml")  # the snippet extend.py takes
    assert cfg.rope.type == "longrope" and cfg.rope.long_factor == best["long_factor"]
    assert cfg.method.target_length == 512 and cfg.model.name_or_path == "tiny"
    assert (run_dir / "factors.png").stat().st_size > 0 and (run_dir / "best_ppl.png").stat().st_size > 0
    assert list((tmp_path / "ray_results" / "lr-e2e").glob("searcher-state-*.pkl"))  # Tune saved the Searcher
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads((run_dir / "search_run.json").read_text())["mlflow_run_id"]
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["search.population"] == "4"
    curve = client.get_metric_history(run_id, "best_ppl")
    assert [m.step for m in curve] == [0, 1, 2] and curve[-1].value == pytest.approx(best["metadata"]["ppl"])
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert len(children) == 3
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best_factors.yaml", "extend_longrope.yaml", "factors.png", "best_ppl.png"} <= artifacts
    # --resume restores Tune's experiment with the Searcher's saved state; a finished search has nothing left to run
    assert script.main(["--space", str(spec_file), "--resume"]) == 0
    assert yaml.safe_load((run_dir / "best_factors.yaml").read_text()) == best
    assert json.loads((run_dir / "search_run.json").read_text())["mlflow_run_id"] == run_id
    assert "interrupted" not in capsys.readouterr().out


def test_the_comparison_of_scalings_without_fine_tuning(tiny_dir, tmp_path, one_thread):
    from endprompt_ray.longrope.compare import compare, markdown

    factors = tmp_path / "f.yaml"
    factors.write_text(yaml.safe_dump([1.0, 1.0, 1.2, 1.5, 2.0, 2.0, 2.0, 2.0]))
    rows = compare("tiny", {512: str(factors)}, num_documents=1, passkey_samples=1, out_dir=tmp_path / "out")
    assert [r["variant"] for r in rows] == ["base", "PI", "NTK", "YaRN", "LongRoPE"]
    assert rows[1]["rope"] == "linear x2" and all(math.isfinite(r["ppl_target"]) for r in rows)
    assert markdown(rows, 256).splitlines()[-1].startswith("| 2x (512) | LongRoPE |")


def test_every_search_setting_is_documented():
    docs = {d.key: d for d in config_fields(RopeSearchSpec)}
    assert docs["mode"].type == "longrope | longrope2" and docs["population"].default == "16"
    assert all(d.help.strip() for d in docs.values()), [k for k, d in docs.items() if not d.help.strip()]
