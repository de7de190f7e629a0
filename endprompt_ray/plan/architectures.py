"""The model shape the planner needs, from a transformers config or, for hub ids that cannot be read offline, a
small table of known architectures (numbers from each model's config.json on the Hugging Face Hub)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from endprompt_ray.errors import ConfigError, ModelLoadError
from endprompt_ray.models.loading import TinySpec, load_config, resolve_model_path


@dataclass(frozen=True)
class Architecture:
    """A decoder-only Llama-family transformer (Llama, Mistral, Qwen3: RMSNorm, RoPE, GQA, SwiGLU MLP, no biases)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool = False
    head_dim: int = 0  # 0: hidden_size // num_heads
    qk_norm: bool = False  # Qwen3's per-head RMSNorm on queries and keys

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_size

    @property
    def layer_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attention = 2 * h * self.q_dim + 2 * h * self.kv_dim + (2 * self.head_size if self.qk_norm else 0)
        return attention + 3 * h * i + 2 * h  # + the two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        head = 0 if self.tie_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + head

    @property
    def largest_layer_params(self) -> int:
        """What DeepSpeed's model_to_params calls the largest layer: the module holding the most parameters of its
        own (the embedding, or an MLP projection of a small-vocabulary model)."""
        return max(self.embedding_params, self.hidden_size * self.intermediate_size, self.hidden_size * self.q_dim)

    @property
    def matmul_params(self) -> int:
        """Parameters used in matrix products per token: everything but the embedding lookup and the norms."""
        return self.num_layers * (self.layer_params - 2 * self.hidden_size) + self.embedding_params

    @classmethod
    def from_hf_config(cls, config, name: str = "") -> Architecture:
        heads = config.num_attention_heads
        return cls(name=name or getattr(config, "_name_or_path", "") or config.model_type,
                   hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                   num_layers=config.num_hidden_layers, num_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   vocab_size=config.vocab_size, tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   head_dim=getattr(config, "head_dim", None) or 0, qk_norm=config.model_type.startswith("qwen3"))


_LLAMA3_8B = Architecture("meta-llama/Meta-Llama-3-8B", 4096, 14336, 32, 32, 8, 128256)
_LLAMA3_70B = Architecture("meta-llama/Meta-Llama-3-70B", 8192, 28672, 80, 64, 8, 128256)
_QWEN3 = dict(num_kv_heads=8, vocab_size=151936, head_dim=128, qk_norm=True)
KNOWN: dict[str, Architecture] = {arch.name.lower(): arch for arch in (
    # huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json (3.1 differs only in RoPE scaling and window)
    _LLAMA3_8B, replace(_LLAMA3_8B, name="meta-llama/Llama-3.1-8B"),
    replace(_LLAMA3_8B, name="meta-llama/Llama-3.1-8B-Instruct"),
    # huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
    _LLAMA3_70B, replace(_LLAMA3_70B, name="meta-llama/Llama-3.1-70B"),
    # huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
    Architecture("meta-llama/Llama-2-7b-hf", 4096, 11008, 32, 32, 32, 32000),
    # huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json
    Architecture("mistralai/Mistral-7B-v0.1", 4096, 14336, 32, 32, 8, 32000),
    # huggingface.co/Qwen/Qwen3-4B/blob/main/config.json (tied embeddings), Qwen3-8B, Qwen3-32B
    Architecture("Qwen/Qwen3-4B", 2560, 9728, 36, 32, tie_embeddings=True, **_QWEN3),
    Architecture("Qwen/Qwen3-8B", 4096, 12288, 36, 32, **_QWEN3),
    Architecture("Qwen/Qwen3-32B", 5120, 25600, 64, 64, **_QWEN3),
    # huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json
    Architecture("HuggingFaceTB/SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, tie_embeddings=True),
)}


def resolve_architecture(name_or_path: str, tiny: TinySpec = TinySpec(),
                         model_config_dir: str | Path | None = None) -> Architecture:
    """`model_config_dir` (a directory with a config.json) wins; then a known hub id; then whatever
    models.loading can read here (a local directory, `tiny`, `tiny-base`, a GGUF preset)."""
    if model_config_dir is not None:
        directory = Path(model_config_dir).expanduser()
        if not (directory / "config.json").is_file():
            raise ConfigError(f"--model-config {directory}: no config.json there; give the directory of a Hugging "
                              "Face model (its config.json is enough, no weights needed)")
        return Architecture.from_hf_config(load_config(str(directory)), name=name_or_path)
    if name_or_path.lower() in KNOWN:
        return KNOWN[name_or_path.lower()]
    try:
        resolved = resolve_model_path(name_or_path, tiny)
    except ModelLoadError as err:
        raise ConfigError(str(err)) from err
    if resolved == name_or_path and not Path(name_or_path).expanduser().exists():
        raise ConfigError(f"model {name_or_path!r} is a hub id the planner does not know and cannot download: pass "
                          f"--model-config DIR (a directory holding its config.json) or use one of "
                          f"{', '.join(a.name for a in KNOWN.values())}")
    return Architecture.from_hf_config(load_config(name_or_path, tiny), name=name_or_path)
