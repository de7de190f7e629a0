"""Ulysses sequence parallelism on CPU (gloo, 2 processes) against the unsharded computation.

One spawned pair of processes computes everything once (module fixture): the SP = 1 references first, with the
stock SDPA attention, then registers DeepSpeed's Ulysses wrapper (it replaces SDPA for the whole process) and runs
the same batches sharded over 2 ranks. Gradients of the sharded run are averaged over the ranks, as DeepSpeed's
data parallelism does; the engine itself is checked too (ZeRO-2 and ZeRO-3).
"""

import copy
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from endprompt_ray.method.anchoring import AnchorSpec, build_samples
from endprompt_ray.training.sequence_parallel import (TARGETS, check_model, data_parallel_place, next_token_targets,
                                                      shard_batch)
from endprompt_ray.training.trainer import accumulation_steps

SP, P, L, VOCAB = 2, 24, 4096, 97

# name -> (spec, gradient checkpointing, loss chunk size); P = 24 tokens, 12 per rank
CASES = {
    "contiguous": (AnchorSpec(method="contiguous", physical_length=P, target_length=L), False, 0),
    "full_length": (AnchorSpec(method="full_length", physical_length=8, target_length=P), True, 5),
    "pose": (AnchorSpec(method="pose", physical_length=P, target_length=L, pose_chunks=3), False, 0),
    # segment 2 = the last 6 tokens: the jump falls inside rank 1's shard
    "endprompt_jump_inside": (AnchorSpec(physical_length=P, target_length=L, prompt_ids=tuple(range(40, 46))),
                              True, 0),
    # segment 2 = the last 12 tokens: the jump falls on the boundary between the shards; loss on segment 2 only
    "endprompt_jump_on_boundary": (AnchorSpec(physical_length=P, target_length=L, prompt_ids=tuple(range(40, 52)),
                                              mask="segment1"), False, 5),
}


def _batch(spec: AnchorSpec) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(7)
    docs = [rng.integers(3, VOCAB, 300) for _ in range(2)]
    out, _ = build_samples(docs, spec)
    return {k: torch.from_numpy(v).long() for k, v in out.items()}


def _model(attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=L,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).float()


def _loss_and_grads(model, batch, chunk, sp=None):
    from endprompt_ray.training.loss import training_loss

    model.zero_grad()
    loss = training_loss(model, batch, "sdpa", chunk, sp)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _kv_cache_segment2_logits(model, batch, b):
    """Segment 1 prefilled into a cache, segment 2 decoded token by token at its own positions."""
    ids, pos = batch["input_ids"], batch["position_ids"]
    split = ids.shape[1] - b
    with torch.no_grad():
        out = model(input_ids=ids[:, :split], position_ids=pos[:, :split], use_cache=True)
        cache, logits = out.past_key_values, []
        for t in range(split, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], position_ids=pos[:, t:t + 1], past_key_values=cache,
                        use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


def _sharded_logits(model, shard, sp):
    from endprompt_ray.training.forward import attention_kwargs

    with torch.no_grad():
        local = model(input_ids=shard["input_ids"], position_ids=shard["position_ids"], use_cache=False,
                      **attention_kwargs(shard["input_ids"], "sdpa", sp.size)).logits
    parts = [torch.empty_like(local) for _ in range(sp.size)]
    torch.distributed.all_gather(parts, local.contiguous(), group=sp.group)
    return torch.cat(parts, dim=1)


