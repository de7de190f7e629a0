"""The typed configuration tree: YAML presets, `--set a.b=c` overrides, and validation with clear errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from endprompt_ray.errors import ConfigError
from endprompt_ray.method.anchoring import METHODS
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
    name: str = "endprompt-tiny"  # re-running with the same name resumes from its latest checkpoint
    output_dir: str = "outputs"
    storage_path: str | None = None  # Ray Train storage: local dir or s3://...; default <output_dir>/ray_results
    seed: int = 0
    force_resume: bool = False  # continue a checkpoint whose defining settings differ (resume.py lists them)


@dataclass
class ModelConfig:
    name_or_path: str = "tiny-base"  # 'tiny-base' (trained toy), 'tiny' (random), a model dir, a GGUF, or a hub id
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | s2_sdpa (LongLoRA S2-Attn, training only)
    s2_group_fraction: float = LONGLORA_GROUP_FRACTION  # s2_sdpa: group size / training length
    tiny: TinySpec = field(default_factory=TinySpec)


@dataclass
class MethodConfig:
    kind: MethodKind = "endprompt"
    physical_length: int = 256  # P
    target_length: int = 2048  # L
    prompt_source: Literal["template", "tail", "continuation"] = "template"  # anchoring.py: what each matches
    prompt_text: str = DEFAULT_PROMPT
    tail_length: int = 20  # b for the tail and continuation prompts (reference: 20)
    anchor: Literal["fixed", "random"] = "random"  # random: the better of the two on the toy base (README)
    anchor_offset: int = 0
    mask: Literal["none", "segment1", "segment2"] = "none"
    short_docs: Literal["pack", "skip"] = "pack"
    pose_chunks: int = 2


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # empty: the generated demo corpus
    format: Literal["auto", "jsonl", "parquet", "text", "hf_disk"] = "auto"
    text_field: str = "text"
    demo_documents: int = 3200  # one epoch of the default run (400 steps x 2 workers x 4)
    demo_corpus: Literal["retrieval", "reports"] = "retrieval"  # with no data.paths: toy-base episodes, or reports
    tokenizer_actors: int = 1
    batch_size: int = 64  # documents per tokenise/anchor batch
    cpus_per_task: float = 0.25  # Ray Data read/tokenise/anchor tasks; small so CPU training workers leave room
    shuffle: bool = True  # every epoch in its own seeded order (run.seed); false: corpus order (stream.py)


@dataclass
class TrainConfig:
    num_workers: Any = 2  # an int, or [min, max] for elastic training
    elastic_resize_interval_s: float = 60.0  # [min, max]: how often Ray Train looks for room to grow the group
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # CPU default fits 2 workers + data tasks on 2 cores; raise on GPU nodes
    deepspeed_config: str = "zero2.json"
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4  # the toy base's measured best (1e-3 and longer runs lose long-range retrieval)
    weight_decay: float = 0.0
    warmup_steps: int = 10
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warm-up; constant is the paper's
    min_lr_ratio: float = 0.0  # linear/cosine decay to this fraction of learning_rate at max_steps
    max_steps: int = 400
    checkpoint_every: int = 200
    report_every: int = 10  # steps per metrics report (losses and times are averaged over them)
    gradient_checkpointing: bool = True
    loss_chunk_size: int = 0  # > 0: loss over this many positions at a time, never the full logits (loss.py)
    sequence_parallel: int = 1  # N > 1: each sample's sequence split over N workers (Ulysses); DP = workers / N
    bf16: bool | None = None  # None: on with GPUs, off on CPU
    max_failures: int = 0
    lora: LoraSpec = field(default_factory=LoraSpec)  # LoRA / LongLoRA baseline (lora.py)


EvalSuite = Literal["passkey", "ppl", "ruler"]


@dataclass
class EvalConfig:
    enabled: bool = True
    suites: list[EvalSuite] = field(default_factory=lambda: ["passkey", "ppl"])
    compare: bool = True  # also score the base model and RoPE scaling alone: the before/after table
    lengths: list[int] = field(default_factory=list)  # empty: passkey/ppl at [window, L/2, L]; RULER at [L]
    tasks: list[str] = field(default_factory=list)  # RULER tasks; empty: every task that can run
    num_samples: int = 2  # RULER samples per task and length
    passkey_samples: int = 4  # per length and depth
    passkey_depths: list[float] = field(default_factory=list)  # empty: 0, 0.25, 0.5, 0.75, 1
    ppl_documents: str | None = None  # held-out text (txt/jsonl); None: generated demo documents, held-out seed
    ppl_num_documents: int = 8
    batch_size: int = 4
    essay_path: str | None = None
    squad_path: str | None = None
    hotpotqa_path: str | None = None


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db
    experiment: str = "endprompt-ray"
    log_model: bool = False  # also copy the exported weights into MLflow's artifact store


@dataclass
class ExtendConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    rope: RopeScaling = field(default_factory=RopeScaling)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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
        if m.physical_length < 2 or m.target_length < 2:
            raise ConfigError("method.physical_length and method.target_length must be at least 2")
        if m.kind != "full_length" and m.target_length <= m.physical_length:
            raise ConfigError(f"method.target_length={m.target_length} must exceed method.physical_length="
                              f"{m.physical_length} (L <= P leaves nothing to extend)")
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
            raise ConfigError("eval.suites is empty: name at least one of passkey, ppl, ruler, or set eval.enabled=false")
        for name in ("num_samples", "passkey_samples", "ppl_num_documents", "batch_size"):
            if getattr(e, name) < 1:
                raise ConfigError(f"eval.{name} must be at least 1")
        ds = self.deepspeed_path()
        if not ds.is_file():
            raise ConfigError(f"train.deepspeed_config={t.deepspeed_config!r}: file not found (looked at {ds}); use "
                              f"a shipped name ({', '.join(shipped(DEEPSPEED))}) or a path to your own DeepSpeed JSON")
        return self


def absolute_path(path: str) -> str:
    """A local path made absolute (the job runs elsewhere than it was launched); URLs unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())
