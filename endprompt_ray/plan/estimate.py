"""Per-GPU peak memory and step time of one training step, from the model's shape and the run's settings.

Model states (weights, gradients, optimizer) come from DeepSpeed's own ZeRO estimators. Everything else counts the
tensors autograd keeps for backward in the Hugging Face Llama decoder layer as this project runs it
(training/forward.py, training/loss.py), at the per-rank sequence length L / N under N-way Ulysses sequence
parallelism: the all-to-all hands each rank the whole sequence for a_heads / N heads, so attention tensors keep
their size while everything else shrinks by N. Per layer and token, with e bytes per activation element (2 in bf16):

    2 RMSNorms       2 x (4 + 2e) h  the fp32 upcast, the normalised product, the output (the next linear's input)
    q, k, v          e (q + 2 kv)    after RoPE, kept by the attention kernel (kv heads replicated when N > kv heads)
    attention out    e q (+ e q)     the kernel's output (and SDPA's transposed copy, the o_proj input)
    MLP              4 e i           gate, up, SiLU(gate), SiLU(gate) * up
With gradient checkpointing only each layer's input (e h) stays, plus one layer recomputed during its backward.
The loss holds, per token, V logits in fp32 three times over in its backward (log-softmax output, its gradient and
the gradient of the logits): 12 V bytes, for all tokens or for one train.loss_chunk_size chunk. The peak is the
larger of the loss's backward and a layer's backward (estimate()): the logits are freed before any layer's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from endprompt_ray.config.schema import ExtendConfig
from endprompt_ray.errors import ConfigError
from endprompt_ray.models.attention import uses_flash_path
from endprompt_ray.plan.architectures import Architecture
from endprompt_ray.plan.gpus import GIB, GpuSpec

ATTENTIONS = ("sdpa", "flash_attention_2", "eager")
LOGIT_BYTES_PER_VOCAB = 12  # three fp32 vocab-wide tensors alive at once in the cross-entropy backward
CUDA_CONTEXT_BYTES = GIB  # CUDA context, cuBLAS and NCCL workspaces: outside torch's allocator
FRAGMENTATION = 0.05  # the caching allocator's slack on the step's transients, with expandable_segments:True
DEFAULT_MFU = 0.4


@dataclass(frozen=True)
class Workload:
    sequence_length: int  # tokens per sample (the whole sample; each SP rank holds sequence_length / N)
    micro_batch: int = 1
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = True
    loss_chunk_size: int = 0
    attention: str = "sdpa"
    sequence_parallel: int = 1
    gpus_per_node: int = 1
    nodes: int = 1
    bf16: bool = True
    gradient_accumulation_steps: int = 1

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def local_tokens(self) -> int:
        """Tokens each rank holds outside attention: its shard of every sample in the micro-batch."""
        return self.micro_batch * self.sequence_length // self.sequence_parallel

    @property
    def element_bytes(self) -> int:
        return 2 if self.bf16 else 4

    def check(self, arch: Architecture) -> None:
        n = self.sequence_parallel
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention={self.attention!r} must be one of {ATTENTIONS}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"ZeRO stage {self.zero_stage} must be 0, 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("parameter offload needs ZeRO stage 3 (zero_optimization.offload_param)")
        problems = [f"{what} ({value})" for what, value in (
            ("the number of GPUs", self.world_size), ("the attention heads", arch.num_heads),
            ("the sequence length", self.sequence_length)) if value % n]
        if n < 1 or problems:
            raise ConfigError(f"sequence parallel degree {n} must be >= 1 and divide {', '.join(problems)}; pick "
                              "a divisor of all three")

    @classmethod
    def from_config(cls, cfg: ExtendConfig, gpus_per_node: int | None = None, nodes: int = 1,
                    sequence_parallel: int | None = None) -> Workload:
        """What `cfg` trains: per-sample tokens are L for full_length and P for every other method."""
        t, m = cfg.train, cfg.method
        zero = json.loads(cfg.deepspeed_path().read_text()).get("zero_optimization", {})
        offloaded = {key: zero.get(key, {}).get("device", "none") in ("cpu", "nvme")
                     for key in ("offload_optimizer", "offload_param")}
        attention = cfg.model.attn_implementation
        attention = "flash_attention_2" if uses_flash_path(attention) else "eager" if attention == "eager" else "sdpa"
        return cls(sequence_length=m.target_length if m.kind == "full_length" else m.physical_length,
                   micro_batch=t.micro_batch_size, zero_stage=int(zero.get("stage", 0)),
                   offload_optimizer=offloaded["offload_optimizer"], offload_params=offloaded["offload_param"],
                   gradient_checkpointing=t.gradient_checkpointing, loss_chunk_size=t.loss_chunk_size,
                   attention=attention,
                   sequence_parallel=sequence_parallel or getattr(t, "sequence_parallel", 1) or 1,
                   gpus_per_node=gpus_per_node or max(1, cfg.max_workers // nodes), nodes=nodes,
                   bf16=t.use_gpu if t.bf16 is None else t.bf16,
                   gradient_accumulation_steps=t.gradient_accumulation_steps)


@dataclass
class Estimate:
    workload: Workload
    gpu: GpuSpec | None
    breakdown: dict[str, int]  # sums to peak_bytes
    cpu_bytes: int  # host memory DeepSpeed's estimator asks for (offloaded states and buffers)
    headroom_bytes: int
    model_flops_per_step: float  # per GPU, recomputation not counted (the MFU convention)
    mfu: float
    phases: dict[str, int] = field(default_factory=dict)  # the two backward peaks over the stored activations
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def reserved_bytes(self) -> int:
        return self.peak_bytes + self.headroom_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.gpu is None else self.reserved_bytes <= self.gpu.memory_bytes

    @property
    def step_time_s(self) -> float | None:
        return None if self.gpu is None else self.model_flops_per_step / (self.gpu.bf16_tflops * 1e12 * self.mfu)

    @property
    def tokens_per_s(self) -> float | None:
        w = self.workload
        if self.gpu is None:
            return None
        tokens = w.micro_batch * w.sequence_length * w.gradient_accumulation_steps * w.world_size // w.sequence_parallel
        return tokens / self.step_time_s

    def as_row(self) -> dict:
        row = {key: round(value / GIB, 2) for key, value in self.breakdown.items()}
        row.update(peak_gib=round(self.peak_bytes / GIB, 2), reserved_gib=round(self.reserved_bytes / GIB, 2),
                   cpu_gib=round(self.cpu_bytes / GIB, 1), fits=self.fits, step_time_s=self.step_time_s,
                   **{f"{phase.replace(' ', '_')}_gib": round(value / GIB, 2) for phase, value in self.phases.items()},
                   tokens_per_s=self.tokens_per_s, **dataclasses.asdict(self.workload))
        return row


def model_states(arch: Architecture, w: Workload) -> tuple[dict[str, int], int]:
    """({weights, gradients, optimizer states}: GPU bytes, CPU bytes) from DeepSpeed's estimators: their GPU total,
    split for display by the byte counts DeepSpeed's estimator documents (16-bit weights 2, gradients 2 + 4, fp32
    master weights and Adam moments 4 + 8 per parameter, the last three sharded over the GPUs)."""
    try:  # imported here: an image without DeepSpeed still imports the planner and gets this message
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import (
            estimate_zero2_model_states_mem_needs,
        )
    except ImportError as err:
        raise ConfigError(f"the planner takes its weight/gradient/optimizer figures from DeepSpeed's ZeRO estimators, "
                          f"and DeepSpeed cannot be imported here ({err}): pip install 'deepspeed>=0.18'") from err
    params, sharded_over = arch.total_params, w.world_size
    if w.zero_stage == 3:
        offload = w.offload_optimizer or w.offload_params  # DeepSpeed's estimator only knows params-with-optimizer
        cpu, gpu, gathered = estimate_zero3_model_states_mem_needs(
            params, arch.largest_layer_params, w.gpus_per_node, w.nodes, cpu_offload=offload,
            cpu_offload_params=w.offload_params, zero_init=True)
        weights = gathered + (0 if w.offload_params else 2 * params // sharded_over)
    else:  # stages 1 and 2 share DeepSpeed's stage_1_and_2 estimator; stage 0 is the same with nothing sharded
        gpus_per_node, nodes = (w.gpus_per_node, w.nodes) if w.zero_stage else (1, 1)
        sharded_over = gpus_per_node * nodes
        cpu, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes,
                                                         cpu_offload=w.offload_optimizer)
        weights = 2 * params
    gradients = 0 if w.offload_optimizer else min(gpu - weights, 6 * params // sharded_over)
    return {"weights": weights, "gradients": gradients, "optimizer states": gpu - weights - gradients}, int(cpu)


def _attention_heads(arch: Architecture, n: int) -> tuple[int, int]:
    """(query heads, key/value heads) on one rank during attention; kv heads are replicated when fewer than N."""
    return arch.num_heads // n, max(arch.num_kv_heads // n, 1)


def layer_saved_bytes(arch: Architecture, w: Workload) -> int:
    """Bytes autograd keeps for one decoder layer's backward on one rank (see the module docstring)."""
    e, h, s, n = w.element_bytes, arch.hidden_size, w.local_tokens, w.sequence_parallel
    heads, kv_heads = _attention_heads(arch, n)
    gathered = s * n  # tokens of the rank's heads during attention: the whole sequence
    norms = 2 * (4 + 2 * e) * h * s + ((4 + e) * (arch.q_dim + arch.kv_dim) * s if arch.qk_norm else 0)
    qkv = e * arch.head_size * (heads + 2 * kv_heads) * gathered
    out = e * arch.head_size * heads * gathered + 4 * heads * gathered  # output + fp32 log-sum-exp
    if w.attention != "flash_attention_2" or n > 1:  # SDPA's transpose copy / the all-to-all back: o_proj's input
        out += e * arch.q_dim * s
    if w.attention == "eager":  # the fp32 softmax and its e-byte cast, kept by the value product
        out += (4 + e) * heads * w.micro_batch * w.sequence_length ** 2
    return norms + qkv + out + 4 * e * arch.intermediate_size * s


