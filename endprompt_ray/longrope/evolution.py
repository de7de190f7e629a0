"""LongRoPE's evolutionary search over per-frequency RoPE factors: pure functions and one state machine, no Ray.

What follows the paper (arXiv 2402.13753) and its public code (microsoft/LongRoPE, evolution/):
- A candidate is a list of factors, one per rotary frequency, on a grid of `step` (0.01), between `lower` (1) and
  `upper` (public code: 1 + s; paper: 1.25 s), non-decreasing from the highest frequency to the lowest.
- The initial population is the seeds (the paper: PI, NTK and YaRN factors; the public code: YaRN's) and mutations of
  them. Each iteration keeps the best `parents` (32) of the population, adds `mutations` (16) mutated parents and
  `crossovers` (16) children of two distinct parents (a crossover that finds nothing new mutates its first parent
  instead), and has them all evaluated. 64 candidates and 40 iterations make about 1300 evaluations.
- Mutation visits every factor in order and, with probability 0.3, redraws it uniformly from the grid values between
  its current neighbours, so the list stays monotone by construction; it repeats until the candidate has never been
  proposed before.
- Crossover starts from the first parent and, visiting factors in order with probability 0.3, copies the second
  parent's factor with probability 0.5; the first change that yields a new, monotone candidate is kept (20 tries).
- Candidates already proposed are rejected, so nothing is evaluated twice.
- LongRoPE2 (arXiv 2502.20082): only factors from the critical dimension cd = ceil(log_base(W / 2 pi) * d / 2) - 1
  on are searched (the frequencies after cd have wavelengths 2 pi base^(2i/d) of at least the original window W,
  cd's is shorter); they are at least L / W and strictly increasing; the factors below follow NTK from the critical
  one, lambda_i = lambda_cd^(i / cd).
Deviation: the public code builds grid ranges with floating-point arange; here factors are whole numbers of steps, so
being on the grid and being equal are exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

FINISHED = "FINISHED"


class SearchError(ValueError):
    """Search settings that cannot work."""


def critical_dim(rotary_dim: int, base: float, window: int) -> int:
    """LongRoPE2's critical dimension: the frequencies after it do not complete a period within the window."""
    cd = math.ceil(math.log(window / (2 * math.pi), base) * rotary_dim / 2) - 1
    return max(0, min(rotary_dim // 2 - 1, cd))


@dataclass(frozen=True)
class FactorSpace:
    """The candidates: `size` factors; those from `critical_dim` on are searched, in whole steps of `step`."""
    size: int
    upper: float
    lower: float = 1.0
    step: float = 0.01
    critical_dim: int = 0  # LongRoPE2: > 0, the factors below it follow NTK from the critical one
    strict: bool = False  # LongRoPE2: strictly increasing

    def __post_init__(self):
        if not 0 <= self.critical_dim < self.size:
            raise SearchError(f"critical_dim={self.critical_dim} must be in [0, {self.size - 1}] ({self.size} factors)")
        if not 1 <= self.lower < self.upper or self.step <= 0:
            raise SearchError(f"need 1 <= lower ({self.lower:g}) < upper ({self.upper:g}) and step > 0 ({self.step:g})")

    @property
    def lo(self) -> int:
        return math.ceil(self.lower / self.step - 1e-9)

    @property
    def hi(self) -> int:
        return math.floor(self.upper / self.step + 1e-9)

    @property
    def genes(self) -> int:
        return self.size - self.critical_dim

    def factors(self, genome: Sequence[int]) -> np.ndarray:
        searched = np.round(np.asarray(genome, dtype=np.float64) * self.step, 10)
        cd = self.critical_dim
        return np.concatenate([searched[0] ** (np.arange(cd) / cd), searched]) if cd else searched

    def valid(self, genome: Sequence[int]) -> bool:
        g = np.asarray(genome)
        steps = np.diff(g)
        return (len(g) == self.genes and bool(np.all((g >= self.lo) & (g <= self.hi)))
                and bool(np.all(steps > 0) if self.strict else np.all(steps >= 0)))

    def genome(self, factors: Sequence[float]) -> tuple[int, ...] | None:
        """The nearest candidate to `factors` (a seed): rounded to the grid, clipped to the bounds, lifted to be
        strictly increasing in LongRoPE2 mode; None when no candidate is near."""
        if len(factors) != self.size:
            raise SearchError(f"a seed has {len(factors)} factors, the space {self.size}")
        g = np.clip(np.rint(np.asarray(factors[self.critical_dim:], dtype=np.float64) / self.step), self.lo, self.hi)
        g = np.maximum.accumulate(g.astype(int))
        if self.strict:  # each at least one step above the one before
            g = np.maximum.accumulate(g - np.arange(len(g))) + np.arange(len(g))
        out = tuple(int(v) for v in g)
        return out if self.valid(out) else None


def mutate(space: FactorSpace, genome: Sequence[int], rng: np.random.Generator, seen, prob: float = 0.3,
           attempts: int = 1000) -> tuple[int, ...] | None:
    """A new candidate: factors redrawn with probability `prob` between their neighbours until it is unseen."""
    child = list(genome)
    gap = 1 if space.strict else 0
    last = len(child) - 1
    for _ in range(attempts):
        for j in range(len(child)):
            if rng.random() < prob:
                lo = child[j - 1] + gap if j else space.lo
                hi = child[j + 1] - gap if j < last else space.hi
                if lo <= hi:
                    child[j] = int(rng.integers(lo, hi + 1))
        out = tuple(child)
        if out not in seen and space.valid(out):
            return out
    return None  # the neighbourhood is exhausted


def crossover(space: FactorSpace, first: Sequence[int], second: Sequence[int], rng: np.random.Generator, seen,
              prob: float = 0.3, tries: int = 20) -> tuple[int, ...] | None:
    """A new candidate from `first` with some of `second`'s factors, or None (identical parents, or nothing new)."""
    if tuple(first) == tuple(second):
        return None
    child = list(first)
    for _ in range(tries):
        for j in range(len(child)):
            if rng.random() < prob:
                if rng.random() < 0.5:
                    child[j] = second[j]
                out = tuple(child)
                if out not in seen and space.valid(out):
                    return out
    return None


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 64
    iterations: int = 40
    mutations: int = 16
    crossovers: int = 16
    parents: int = 32
    mutation_prob: float = 0.3
    max_crossover_tries: int = 20
    seed: int = 0

    def __post_init__(self):
        if min(self.population, self.parents) < 1 or min(self.iterations, self.mutations, self.crossovers) < 0:
            raise SearchError("population and parents must be >= 1; iterations, mutations, crossovers >= 0")
        if self.parents > self.population:
            raise SearchError(f"parents={self.parents} cannot exceed population={self.population} (public code: "
                              "32 of 64)")
        if not 0 < self.mutation_prob <= 1:
            raise SearchError(f"mutation_prob={self.mutation_prob} must be in (0, 1]")


@dataclass
class Candidate:
    genome: tuple[int, ...]
    generation: int
    origin: str  # a seed's name, "mutation" or "crossover"
    ppl: float | None = None  # None while pending; inf when its evaluation failed


@dataclass
class Evolution:
    """The search as a state machine: `ask` hands out candidates generation by generation, `tell` takes a result.

    A generation is bred only when every candidate of the previous one has a result (as the public code does)."""
    space: FactorSpace
    settings: EvolutionSettings
    candidates: dict = field(default_factory=dict)  # genome -> Candidate: every candidate ever proposed
    population: list = field(default_factory=list)  # genomes evaluated in the current population
    queue: list = field(default_factory=list)  # genomes proposed, not handed out yet
    pending: list = field(default_factory=list)  # genomes handed out, no result yet
    generation: int = 0
    curve: list = field(default_factory=list)  # best ppl so far after each finished generation
    exhausted: bool = False  # a generation bred nothing new: the space around the parents is used up
    rng: np.random.Generator = None

    @classmethod
    def start(cls, space: FactorSpace, settings: EvolutionSettings, seeds: Mapping[str, Sequence[float]]):
        """Generation 0: the seeds on the grid (duplicates dropped), then mutations of them in turn."""
        evo = cls(space, settings, rng=np.random.default_rng(settings.seed))
        parents = []
        for name, factors in seeds.items():
            genome = space.genome(factors)
            if genome is not None and genome not in evo.candidates and len(evo.queue) < settings.population:
                evo._propose(genome, name)
                parents.append(genome)
        if not parents:
            raise SearchError("no seed lies in the search space; widen upper/lower or check the seeds' length")
        for i in range(settings.population - len(evo.queue)):
            child = mutate(space, parents[i % len(parents)], evo.rng, evo.candidates, settings.mutation_prob)
            if child is not None:
                evo._propose(child, "mutation")
        return evo

    def _propose(self, genome: tuple[int, ...], origin: str) -> None:
        self.candidates[genome] = Candidate(genome, self.generation, origin)
        self.queue.append(genome)

    @property
    def finished(self) -> bool:
        done = self.generation >= self.settings.iterations or self.exhausted
        return done and not self.queue and not self.pending

    def ask(self) -> Candidate | str | None:
        """The next candidate to evaluate; None: wait for results; FINISHED: the search is over."""
        if not self.queue and not self.pending and not self.finished:
            self._breed()
            self.exhausted = not self.queue
        if self.queue:
            genome = self.queue.pop(0)
            self.pending.append(genome)
            return self.candidates[genome]
        return None if self.pending else FINISHED

    def tell(self, genome: Sequence[int], ppl: float) -> bool:
        """Record a result (NaN and failures count as inf); True when it completes a generation."""
        genome = tuple(genome)
        self.pending.remove(genome)
        ppl = float(ppl) if ppl is not None and math.isfinite(ppl) else math.inf
        self.candidates[genome].ppl = ppl
        self.population.append(genome)
        if self.queue or self.pending:
            return False
        self.curve.append(self.best().ppl)
        return True

    def ranked(self, k: int | None = None) -> list[tuple[int, ...]]:
        """The population's genomes, lowest ppl first (ties keep their order)."""
        return sorted(self.population, key=lambda g: self.candidates[g].ppl)[:k]

    def best(self) -> Candidate:
        scored = [c for c in self.candidates.values() if c.ppl is not None]
        return min(scored, key=lambda c: c.ppl)

    def _breed(self) -> None:
        s, rng = self.settings, self.rng
        parents = self.ranked(s.parents)
        self.population = list(parents)
        self.generation += 1
        for _ in range(s.mutations):
            child = mutate(self.space, parents[rng.integers(len(parents))], rng, self.candidates, s.mutation_prob)
            if child is not None:
                self._propose(child, "mutation")
        for _ in range(s.crossovers):
            if len(parents) < 2:
                i = j = 0
            else:
                i, j = sorted(rng.choice(len(parents), 2, replace=False))
            child = crossover(self.space, parents[i], parents[j], rng, self.candidates, s.mutation_prob,
                              s.max_crossover_tries)
            origin = "crossover"
            if child is None:
                child, origin = mutate(self.space, parents[i], rng, self.candidates, s.mutation_prob), "mutation"
            if child is not None:
                self._propose(child, origin)

    # ---- state for resuming ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"space": asdict(self.space), "settings": asdict(self.settings), "generation": self.generation,
                "candidates": [[list(c.genome), c.generation, c.origin, c.ppl] for c in self.candidates.values()],
                "population": [list(g) for g in self.population], "queue": [list(g) for g in self.queue],
                "pending": [list(g) for g in self.pending], "curve": list(self.curve), "exhausted": self.exhausted,
                "rng": self.rng.bit_generator.state}

    @classmethod
    def from_state(cls, state: dict) -> "Evolution":
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        evo = cls(FactorSpace(**state["space"]), EvolutionSettings(**state["settings"]), rng=rng,
                  generation=state["generation"], curve=list(state["curve"]), exhausted=state["exhausted"])
        for genome, generation, origin, ppl in state["candidates"]:
            evo.candidates[tuple(genome)] = Candidate(tuple(genome), generation, origin, ppl)
        for name in ("population", "queue", "pending"):
            setattr(evo, name, [tuple(g) for g in state[name]])
        return evo
