"""LongRoPE's evolutionary search as pure functions: hand-checked properties of its operators and state machine."""

import json
import math

import numpy as np
import pytest

from endprompt_ray.longrope.evolution import (Evolution, EvolutionSettings, FINISHED, FactorSpace, SearchError,
                                              critical_dim, crossover, mutate)

SPACE = FactorSpace(size=8, upper=9.0)  # s = 8, the public code's bound 1 + s
TARGET = np.array([1.0, 1.0, 1.3, 2.0, 4.5, 7.0, 8.5, 9.0])  # a synthetic optimum for the fitness below


def fitness(space, genome) -> float:
    return 1.0 + float(np.abs(space.factors(genome) - TARGET).sum())


def seeds(n=8, s=8.0):
    i = np.arange(n)
    return {"PI": [s] * n, "NTK": list(s ** (2 * i / (2 * n - 2))), "YaRN": [1.0, 1.4, 2.4] + [s] * (n - 3)}


def monotone(genome, strict=False):
    steps = np.diff(genome)
    return bool(np.all(steps > 0) if strict else np.all(steps >= 0))


def test_critical_dimension_by_hand():
    # toy base: d = 32, base 1e4, W = 256: log_1e4(256 / 2pi) * 16 = 6.44 -> 7 - 1
    assert critical_dim(32, 1e4, 256) == 6
    # Llama-3-8B: d = 128, base 5e5, W = 8192: 34.99 -> 35 - 1
    assert critical_dim(128, 5e5, 8192) == 34
    for d, base, window in [(32, 1e4, 256), (128, 5e5, 8192), (128, 1e4, 4096), (64, 1e6, 32768)]:
        cd = critical_dim(d, base, window)
        wavelength = 2 * math.pi * base ** (2 * np.arange(d // 2) / d)
        assert wavelength[cd] < window <= wavelength[cd + 1]


def test_longrope2_factors_below_the_critical_dimension_follow_ntk():
    space = FactorSpace(size=8, upper=12.0, lower=8.0, critical_dim=3, strict=True)
    factors = space.factors((850, 900, 950, 1000, 1100))
    np.testing.assert_allclose(factors, [1.0, 8.5 ** (1 / 3), 8.5 ** (2 / 3), 8.5, 9.0, 9.5, 10.0, 11.0])
    assert space.genome([8.0] * 8) == (800, 801, 802, 803, 804)  # PI lifted to strictly increasing
    assert space.genome([1.0] * 3 + [13.0] * 5) is None  # cannot be strictly increasing below upper


def test_seeds_are_rounded_onto_the_grid_within_bounds():
    assert SPACE.genome(seeds()["PI"]) == (800,) * 8
    assert SPACE.genome([1.0, 1.234, 1.236, 2.0, 30.0, 30.0, 30.0, 30.0]) == (100, 123, 124, 200, 900, 900, 900, 900)
    with pytest.raises(SearchError, match="a seed has 3 factors, the space 8"):
        SPACE.genome([1.0, 2.0, 3.0])


@pytest.mark.parametrize("space", [SPACE, FactorSpace(size=8, upper=10.0, lower=8.0, critical_dim=3, strict=True)])
def test_mutation_stays_monotone_on_the_grid_within_bounds_and_never_repeats(space):
    rng = np.random.default_rng(0)
    parent = space.genome(seeds()["NTK"])
    seen = {parent}
    for _ in range(300):
        child = mutate(space, parent, rng, seen)
        assert child not in seen and len(child) == space.genes
        assert all(isinstance(v, int) for v in child)  # whole grid steps
        assert space.lo <= min(child) and max(child) <= space.hi and monotone(child, space.strict)
        seen.add(child)
        parent = child


def test_mutation_redraws_a_factor_only_between_its_neighbours():
    """With one factor free to move (its neighbours pin it), every child differs from the parent there only."""
    space = FactorSpace(size=3, upper=3.0)
    parent = (100, 150, 300)
    children = set()
    rng = np.random.default_rng(1)
    for _ in range(200):
        child = mutate(space, parent, rng, {parent})
        children.add(child)
        assert 100 <= child[0] <= child[1] <= child[2] <= 300
    assert len(children) > 50  # draws spread over the grid


def test_mutation_of_an_exhausted_space_gives_none_and_the_search_ends():
    space = FactorSpace(size=1, upper=1.01)  # two candidates: 1.00 and 1.01
    assert mutate(space, (100,), np.random.default_rng(0), {(100,), (101,)}, attempts=50) is None
    evo = Evolution.start(space, EvolutionSettings(population=2, iterations=5, mutations=2, crossovers=0, parents=1),
                          {"one": [1.0]})
    run(evo, space)
    assert evo.finished and evo.exhausted and len(evo.candidates) == 2 and len(evo.curve) == 1


def test_crossover_takes_each_factor_from_a_parent_and_never_repeats():
    rng = np.random.default_rng(2)
    a, b = SPACE.genome(seeds()["NTK"]), SPACE.genome(seeds()["YaRN"])
    seen = {a, b}
    made = 0
    for _ in range(100):
        child = crossover(SPACE, a, b, rng, seen)
        if child is None:
            continue
        made += 1
        assert child not in seen and monotone(child)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        seen.add(child)
    assert made > 10
    assert crossover(SPACE, a, a, rng, set()) is None  # identical parents


def run(evo: Evolution, space=SPACE, stop_after=None) -> list:
    """Evaluate candidates as a Tune loop would, one at a time; returns the genomes in the order handed out."""
    handed = []
    while stop_after is None or len(handed) < stop_after:
        candidate = evo.ask()
        if candidate == FINISHED:
            break
        assert candidate is not None  # one at a time: a generation's results are in before the next is bred
        handed.append(candidate.genome)
        evo.tell(candidate.genome, fitness(space, candidate.genome))
    return handed


def test_a_search_runs_generation_by_generation_and_improves_on_its_seeds():
    settings = EvolutionSettings(population=16, iterations=8, mutations=4, crossovers=4, parents=8, seed=3)
    evo = Evolution.start(SPACE, settings, seeds())
    assert [evo.candidates[g].origin for g in evo.queue[:3]] == ["PI", "NTK", "YaRN"]
    handed = run(evo)
    assert len(handed) == 16 + 8 * 8 == len(set(handed))  # nothing evaluated twice
    assert len(evo.curve) == 9 and all(a >= b for a, b in zip(evo.curve, evo.curve[1:]))
    seed_best = min(fitness(SPACE, SPACE.genome(f)) for f in seeds().values())
    assert evo.best().ppl < seed_best and evo.best().ppl == evo.curve[-1]
    assert len(evo.population) == 8 + 8 and evo.ask() == FINISHED


def test_the_next_generation_waits_for_every_result_and_failures_rank_last():
    evo = Evolution.start(SPACE, EvolutionSettings(population=3, iterations=1, mutations=1, crossovers=1,
                                                   parents=2), seeds())
    first = [evo.ask() for _ in range(3)]
    assert evo.ask() is None  # pending results: wait
    assert not evo.tell(first[0].genome, float("nan"))
    assert not evo.tell(first[1].genome, 5.0)
    assert evo.tell(first[2].genome, 4.0)  # completes generation 0
    assert first[0].ppl == math.inf and evo.ranked() == [first[2].genome, first[1].genome, first[0].genome]
    children = [evo.ask(), evo.ask()]
    assert all(c.generation == 1 for c in children) and evo.population == [first[2].genome, first[1].genome]


def test_state_round_trips_through_json_and_resumes_the_same_search():
    settings = EvolutionSettings(population=8, iterations=4, mutations=3, crossovers=3, parents=4, seed=5)
    evo = Evolution.start(SPACE, settings, seeds())
    run(evo, stop_after=13)
    pending = evo.ask()  # handed out, not yet told: a trial still running when the search stopped
    restored = Evolution.from_state(json.loads(json.dumps(evo.state_dict())))
    assert restored.population == evo.population and restored.queue == evo.queue and restored.pending == [
        pending.genome] and restored.curve == evo.curve and restored.generation == evo.generation
    for e in (evo, restored):
        e.tell(pending.genome, fitness(SPACE, pending.genome))
    assert run(restored) == run(evo)  # same random stream, same candidates in the same order
    assert restored.best().genome == evo.best().genome


def test_bad_settings():
    with pytest.raises(SearchError, match="parents=9 cannot exceed population=8"):
        EvolutionSettings(population=8, parents=9)
    with pytest.raises(SearchError, match="critical_dim=8 must be in"):
        FactorSpace(size=8, upper=9.0, critical_dim=8)
    with pytest.raises(SearchError, match="no seed lies in the search space"):
        Evolution.start(FactorSpace(size=3, upper=2.0, lower=1.5, critical_dim=1, strict=True), EvolutionSettings(),
                        {"high": [1.0, 9.0, 9.0]})