def attention_workspace_bytes(arch: Architecture, w: Workload) -> int:
    """Transient memory of one layer's attention backward beyond what is kept: the gradients of q, k, v (fp32 for
    the query accumulator of flash kernels); eager also holds the score gradients; SP the all-to-all inputs."""
    e, s, n = w.element_bytes, w.local_tokens, w.sequence_parallel
    heads, kv_heads = _attention_heads(arch, n)
    d, gathered = arch.head_size, s * n
    workspace = d * gathered * (heads * (e + 4) + 2 * kv_heads * e)
    if w.attention == "eager":
        workspace += (4 + 2 * e) * heads * w.micro_batch * w.sequence_length ** 2
    if n > 1:
        workspace += e * s * d * (arch.num_heads + 2 * kv_heads * n)
    return workspace


def stored_activation_bytes(arch: Architecture, w: Workload) -> int:
    """Kept from the forward until each layer's backward: every layer's saves, or with checkpointing only each
    layer's input."""
    e, h, s = w.element_bytes, arch.hidden_size, w.local_tokens
    if w.gradient_checkpointing:
        return arch.num_layers * e * h * s
    return arch.num_layers * layer_saved_bytes(arch, w)


def head_input_bytes(arch: Architecture, w: Workload) -> int:
    return (4 + 2 * w.element_bytes) * arch.hidden_size * w.local_tokens  # the final norm's saves, the head's input


