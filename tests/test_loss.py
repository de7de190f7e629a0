"""The chunked loss against Hugging Face's own causal-LM loss: same value, same gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from endprompt_ray.training.loss import training_loss


def _model_and_batch(tie: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tie)
    model = LlamaForCausalLM(config).float()
    ids = torch.randint(0, 97, (2, 23))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked segment, as method.mask produces
    labels[1, 17:] = -100
    # EndPrompt-like positions: a jump to near the target length for the last 4 tokens
    positions = torch.cat([torch.arange(19), torch.arange(400, 404)]).expand(2, -1)
    return model, {"input_ids": ids, "position_ids": positions.clone(), "labels": labels}


def _loss_and_grads(model, batch, chunk_size):
    model.zero_grad()
    loss = training_loss(model, batch, "sdpa", chunk_size)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 23, 64])
def test_chunked_loss_and_gradients_equal_the_models_own(tie, chunk_size):
    model, batch = _model_and_batch(tie)
    plain_loss, plain_grads = _loss_and_grads(model, batch, 0)
    chunked_loss, chunked_grads = _loss_and_grads(model, batch, chunk_size)
    # the reference: Hugging Face's loss, mean over the 23*2 - 2 shifted targets minus the 5 + 5 masked ones
    targets = torch.cat([batch["labels"][:, 1:], torch.full((2, 1), -100)], dim=1)
    assert int((targets != -100).sum()) == 2 * 22 - 5 - 5
    torch.testing.assert_close(chunked_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_matches_a_hand_computed_cross_entropy():
    model, batch = _model_and_batch(False)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=torch.ones_like(batch["input_ids"])).logits
        log_probs = torch.log_softmax(logits.double(), -1)
        terms = [-log_probs[b, t, batch["labels"][b, t + 1]] for b in range(2) for t in range(22)
                 if batch["labels"][b, t + 1] != -100]
        expected = torch.stack(terms).mean()
        got = training_loss(model, batch, "sdpa", chunk_size=4)
    assert len(terms) == 34
    assert abs(float(got) - float(expected)) < 1e-5
