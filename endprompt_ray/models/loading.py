"""Load a causal LM and its tokenizer: a local directory, a hub id, a GGUF file, or the locally built `tiny` preset."""

from __future__ import annotations

import hashlib
import json
from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.errors import ModelLoadError
from endprompt_ray.models.attention import check_attn_implementation
from endprompt_ray.models.cache import build_once, cache_root
from endprompt_ray.models.gguf import converted_model_dir, gguf_source
from endprompt_ray.resources import RECALL_BASE_DIR, TOY_BASE_DIR
from dataclasses import asdict, dataclass, field
from pathlib import Path

TINY = "tiny"
TOY_BASE = "tiny-base"  # the toy base: trained by endprompt_ray.jobs.toybase, shipped in endprompt_ray/assets/
RECALL_BASE = "tiny-base-recall"  # the same model pretrained on the recall recipe (no evaluation format), shipped too
TOY_BASES = {TOY_BASE: (TOY_BASE_DIR, "episodes"), RECALL_BASE: (RECALL_BASE_DIR, "recall")}  # name: (folder, recipe)


@dataclass(frozen=True)
class TinySpec:
    """A small Llama-architecture model and byte-level BPE tokenizer, built locally (no downloads)."""

    vocab_size: int = field(default=1024, metadata={"help": "tokenizer and embedding size"})
    hidden_size: int = field(default=64, metadata={"help": "model width"})
    intermediate_size: int = field(default=172, metadata={"help": "MLP width"})
    num_hidden_layers: int = field(default=2, metadata={"help": "decoder layers"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads"})
    num_key_value_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention)"})
    max_position_embeddings: int = field(default=256, metadata={
        "help": "the original window that EndPrompt extends"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base"})
    seed: int = field(default=0, metadata={"help": "seeds the random weights of model.name_or_path=tiny"})


def build_tiny_tokenizer(spec: TinySpec = TinySpec()):
    """Train a byte-level BPE tokenizer on the generated demo corpus; deterministic for a given spec."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(generate_documents(300, seed=spec.seed), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                  special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=spec.max_position_embeddings)


def build_tiny_model(tokenizer, spec: TinySpec = TinySpec(), attn_implementation: str = "sdpa"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation)


def tiny_model_dir(spec: TinySpec = TinySpec(), root: str | Path | None = None) -> Path:
    """Build the tiny model once into a cache directory (keyed by its spec) and return that directory.

    Every process that asks for the same spec gets identical weights, so workers on other nodes need no shared disk.
    """
    key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]

    def build(staging: Path) -> None:
        tokenizer = build_tiny_tokenizer(spec)
        build_tiny_model(tokenizer, spec).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(cache_root(root) / f"tiny-{key}", build)


def toy_base_dir(name: str = TOY_BASE) -> Path:
    folder, recipe = TOY_BASES[name]
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"the toy base {name} is missing from {folder}; rebuild it with `python -m "
                             f"endprompt_ray.jobs.toybase --recipe {recipe} --output {folder}` (10-20 minutes on 2 "
                             "cores)")
    return folder


def resolve_model_path(name_or_path: str, tiny: TinySpec = TinySpec()) -> str:
    """`tiny` -> the locally built preset; a GGUF file or preset -> its converted directory (see gguf.py);
    an existing directory -> itself; anything else -> a hub id."""
    if name_or_path == TINY:
        return str(tiny_model_dir(tiny))
    if name_or_path in TOY_BASES:
        return str(toy_base_dir(name_or_path))

    if (gguf := gguf_source(name_or_path)) is not None:
        return str(converted_model_dir(gguf))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model directory {path} has no config.json; point model.name_or_path at a "
                                 "Hugging Face model directory (config.json + weights + tokenizer files)")
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"model path {name_or_path!r} does not exist; fix model.name_or_path "
                             "(a local model directory, a hub id such as meta-llama/Meta-Llama-3-8B, or 'tiny')")
    return name_or_path  # a hub id: from_pretrained downloads it (needs network access and, if gated, HF_TOKEN)


def load_config(name_or_path: str, tiny: TinySpec = TinySpec()):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(name_or_path, tiny))


def load_tokenizer(name_or_path: str, tiny: TinySpec = TinySpec()):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, tiny)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {err}. The model directory needs tokenizer "
                             "files (tokenizer.json or tokenizer.model + tokenizer_config.json)") from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation needs a pad token; it is always masked
    return tokenizer


def load_model(name_or_path: str, config=None, attn_implementation: str = "sdpa", dtype=None,
               tiny: TinySpec = TinySpec()):
    """Load weights; `config` (e.g. with scaled RoPE) replaces the checkpoint's own."""
    from transformers import AutoModelForCausalLM

    check_attn_implementation(attn_implementation)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path, tiny), config=config,
                                                attn_implementation=attn_implementation, dtype=dtype)


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation (gradient) checkpointing, under the name the installed transformers uses."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