def layer_backward_bytes(arch: Architecture, w: Workload) -> int:
    """On top of the stored activations while one layer runs its backward: its recomputed saves (checkpointing)
    and the gradients of gate and up, alive together."""
    recomputed = layer_saved_bytes(arch, w) if w.gradient_checkpointing else 0
    return recomputed + 2 * w.element_bytes * arch.intermediate_size * w.local_tokens


def logits_bytes(arch: Architecture, w: Workload) -> int:
    """The cross-entropy backward's vocab-wide tensors; chunked, each chunk's backward also makes a fresh gradient
    of the head's weight while its logits are alive (measured: benchmarks/plan_accuracy.py), which ZeRO-3 already
    counts in DeepSpeed's gathered largest layer."""
    if w.loss_chunk_size <= 0 or w.loss_chunk_size >= w.local_tokens:
        return LOGIT_BYTES_PER_VOCAB * arch.vocab_size * w.local_tokens
    head_gradient = 0 if w.zero_stage == 3 else w.element_bytes * arch.vocab_size * arch.hidden_size
    return LOGIT_BYTES_PER_VOCAB * arch.vocab_size * w.loss_chunk_size + head_gradient


def model_flops_per_step(arch: Architecture, w: Workload) -> float:
    """Per GPU: 6 x matmul parameters per token plus causal attention (6 x layers x q_dim x L per token),
    over this rank's share of the step's tokens."""
    per_token = 6 * arch.matmul_params + 6 * arch.num_layers * arch.q_dim * w.sequence_length
    return float(per_token) * w.local_tokens * w.gradient_accumulation_steps


def estimate(arch: Architecture, w: Workload, gpu: GpuSpec | None = None, mfu: float = DEFAULT_MFU) -> Estimate:
    w.check(arch)
    states, cpu = model_states(arch, w)
    # The backward has two peaks that never overlap: the loss (logits alive, no layer recomputed yet) and the
    # layers (logits freed, one layer's recomputed saves, its gradients and its attention backward workspace).
    stored = stored_activation_bytes(arch, w)
    loss_phase = head_input_bytes(arch, w) + logits_bytes(arch, w)
    layer_phase = layer_backward_bytes(arch, w) + attention_workspace_bytes(arch, w)
    if loss_phase >= layer_phase:
        peak_phase = {"activations": stored + head_input_bytes(arch, w), "logits/loss": logits_bytes(arch, w),
                      "attention workspace": 0}
    else:
        peak_phase = {"activations": stored + layer_backward_bytes(arch, w), "logits/loss": 0,
                      "attention workspace": attention_workspace_bytes(arch, w)}
    breakdown = {**states, **peak_phase}
    transient = sum(peak_phase.values())
    notes = []
    if w.offload_optimizer:
        notes.append(f"offload: DeepSpeed's estimator asks for {cpu / GIB:.0f} GiB of host memory per node")
    return Estimate(workload=w, gpu=gpu, breakdown=breakdown, cpu_bytes=cpu,
                    headroom_bytes=CUDA_CONTEXT_BYTES + int(FRAGMENTATION * transient),
                    model_flops_per_step=model_flops_per_step(arch, w), mfu=mfu,
                    phases={"loss backward": loss_phase, "layer backward": layer_phase}, notes=notes)
