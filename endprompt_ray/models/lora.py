"""LoRA and LongLoRA baselines: wrap a causal LM with PEFT, and turn what was trained back into a plain HF model.

LoRA trains low-rank updates B @ A beside frozen linear layers (LongLoRA: the attention projections q, k, v, o).
LongLoRA (arXiv 2309.12307) adds, for context extension, full training of the embeddings and normalisation layers
(`trainable: [embed_tokens, norm]`, the paper's "LoRA+"; without them LoRA extends the context poorly) and trains
with shifted sparse attention (s2_attention.py). Those extra parameters are made trainable in place rather than
copied (PEFT's modules_to_save), so their names stay plain and no copy of the embeddings exists under ZeRO-3.

Export always writes a plain HF checkpoint with W + (alpha / rank) * B @ A merged (`merged_state_dict`), loadable
without peft; `adapter_state_dict` gives the adapter alone in PEFT's file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the HF model
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LONGLORA_TRAINABLE = ("embed_tokens", "norm")  # substrings of parameter names, as LongLoRA's trainable_params
ADAPTER = "default"  # PEFT's adapter name


class LoraError(ValueError):
    """A LoRA setting or a state dict that cannot be used as asked."""


@dataclass(frozen=True)
class LoraSpec:
    enabled: bool = field(default=False, metadata={"help": "LoRA adapters instead of full fine-tuning"})
    rank: int = field(default=8, metadata={"help": "adapter rank"})
    alpha: float = field(default=16.0, metadata={"help": "the update is scaled by alpha / rank"})
    dropout: float = field(default=0.0, metadata={"help": "adapter dropout"})
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata={
        "help": "the adapted projections"})
    trainable: list[str] = field(default_factory=list, metadata={
        "help": "parameter-name substrings trained fully (LongLoRA: [embed_tokens, norm])"})
    save_adapter: bool = field(default=False, metadata={
        "help": "also write the adapter alone (PEFT format) to <model>/adapter/"})

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self, where: str = "train.lora") -> "LoraSpec":
        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise LoraError(f"{where}.rank={self.rank!r} must be a positive integer (LongLoRA: 8)")
        if not number(self.alpha) or self.alpha <= 0:
            raise LoraError(f"{where}.alpha={self.alpha!r} must be a positive number; the update is scaled by "
                            f"alpha / rank (LongLoRA: 16 with rank 8)")
        if not number(self.dropout) or not 0 <= self.dropout < 1:
            raise LoraError(f"{where}.dropout={self.dropout!r} must be in [0, 1) (LongLoRA: 0)")
        for name in ("target_modules", "trainable"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in values):
                raise LoraError(f"{where}.{name}={values!r} must be a list of non-empty names, e.g. "
                                f"{list(DEFAULT_TARGETS) if name == 'target_modules' else list(LONGLORA_TRAINABLE)}")
        if self.enabled and not self.target_modules:
            raise LoraError(f"{where}.target_modules is empty: name the linear layers to adapt, e.g. "
                            f"{list(DEFAULT_TARGETS)}, or set {where}.enabled=false")
        if (self.save_adapter or self.trainable) and not self.enabled:
            set_key = "save_adapter" if self.save_adapter else "trainable"
            raise LoraError(f"{where}.{set_key} is set but {where}.enabled=false; set {where}.enabled=true for the "
                            f"LoRA baseline, or drop {where}.{set_key}")
        return self

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=float(self.dropout),
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM",
                          use_rslora=False)  # rsLoRA would scale by alpha / sqrt(rank): keep alpha / rank


def apply_lora(model, spec: LoraSpec, where: str = "train.lora"):
    """`model` wrapped with LoRA adapters (only they and the `trainable` patterns train), or `model` itself when
    LoRA is off. Call after loading (under ZeRO-3: after from_pretrained has partitioned the weights) and before
    deepspeed.initialize, which then partitions the new adapter weights too."""
    spec.validate(where)
    if not spec.enabled:
        return model
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, spec.peft_config())
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        raise LoraError(f"{where}.target_modules={list(spec.target_modules)} cannot be adapted: {err}. Name linear "
                        "layers of the model (Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                        "down_proj)") from err
    params = [(name, param) for name, param in wrapped.named_parameters() if ".lora_" not in name]
    for pattern in spec.trainable:
        matched = [param for name, param in params if pattern in name]
        if not matched:
            example = next((n.removeprefix(PEFT_PREFIX) for n, _ in params), "")
            raise LoraError(f"{where}.trainable: {pattern!r} matches no parameter of the model (names look like "
                            f"{example!r}); LongLoRA uses {list(LONGLORA_TRAINABLE)}")
        for param in matched:
            param.requires_grad_(True)
    return wrapped


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # without peft nothing can be a PEFT model
        return False
    return isinstance(model, PeftModel)


def _split(state_dict: dict, adapter: str):
    """Plain names -> tensors for everything but the adapter, and the adapter's A and B by module name."""
    a_suffix, b_suffix = f".lora_A.{adapter}.weight", f".lora_B.{adapter}.weight"
    plain, lora_a, lora_b = {}, {}, {}
    for name, tensor in state_dict.items():
        if not name.startswith(PEFT_PREFIX):
            raise LoraError(f"state dict key {name!r} does not start with {PEFT_PREFIX!r}: this is not the state "
                            "dict of a PEFT-wrapped causal LM (get it from the PeftModel, e.g. engine.module)")
        name = name[len(PEFT_PREFIX):]
        if name.endswith(a_suffix):
            lora_a[name[:-len(a_suffix)]] = tensor
        elif name.endswith(b_suffix):
            lora_b[name[:-len(b_suffix)]] = tensor
        elif ".lora_" in name:
            raise LoraError(f"cannot merge {name!r}: only plain LoRA on linear layers with one adapter "
                            f"({adapter!r}) is supported (no DoRA, LoRA on embeddings, or second adapter)")
        else:
            plain[name.replace(".base_layer.", ".")] = tensor
    if lora_a.keys() != lora_b.keys():
        raise LoraError(f"LoRA A and B weights do not pair up: {sorted(lora_a.keys() ^ lora_b.keys())[:3]}")
    return plain, lora_a, lora_b


