"""The toy base's recipe: its architecture, corpus mix and pretraining settings, and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from endprompt_ray.corpora.reports import generate_documents
from endprompt_ray.corpora.toy import episodes
from endprompt_ray.models.loading import TinySpec


@dataclass(frozen=True)
class ToyBaseSpec:
    model: TinySpec = field(default_factory=lambda: TinySpec(hidden_size=128, intermediate_size=340,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=4, max_position_embeddings=256))
    documents: int = 24000  # one training window each
    passkey_share: float = 0.9  # of episodes; the rest are station reports (the report_code probe's format)
    max_report_sentences: int = 8  # reports short enough that head and end share a window
    steps: int = 1500
    micro_batch_size: int = 8  # per worker, 2 workers
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    corpus: str = "episodes"  # "episodes": passkey + reports (the evaluation's formats); "recall": corpora/recall.py
    # A copy warm-up before the main stage (corpora/copying.py), and the copy documents' share of the main stage.
    copy_window: int = 0  # 0: no warm-up
    copy_steps: int = 0
    copy_micro_batch_size: int = 32  # per worker, 2 workers
    copy_share: float = 0.0


# The recall recipe (corpora/recall.py): no evaluation format in its corpus, English haystacks, so a larger vocabulary;
# a copy warm-up at 32 tokens first (2500 steps of 64 sequences), then half copy documents, half recall episodes.
RECALL_SPEC = ToyBaseSpec(corpus="recall", model=TinySpec(
    vocab_size=2048, hidden_size=128, intermediate_size=340, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256), documents=32000, steps=2000, warmup_steps=100,
    copy_window=32, copy_steps=2500, copy_share=0.5)


def build_toy_tokenizer(spec: ToyBaseSpec):
    """Byte-level BPE like the tiny preset's, trained on both episode kinds, with digits split one by one so a key
    is copied digit by digit (as Llama's tokenizer splits numbers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(spec.seed + 1)
    stream = episodes(rng, spec)
    texts = [next(stream) for _ in range(600)]
    if spec.corpus == "episodes":
        texts += generate_documents(100, seed=spec.seed + 2)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.model.vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                  special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=spec.model.max_position_embeddings)