def _engine_grads(model, batch, chunk, sp, stage):
    """The full gradients a DeepSpeed engine holds after backward on this rank's shard."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from endprompt_ray.training.loss import training_loss

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2 * SP,
              "zero_optimization": {"stage": stage}, "optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=copy.deepcopy(model), config=config)
    loss = training_loss(engine, sp.shard(batch), "sdpa", chunk, sp)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()}
    engine.destroy()
    return torch.tensor(sp.sample_loss(loss)), grads


def _worker(rank, port, out_path):
    import deepspeed
    import torch.distributed as dist

    from endprompt_ray.training.sequence_parallel import enable_sequence_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(SP),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=SP)
    deepspeed.init_distributed(dist_backend="gloo")
    model = _model()
    batches = {name: _batch(spec) for name, (spec, _, _) in CASES.items()}
    results = {"reference": {}, "sharded": {}, "kv": {}, "engine": {}}
    for name, (spec, checkpointing, chunk) in CASES.items():  # SP = 1, stock SDPA
        model.gradient_checkpointing_enable() if checkpointing else model.gradient_checkpointing_disable()
        model.train()
        results["reference"][name] = _loss_and_grads(model, batches[name], chunk)
    model.gradient_checkpointing_disable()
    b = CASES["endprompt_jump_inside"][0].prompt_length
    results["kv"]["reference"] = _kv_cache_segment2_logits(model.eval(), batches["endprompt_jump_inside"], b)

    sp = enable_sequence_parallel(model, "sdpa", SP, micro_batch=2)
    results["sp_rank"] = sp.rank
    for name, (spec, checkpointing, chunk) in CASES.items():
        model.gradient_checkpointing_enable() if checkpointing else model.gradient_checkpointing_disable()
        model.train()
        loss, grads = _loss_and_grads(model, sp.shard(batches[name]), chunk, sp)
        for grad in grads.values():  # what DeepSpeed's data-parallel averaging does
            dist.all_reduce(grad)
            grad /= SP
        results["sharded"][name] = (torch.tensor(sp.sample_loss(loss)), grads)
    model.gradient_checkpointing_disable()  # train mode: in eval mode the wrapper steps aside for probes
    results["kv"]["sharded"] = _sharded_logits(model, sp.shard(batches["endprompt_jump_inside"]), sp)[:, -b:]
    for stage in (2, 3):
        results["engine"][stage] = _engine_grads(model, batches["endprompt_jump_inside"], 0, sp, stage)
    # the trap, in the sharded call: a segment-1 token on rank 0 moves the loss of segment 2 (on rank 1)
    changed = {k: v.clone() for k, v in batches["endprompt_jump_on_boundary"].items()}
    changed["input_ids"][:, 3] = (changed["input_ids"][:, 3] + 5) % VOCAB
    results["trap"] = [_loss_and_grads(model, sp.shard(x), 0, sp)[0] for x in
                       (batches["endprompt_jump_on_boundary"], changed)]
    results["trap"] = [sp.sample_loss(x) for x in results["trap"]]
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path_factory.mktemp("sp") / "results.pt"
    mp.spawn(_worker, args=(port, str(out)), nprocs=SP, join=True)
    return torch.load(out, weights_only=False)


def _assert_same(got, expected):
    loss, grads = got
    ref_loss, ref_grads = expected
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_loss_and_every_gradient_equal_the_unsharded(runs, name):
    _assert_same(runs["sharded"][name], runs["reference"][name])


def test_the_cases_put_the_jump_where_they_say():
    inside = _batch(CASES["endprompt_jump_inside"][0])["position_ids"][0]
    boundary = _batch(CASES["endprompt_jump_on_boundary"][0])["position_ids"][0]
    assert inside[17] == 17 and inside[18] == L - 6  # rank 1's shard is 12..23: jump between 17 and 18
    assert boundary[11] == 11 and boundary[12] > 12 + 1  # the jump is exactly the shard boundary
    pose = _batch(CASES["pose"][0])["position_ids"]
    assert (pose[:, 12] > 12).any()  # some shard-1 ids do not continue from 12
    assert shard_batch(_batch(CASES["endprompt_jump_inside"][0]), 1, SP)["position_ids"][0, 0] == 12


def test_segment2_logits_across_shards_equal_a_kv_cache_decode(runs):
    torch.testing.assert_close(runs["kv"]["sharded"], runs["kv"]["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_engine_gradients_equal_the_unsharded(runs, stage):
    _assert_same(runs["engine"][stage], runs["reference"]["endprompt_jump_inside"])


def test_sharded_call_keeps_segment2_attending_to_segment1(runs):
    loss, changed = runs["trap"]
    assert abs(float(loss) - float(changed)) > 1e-4


def test_shard_targets_are_shifted_over_the_whole_sequence():
    labels = torch.arange(8).view(1, 8)
    batch = {"input_ids": labels, "position_ids": labels, "labels": labels}
    shards = [shard_batch(batch, r, 2) for r in range(2)]
    assert shards[0][TARGETS].tolist() == [[1, 2, 3, 4]]  # rank 0's last token predicts rank 1's first
    assert shards[1][TARGETS].tolist() == [[5, 6, 7, -100]]
    assert "labels" not in shards[0] and shards[1]["position_ids"].tolist() == [[4, 5, 6, 7]]
    assert next_token_targets(labels).tolist() == [[1, 2, 3, 4, 5, 6, 7, -100]]


def test_clear_errors():
    with pytest.raises(ValueError, match="cannot be split over train.sequence_parallel=3"):
        shard_batch({"input_ids": torch.zeros(1, 8), "labels": torch.zeros(1, 8)}, 0, 3)
    with pytest.raises(ValueError, match="must divide the model's 4 attention heads"):
        check_model(3, 4, 2, "sdpa")
    with pytest.raises(ValueError, match="6 key/value heads"):
        check_model(4, 8, 6, "sdpa")
    with pytest.raises(ValueError, match="'eager' cannot run"):
        check_model(2, 4, 2, "eager")
    check_model(4, 8, 2, "flash_attention_2")  # kv heads replicated: 4 % 2 == 0
    with pytest.raises(ValueError, match="must divide the 3 workers"):
        data_parallel_place(0, 3, 2)
    assert [data_parallel_place(r, 4, 2) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    # a run of global batch 4 (micro 2 x 2 workers) at SP = 2: one group, accumulation 2; at 3 groups it cannot split
    assert accumulation_steps(4, 2, 2, sequence_parallel=2) == 2
    with pytest.raises(ValueError, match="over 6 workers in 3 data-parallel groups of train.sequence_parallel=2"):
        accumulation_steps(4, 2, 6, sequence_parallel=2)


@pytest.mark.slow
def test_run_extend_at_sp2_on_zero3_resumes_at_sp1_and_follows_the_plain_run(local_ray, tmp_path):
    """2 workers: SP = 2 (one data-parallel group, accumulation 2) trains steps 1-2 and checkpoints, the run
    resumes at SP = 1 (2 data-parallel ranks) for steps 3-4; every step's loss equals the plain run's: same global
    batch of 4 samples, same stream order, same gradient."""
    from mlflow.tracking import MlflowClient

    from endprompt_ray.config.loader import load_config
    from endprompt_ray.jobs.extend import run_extend

    def run(name, *overrides):
        cfg = load_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", "eval.enabled=false",
                                 "model.name_or_path=tiny", "train.report_every=1", "train.micro_batch_size=2",
                                 "data.demo_documents=200", "train.learning_rate=3e-3", "train.warmup_steps=1",
                                 "train.deepspeed_config=zero3.json", "train.checkpoint_every=2", *overrides])
        result = run_extend(cfg)
        history = MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, "train/loss")
        return result, [m.value for m in sorted(history, key=lambda m: m.step)]

    _, plain = run("plain", "train.max_steps=4")
    _, first = run("sp", "train.max_steps=2", "train.sequence_parallel=2")
    resumed, rest = run("sp", "train.max_steps=4", "train.sequence_parallel=1")
    assert len(plain) == 4 and len(first) == 2 and len(rest) == 4  # the resumed run's history holds steps 1-4
    assert first + rest[2:] == pytest.approx(plain, rel=1e-4)
    assert Path(resumed.model_dir).is_dir()


@pytest.mark.parametrize("overrides, message", [
    (["train.sequence_parallel=3"], "train.sequence_parallel=3 must divide train.num_workers=2"),
    (["train.num_workers=[2, 4]"], "needs a fixed train.num_workers"),
    (["method.physical_length=255"], "must divide the training sequence of 255 tokens \\(method.physical_length\\)"),
    (["method.kind=full_length", "method.target_length=1025"], "1025 tokens \\(method.target_length\\)"),
    (["model.attn_implementation=eager"], "'eager' cannot run with train.sequence_parallel=2"),
    (["train.sequence_parallel=0"], "must be at least 1"),
])
def test_config_refuses_what_cannot_be_split(overrides, message):
    from endprompt_ray.config.loader import load_config
    from endprompt_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.sequence_parallel=2", *overrides])
    load_config(None, ["train.sequence_parallel=2", "train.num_workers=4"])
