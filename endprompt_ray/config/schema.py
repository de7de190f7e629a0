"""The typed configuration tree: YAML presets, `--set a.b=c` overrides, and validation with clear errors."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from endprompt_ray.errors import ConfigError
from endprompt_ray.method.anchoring import METHODS, AnchorError, AnchorSettings
from endprompt_ray.models.attention import uses_flash_path
from endprompt_ray.models.loading import TinySpec
from endprompt_ray.models.lora import LoraSpec
from endprompt_ray.models.s2_attention import LONGLORA_GROUP_FRACTION, check_s2_attention
from endprompt_ray.resources import DEEPSPEED, ResourceNotFoundError, find_deepspeed, shipped
from endprompt_ray.rope.scaling import RopeScaling

DEFAULT_PROMPT = "This is the end of text, please pay attention here"
MethodKind = Literal[METHODS + ("rope_only",)]  # rope_only: scale RoPE, export without training


@dataclass
class RunConfig:
    name: str = field(default="endprompt-tiny", metadata={
        "help": "run identity (Ray Train run, checkpoint folder, MLflow run); the same name resumes its latest "
                "checkpoint"})
    output_dir: str = field(default="outputs", metadata={
        "help": "driver-side outputs: <name>/config.yaml, <name>/model/, mlflow.db"})
    storage_path: str | None = field(default=None, metadata={
        "help": "Ray Train checkpoints: a local path (one node or a shared mount) or s3://...; None: "
                "<output_dir>/ray_results"})
    seed: int = field(default=0, metadata={"help": "seeds the model init, the stream order and the anchors"})
    force_resume: bool = field(default=False, metadata={
        "help": "continue a checkpoint whose defining settings differ (a resume otherwise lists them and stops)"})


@dataclass
class ModelConfig:
    name_or_path: str = field(default="tiny-base", metadata={
        "help": "tiny-base (the trained toy base), tiny (random), a model directory, a GGUF file, or a hub id"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "sdpa, eager, flash_attention_2/_3 (GPU), a hub kernel, or s2_sdpa (LongLoRA S2-Attn, training "
                "only)"})
    s2_group_fraction: float = field(default=LONGLORA_GROUP_FRACTION, metadata={
        "help": "s2_sdpa: LongLoRA's group size as a fraction of the training length"})
    tiny: TinySpec = field(default_factory=TinySpec, metadata={"help": "the local tiny and tiny-base models' shape"})


def _platform_default(name: str, default: Any):
    """An AnchorSettings field, same meaning and help, with this platform's default instead of the reference's."""
    return field(default=default, metadata=AnchorSettings.__dataclass_fields__[name].metadata)


@dataclass(frozen=True)  # frozen as AnchorSettings, which defines the anchoring fields (method/anchoring.py)
class MethodConfig(AnchorSettings):
    """The method section: the anchoring settings, defaults sized for a CPU run, plus the kind and template text."""

    physical_length: int = _platform_default("physical_length", 256)
    target_length: int = _platform_default("target_length", 2048)
    anchor: Literal["fixed", "random"] = _platform_default("anchor", "random")  # the better one on the toy base
    kind: MethodKind = field(default="endprompt", metadata={
        "help": "endprompt, contiguous, full_length, pose, or rope_only (scale RoPE, export without training)"})
    prompt_text: str = field(default=DEFAULT_PROMPT, metadata={"help": "the terminal prompt of prompt_source=template"})


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list, metadata={
        "help": "files or folders of .jsonl(.zst/.gz), .parquet, .txt, an HF dataset on disk, hf://datasets/..., "
                "s3:// or gs://; empty: the generated demo corpus"})
    format: Literal["auto", "jsonl", "parquet", "text", "hf_disk"] = field(default="auto", metadata={
        "help": "how to read data.paths; auto: from the file names"})
    text_field: str = field(default="text", metadata={"help": "JSON / parquet / HF column holding the document"})
    demo_documents: int = field(default=3200, metadata={
        "help": "demo corpus size; 3200: one epoch of the default run (400 steps x 2 workers x 4)"})
    demo_corpus: Literal["retrieval", "recall", "reports"] = field(default="retrieval", metadata={
        "help": "with no data.paths: the toy base's retrieval episodes (its own formats); recall: facts stated and "
                "recalled across up to 2048 tokens, no evaluation format (for tiny-base-recall); or reports"})
    tokenizer_actors: int = field(default=1, metadata={"help": "tokenizer actor-pool size"})
    batch_size: int = field(default=64, metadata={"help": "documents per tokenise/anchor batch"})
    cpus_per_task: float = field(default=0.25, metadata={
        "help": "CPUs of each Ray Data read/tokenise/anchor task; small so CPU training workers keep room"})
    shuffle: bool = field(default=True, metadata={
        "help": "every epoch in its own order seeded by run.seed; false: corpus order"})


@dataclass
class TrainConfig:
    num_workers: Any = field(default=2, metadata={
        "help": "an int, or [min, max] for elastic training (min must divide the global batch)"})
    elastic_resize_interval_s: float = field(default=60.0, metadata={
        "help": "with [min, max]: seconds between Ray Train's checks for room to resize"})
    use_gpu: bool = field(default=False, metadata={"help": "GPU workers (nccl, bf16); false: CPU (gloo, fp32)"})
    cpus_per_worker: float = field(default=0.5, metadata={
        "help": "CPUs per training worker; 0.5 fits 2 workers and the data tasks on 2 cores"})
    deepspeed_config: str = field(default="zero2.json", metadata={
        "help": "DeepSpeed JSON: a shipped name (zero2.json, zero3.json, zero3_offload.json) or a path"})
    micro_batch_size: int = field(default=4, metadata={"help": "samples per worker per micro-step"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "global batch = micro x accumulation x workers (the largest of a range), kept for the run's life"})
    learning_rate: float = field(default=2e-4, metadata={
        "help": "peak rate; 2e-4 is the toy base's measured best"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps"})
    lr_schedule: Literal["constant", "linear", "cosine"] = field(default="constant", metadata={
        "help": "after warm-up: constant (the paper's), or linear / cosine decay to min_lr_ratio at max_steps"})
    min_lr_ratio: float = field(default=0.0, metadata={
        "help": "linear/cosine: the final rate as a fraction of learning_rate"})
    max_steps: int = field(default=400, metadata={"help": "optimizer steps"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints"})
    report_every: int = field(default=10, metadata={
        "help": "steps per metrics report (each a barrier; losses and times averaged over them)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "non-reentrant activation checkpointing"})
    loss_chunk_size: int = field(default=0, metadata={
        "help": "> 0: the loss over this many positions at a time, full logits never at once; 0: all at once"})
    sequence_parallel: int = field(default=1, metadata={
        "help": "N > 1: each sample's sequence split over N workers (Ulysses); data parallel = workers / N"})
    bf16: bool | None = field(default=None, metadata={"help": "None: on with GPUs, off on CPU"})
    max_failures: int = field(default=0, metadata={
        "help": "worker-group restarts from the latest checkpoint after a worker or node dies"})
    lora: LoraSpec = field(default_factory=LoraSpec, metadata={"help": "the LoRA / LongLoRA baseline"})


EvalSuite = Literal["passkey", "report_code", "locker", "ticket_qa", "ppl", "ruler"]


@dataclass
class EvalConfig:
    enabled: bool = field(default=True, metadata={"help": "evaluate after training"})
    suites: list[EvalSuite] = field(default_factory=lambda: ["passkey", "locker", "ticket_qa", "ppl"], metadata={
        "help": "passkey, report_code, locker and ticket_qa (held-out retrieval formats), ppl (perplexity by "
                "length), ruler"})
    compare: bool = field(default=True, metadata={
        "help": "also score the base model and RoPE scaling alone: the before/after table"})
    lengths: list[int] = field(default_factory=list, metadata={
        "help": "passkey and perplexity lengths; empty: [window, L/2, L] (RULER: [L])"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "RULER tasks; empty: every task that can run"})
    num_samples: int = field(default=2, metadata={"help": "RULER samples per task and length"})
    passkey_samples: int = field(default=8, metadata={
        "help": "samples per length and depth of each retrieval probe (passkey, report_code, locker, ticket_qa)"})
    passkey_depths: list[float] = field(default_factory=list, metadata={
        "help": "needle depths; empty: 0, 0.25, 0.5, 0.75, 1"})
    ppl_documents: str | None = field(default=None, metadata={
        "help": "held-out text (.txt/.jsonl) for perplexity; None: generated held-out reports"})
    ppl_num_documents: int = field(default=8, metadata={"help": "documents scored for perplexity"})
    batch_size: int = field(default=4, metadata={"help": "evaluation batch size"})
    essay_path: str | None = field(default=None, metadata={"help": "RULER: a local file of essays for haystacks"})
    squad_path: str | None = field(default=None, metadata={"help": "RULER: a local SQuAD file for the QA task"})
    hotpotqa_path: str | None = field(default=None, metadata={
        "help": "RULER: a local HotpotQA file for the QA task"})


@dataclass
class TrackingConfig:
    tracking_uri: str | None = field(default=None, metadata={
        "help": "any MLflow URI; None: sqlite:///<output_dir>/mlflow.db"})
    experiment: str = field(default="endprompt-ray", metadata={"help": "MLflow experiment"})
    log_model: bool = field(default=False, metadata={
        "help": "also copy the exported weights into MLflow's artifact store"})


@dataclass
class ExtendConfig:
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run identity, outputs, resuming"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the base model"})
    method: MethodConfig = field(default_factory=MethodConfig, metadata={"help": "how training samples are built"})
    rope: RopeScaling = field(default_factory=RopeScaling, metadata={"help": "how RoPE is extended"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the training corpus"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Ray Train and DeepSpeed"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation after training"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "MLflow"})

    # ---- derived paths -------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir).expanduser().resolve() / self.run.name

    @property
    def train_steps(self) -> int:
        """Optimizer steps to run: rope_only scales RoPE and exports without training."""
        return 0 if self.method.kind == "rope_only" else self.train.max_steps

    @property
    def worker_range(self) -> tuple[int, int] | None:
        """(min, max) of an elastic train.num_workers; None for a fixed count."""
        workers = self.train.num_workers
        return tuple(workers) if isinstance(workers, (list, tuple)) else None

    @property
    def max_workers(self) -> int:
        return self.worker_range[1] if self.worker_range else self.train.num_workers

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step: micro-batch x accumulation x the (largest) worker count. A run keeps it for
        its whole life, whatever the number of workers it resumes or resizes to."""
        return self.train.micro_batch_size * self.train.gradient_accumulation_steps * self.max_workers

    def uneven_worker_counts(self) -> list[int]:
        """Counts of a [min, max] range that cannot keep the global batch: a resize to one of them fails to start."""
        if self.worker_range is None:
            return []
        low, high = self.worker_range
        return [n for n in range(low, high) if self.global_batch % (self.train.micro_batch_size * n)]

    @property
    def storage_path(self) -> str:
        if self.run.storage_path:
            return absolute_path(self.run.storage_path)
        return str(Path(absolute_path(self.run.output_dir)) / "ray_results")

    @property
    def tracking_uri(self) -> str:
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{Path(self.run.output_dir).expanduser().resolve() / 'mlflow.db'}"

    def deepspeed_path(self) -> Path:
        try:  # a file, or the name of a shipped one (endprompt_ray/presets/deepspeed/)
            return find_deepspeed(self.train.deepspeed_config)
        except ResourceNotFoundError:
            return Path(self.train.deepspeed_config).expanduser()  # validate() says what to give instead

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> values, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

        walk("", self.to_dict())
        return out

    # ---- validation ------------------------------------------------------------------------------------------------
    def validate(self) -> "ExtendConfig":
        m, t = self.method, self.train
        try:
            m.check_lengths(m.kind, "method.")
        except AnchorError as err:
            raise ConfigError(str(err)) from None
        workers = t.num_workers
        if isinstance(workers, (list, tuple)):
            if len(workers) != 2 or not all(isinstance(w, int) for w in workers) or not 1 <= workers[0] <= workers[1]:
                raise ConfigError(f"train.num_workers={workers!r}: give an int or a [min, max] pair with 1 <= min <= max")
        elif not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"train.num_workers={workers!r} must be a positive int or a [min, max] pair")
        for name in ("micro_batch_size", "gradient_accumulation_steps", "checkpoint_every", "report_every"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1")
        if self.worker_range:
            if workers[0] in self.uneven_worker_counts():
                raise ConfigError(
                    f"train.num_workers={list(workers)}: the global batch of {self.global_batch} samples (micro-batch "
                    f"{t.micro_batch_size} x accumulation {t.gradient_accumulation_steps} x {workers[1]} workers) "
                    f"cannot be split over {workers[0]} workers: pick a minimum whose product with the micro-batch "
                    f"divides it, or raise train.gradient_accumulation_steps")
            if t.elastic_resize_interval_s < 0:
                raise ConfigError("train.elastic_resize_interval_s must be >= 0")
        if t.max_steps < 0:
            raise ConfigError("train.max_steps must be >= 0")
        if t.sequence_parallel < 1:
            raise ConfigError(f"train.sequence_parallel={t.sequence_parallel} must be at least 1 (1: off)")
        if t.sequence_parallel > 1:
            if self.worker_range:
                raise ConfigError(f"train.sequence_parallel={t.sequence_parallel} needs a fixed train.num_workers (an "
                                  f"elastic {list(workers)} may resize to a count it does not divide)")
            if workers % t.sequence_parallel:
                raise ConfigError(f"train.sequence_parallel={t.sequence_parallel} must divide train.num_workers="
                                  f"{workers} (each group of that many workers trains one sample's sequence)")
            length_field = "target_length" if m.kind == "full_length" else "physical_length"
            if getattr(m, length_field) % t.sequence_parallel:
                raise ConfigError(f"train.sequence_parallel={t.sequence_parallel} must divide the training sequence of "
                                  f"{getattr(m, length_field)} tokens (method.{length_field})")
            attn = self.model.attn_implementation
            if attn != "sdpa" and not uses_flash_path(attn):
                raise ConfigError(f"model.attn_implementation={attn!r} cannot run with train.sequence_parallel="
                                  f"{t.sequence_parallel}: use sdpa or a flash-attention implementation")
        if t.warmup_steps < 0 or t.loss_chunk_size < 0:
            raise ConfigError("train.warmup_steps and train.loss_chunk_size must be >= 0 (0: no warm-up / no chunking)")
        try:
            t.lora.validate("train.lora")
            check_s2_attention(self.model.attn_implementation, m.kind,
                               m.target_length if m.kind == "full_length" else m.physical_length,
                               self.model.s2_group_fraction)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not 0.0 <= t.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1] (a fraction of learning_rate)")
        e = self.eval
        if e.enabled and not e.suites:
            raise ConfigError(f"eval.suites is empty: name at least one of {', '.join(get_args(EvalSuite))}, or set "
                              "eval.enabled=false")
        for name in ("num_samples", "passkey_samples", "ppl_num_documents", "batch_size"):
            if getattr(e, name) < 1:
                raise ConfigError(f"eval.{name} must be at least 1")
        ds = self.deepspeed_path()
        if not ds.is_file():
            raise ConfigError(f"train.deepspeed_config={t.deepspeed_config!r}: file not found (looked at {ds}); use "
                              f"a shipped name ({', '.join(shipped(DEEPSPEED))}) or a path to your own DeepSpeed JSON")
        return self


@dataclass(frozen=True)
class FieldDoc:
    """One leaf setting as `--help` shows it."""
    key: str  # dotted, e.g. method.target_length
    type: str  # readable, e.g. "int", "str | None", "fixed | random"
    default: str  # repr-like, e.g. "'tiny-base'", "None", "['passkey', 'ppl']"
    help: str


def config_fields(cls=ExtendConfig, prefix: str = "") -> list[FieldDoc]:
    """Every leaf field of the dataclass tree under `cls`, in declaration order, nested sections walked."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out.extend(config_fields(hint, f"{key}."))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "(required)" if default is dataclasses.MISSING else repr(default)
        out.append(FieldDoc(key, type_name(hint), shown, f.metadata.get("help", "")))
    return out


def type_name(hint: Any) -> str:
    """A type as a reader writes it: int, list[float], str | None, and a Literal as its choices (fixed | random)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if hint is Any:
        return "any"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def absolute_path(path: str) -> str:
    """A local path made absolute (the job runs elsewhere than it was launched); URLs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())
