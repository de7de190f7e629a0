"""The trap from the design notes: in the exact training forward call, segment 2 must attend to all of segment 1.

The loss is restricted to predictions made by segment-2 tokens (segment-1 labels and the first segment-2 label,
which segment 1's last token predicts, are masked), so changing one segment-1 token can change it only through
attention across the position-id jump.
"""

import numpy as np
import pytest
import torch

from endprompt_ray.errors import ModelLoadError
from endprompt_ray.method.anchoring import AnchorSpec, build_samples
from endprompt_ray.models.attention import check_attn_implementation, uses_flash_path
from endprompt_ray.models.loading import enable_activation_checkpointing, load_config, load_model, load_tokenizer
from endprompt_ray.rope.scaling import RopeScaling, scaled_config
from endprompt_ray.training.forward import attention_kwargs, training_forward

P, L = 64, 2048


@pytest.fixture(scope="module")
def batch():
    tokenizer = load_tokenizer("tiny")
    prompt = tuple(tokenizer("This is the end of text, please pay attention here", add_special_tokens=False)
                   ["input_ids"])
    spec = AnchorSpec(physical_length=P, target_length=L, prompt_ids=prompt, mask="segment1", short_docs="skip",
                      prefix_ids=(tokenizer.bos_token_id,)).validate()
    docs = [np.arange(3, 200) % 900 + 3, np.arange(50, 400) % 900 + 3]
    out, _ = build_samples(docs, spec)
    b = len(prompt)
    assert out["position_ids"][0, -b] == L - b  # a real jump of ~2000 positions
    out["labels"][:, -b] = -100
    return {k: torch.from_numpy(v) for k, v in out.items()}, b


def _model(attn, checkpointing):
    cfg = scaled_config(load_config("tiny"), L, RopeScaling())
    model = load_model("tiny", config=cfg, attn_implementation=attn)
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()  # the training call: dropout off in Llama anyway, checkpointing active only in train mode
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("batch_rows", [1, 2])
def test_segment1_change_moves_segment2_loss(batch, attn, checkpointing, batch_rows):
    data, b = batch
    data = {k: v[:batch_rows] for k, v in data.items()}
    model = _model(attn, checkpointing)
    changed = {k: v.clone() for k, v in data.items()}
    changed["input_ids"][:, 5] = (changed["input_ids"][:, 5] + 17) % 1000 + 3
    loss = training_forward(model, data, attn).loss
    loss.backward()  # the backward pass through checkpointed layers must work too
    changed_loss = training_forward(model, changed, attn).loss
    assert abs(loss.item() - changed_loss.item()) > 1e-4


def test_trap_is_real_without_the_explicit_mask(batch):
    """Documents why forward.py exists: the same call without our attention kwargs cuts segment 2 off."""
    data, _ = batch
    model = _model("sdpa", False)
    changed = data["input_ids"].clone()
    changed[:, 5] += 1
    plain = [model(input_ids=ids, position_ids=data["position_ids"], labels=data["labels"], use_cache=False).loss
             for ids in (data["input_ids"], changed)]
    assert plain[0].item() == pytest.approx(plain[1].item(), abs=1e-6), (
        "transformers no longer infers packed sequences from position ids; forward.attention_kwargs may be "
        "simplified, but keep test_segment1_change_moves_segment2_loss")


def test_flash_attention_kwargs_make_each_row_one_sequence():
    ids = torch.zeros(3, 10, dtype=torch.long)
    kwargs = attention_kwargs(ids, "flash_attention_2")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 10, 20, 30] and kwargs["max_length_k"] == 10
    assert kwargs["attention_mask"].shape == (3, 10) and kwargs["attention_mask"].all()
    assert set(attention_kwargs(ids, "sdpa")) == {"attention_mask"}


def test_flash_attention_kwargs_under_sequence_parallelism_cover_the_gathered_sequence():
    """Each rank holds 5 of a row's 10 tokens, but flash attention runs on the whole gathered row."""
    ids = torch.zeros(3, 5, dtype=torch.long)
    kwargs = attention_kwargs(ids, "flash_attention_2", sequence_parallel=2)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 10, 20, 30] and kwargs["max_length_q"] == 10
    assert kwargs["attention_mask"].shape == (3, 5)  # the model's own (local) mask, dropped by the Ulysses wrapper


# Names transformers documents for attn_implementation, and the hub kernels it falls back to for flash_attention_N
FLASH_PATH = ["flash_attention_2", "flash_attention_3", "flash_attention_4", "paged|flash_attention_2",
              "kernels-community/flash-attn", "kernels-community/flash-attn2", "kernels-community/flash-attn3",
              "kernels-community/vllm-flash-attn3", "kernels-community/aiter-flash-attn",
              "kernels-community/flash-attn4", "kernels-community/flash-attn2@v4",
              "paged|kernels-community/flash-attn2"]
OTHER_PATHS = ["sdpa", "eager", "flex_attention", "paged|eager", "paged|sdpa", None]


@pytest.mark.parametrize("name", FLASH_PATH)
def test_flash_path_names(name):
    assert uses_flash_path(name)
    kwargs = attention_kwargs(torch.zeros(1, 7, dtype=torch.long), name)  # batch size 1: where boundaries get guessed
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 7] and kwargs["max_length_q"] == 7


@pytest.mark.parametrize("name", OTHER_PATHS)
def test_non_flash_names(name):
    assert not uses_flash_path(name)


def test_transformers_own_flash_fallbacks_are_covered():
    from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_FALLBACK, FLASH_ATTN_KERNEL_VERSIONS

    assert all(uses_flash_path(n) for n in [*FLASH_ATTN_KERNEL_FALLBACK, *FLASH_ATTN_KERNEL_FALLBACK.values(),
                                              *FLASH_ATTN_KERNEL_VERSIONS])


def test_a_hub_kernel_registered_with_the_flash_wrapper_counts_whatever_its_name():
    """What transformers' load_and_register_attn_kernel does for a kernel exposing flash_attn_varlen_func."""
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, flash_attention_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = "some-org/varlen-kernel"
    assert not uses_flash_path(name)
    AttentionInterface.register(name, flash_attention_forward)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    try:
        assert ALL_MASK_ATTENTION_FUNCTIONS[name] is flash_attention_mask and uses_flash_path(name)
    finally:
        del ALL_ATTENTION_FUNCTIONS._global_mapping[name], ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[name]
    assert not uses_flash_path(name)


def test_flash_path_without_its_packages_fails_in_one_line():
    from transformers.utils import is_flash_attn_3_available, is_kernels_available

    if is_kernels_available() or is_flash_attn_3_available():
        pytest.skip("flash attention can load here")
    with pytest.raises(ModelLoadError, match="is a Hugging Face hub kernel: it needs the kernels package"):
        check_attn_implementation("kernels-community/vllm-flash-attn3")
    with pytest.raises(ModelLoadError, match="'flash_attention_3' needs flash-attn on a CUDA GPU"):
        check_attn_implementation("flash_attention_3")
    check_attn_implementation("sdpa")