def merged_state_dict(state_dict: dict, spec: LoraSpec, adapter: str = ADAPTER) -> dict:
    """A PEFT-wrapped model's full state dict (names like base_model.model.model.layers.0.self_attn.q_proj.
    base_layer.weight / .lora_A.default.weight / .lora_B.default.weight) -> the plain HF state dict with
    W + (alpha / rank) * B @ A merged, computed in float32 and returned in W's dtype."""
    if not state_dict:
        raise LoraError("empty state dict: nothing to merge (was it gathered on this rank?)")
    plain, lora_a, lora_b = _split(state_dict, adapter)
    if not lora_a:
        raise LoraError(f"the state dict holds no LoRA weights of adapter {adapter!r}: nothing to merge")
    for module, a in lora_a.items():
        key = f"{module}.weight"
        weight, b = plain[key], lora_b[module]
        fits = (b.shape[0], a.shape[1]) == tuple(weight.shape) and b.shape[1] == a.shape[0] == spec.rank
        if not fits:
            raise LoraError(f"{module}: LoRA shapes B {tuple(b.shape)} @ A {tuple(a.shape)} do not fit the weight "
                            f"{tuple(weight.shape)} at rank {spec.rank}; pass the LoraSpec the model was wrapped with")
        plain[key] = (weight.float() + spec.scaling * (b.float() @ a.float())).to(weight.dtype)
    return plain


def adapter_state_dict(state_dict: dict, adapter: str = ADAPTER) -> dict:
    """The adapter alone, named as PEFT saves it (adapter_model.safetensors: ...q_proj.lora_A.weight)."""
    _split(state_dict, adapter)  # the same checks as merging
    marker = {f".lora_A.{adapter}.": ".lora_A.", f".lora_B.{adapter}.": ".lora_B."}
    out = {}
    for name, tensor in state_dict.items():
        for old, new in marker.items():
            if old in name:
                out[name.replace(old, new)] = tensor
    return out


def trainable_state_dict(state_dict: dict, spec: LoraSpec, adapter: str = ADAPTER) -> dict:
    """The fully trained extras (`spec.trainable`, LongLoRA's embeddings and norms) under plain HF names: what a
    base model needs besides the adapter (LongLoRA ships them as trainable_params next to its adapters)."""
    plain, _, _ = _split(state_dict, adapter)
    return {name: tensor for name, tensor in plain.items() if any(p in name for p in spec.trainable)}
