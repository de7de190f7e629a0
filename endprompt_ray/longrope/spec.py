"""The LongRoPE search's settings: a YAML file and `key=value` overrides, built by the config's typed builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from endprompt_ray.config.loader import apply_overrides, build_typed
from endprompt_ray.errors import ConfigError
from endprompt_ray.longrope.evolution import EvolutionSettings, SearchError


@dataclass
class RopeSearchSpec:
    name: str = field(default="longrope-search", metadata={
        "help": "Tune experiment, MLflow run and output folder <output_dir>/<name>/"})
    output_dir: str = field(default="outputs", metadata={"help": "where the search writes its results"})
    model: str = field(default="tiny-base", metadata={"help": "the model, as model.name_or_path"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "as model.attn_implementation"})
    target_length: int = field(default=2048, metadata={"help": "L: where long factors are scored"})
    original_max_position_embeddings: int | None = field(default=None, metadata={
        "help": "W, the window to extend; None: the model's"})
    factor: float | None = field(default=None, metadata={"help": "the scale s; None: ceil(L / W)"})
    attention_factor: float | None = field(default=None, metadata={
        "help": "cos/sin multiplier; None: sqrt(1 + ln s / ln W)"})
    replace_existing: bool = field(default=False, metadata={
        "help": "search a model that ships its own scaling (e.g. a longrope model again)"})
    factors: Literal["long", "short"] = field(default="long", metadata={
        "help": "which factor set to search; the other is held fixed"})
    factors_file: str | None = field(default=None, metadata={
        "help": "the fixed set (and one more seed), as rope.factors_file"})
    mode: Literal["longrope", "longrope2"] = field(default="longrope", metadata={
        "help": "longrope, or longrope2 (critical dimension, needle fitness)"})
    critical_dim: int | None = field(default=None, metadata={
        "help": "longrope2; None: ceil(log_base(W / 2 pi) * d / 2) - 1"})
    fitness: Literal["ppl", "needle"] | None = field(default=None, metadata={
        "help": "ppl or needle; None: ppl for longrope, needle for longrope2"})
    upper: float | None = field(default=None, metadata={
        "help": "largest factor; None: 1 + s (public code; the paper used 1.25 s)"})
    lower: float | None = field(default=None, metadata={
        "help": "smallest searched factor; None: 1, or L / W in longrope2 mode"})
    step: float = field(default=0.01, metadata={"help": "factor grid step"})
    population: int = field(default=16, metadata={"help": "candidates per generation (the paper: 64)"})
    iterations: int = field(default=8, metadata={"help": "generations (the paper: 40)"})
    mutations: int = field(default=4, metadata={"help": "children by mutation per generation (the paper: 16)"})
    crossovers: int = field(default=4, metadata={"help": "children by crossover per generation (the paper: 16)"})
    parents: int = field(default=8, metadata={"help": "the best candidates children are bred from (the paper: 32)"})
    mutation_prob: float = field(default=0.3, metadata={"help": "chance that a mutation changes each factor"})
    max_crossover_tries: int = field(default=20, metadata={
        "help": "tries for a crossover that gives a new valid candidate"})
    documents: str | None = field(default=None, metadata={
        "help": "held-out long text (.txt/.jsonl or a folder); None: demo-corpus reports"})
    text_field: str = field(default="text", metadata={"help": "JSON field holding the document"})
    num_documents: int = field(default=4, metadata={"help": "documents scored per candidate"})
    needle_samples: int = field(default=1, metadata={"help": "needle fitness: passkey samples per depth"})
    batch_size: int = field(default=1, metadata={"help": "scoring batch size"})
    evaluators: int = field(default=1, metadata={"help": "fitness actors, the trials run at once"})
    cpus_per_evaluator: float = field(default=1.0, metadata={"help": "CPUs per fitness actor"})
    gpus_per_evaluator: float = field(default=0.0, metadata={"help": "GPUs per fitness actor (1 on GPU clusters)"})
    seed: int = field(default=0, metadata={"help": "the search's seed"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "any MLflow URI; None: sqlite:///<output_dir>/mlflow.db"})
    experiment: str = field(default="endprompt-ray", metadata={"help": "MLflow experiment"})

    def validate(self) -> "RopeSearchSpec":
        for key in ("evaluators", "num_documents", "needle_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        local = self.documents is not None and "://" not in self.documents
        if local and not Path(self.documents).expanduser().exists():
            raise ConfigError(f"documents={self.documents!r} does not exist; give a .txt/.jsonl file or a folder of "
                              "long held-out text, or leave it unset for the demo reports")
        if self.cpus_per_evaluator <= 0 and self.gpus_per_evaluator <= 0:
            raise ConfigError("an evaluator needs cpus_per_evaluator > 0 or gpus_per_evaluator > 0")
        self.settings()  # checks the evolution settings
        return self

    def settings(self) -> EvolutionSettings:
        try:
            return EvolutionSettings(self.population, self.iterations, self.mutations, self.crossovers, self.parents,
                                     self.mutation_prob, self.max_crossover_tries, self.seed)
        except SearchError as err:
            raise ConfigError(str(err)) from err

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser().resolve() / self.name

    @property
    def uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{Path(self.output_dir).expanduser().resolve() / 'mlflow.db'}"


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> RopeSearchSpec:
    """Defaults <- YAML file <- `key=value` overrides, strictly typed like the main config."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"search file {p} not found; the shipped ones are in endprompt_ray/presets/rope_search/")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"search file {p} must hold a mapping of settings (model:, target_length: ...)")
    return build_typed(RopeSearchSpec, apply_overrides(tree, overrides or [], "population=64")).validate()
