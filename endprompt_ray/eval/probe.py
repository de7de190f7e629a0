"""A quick passkey probe during training: the intermediate metric a sweep's early stopping (ASHA) acts on.

Held-out passkey prompts at the target length (the evaluation's format and fitting, another seed, so the probe never
sees the final evaluation's samples) are scored teacher-forced: the mean negative log-likelihood of the key's tokens
(`probe/nll`, smooth, lower is better) and the share of samples whose every key token is the argmax (`probe/acc`, %,
exactly what greedy decoding of the key would get right). One forward pass per sample, logits only for the key.

Every rank scores the same samples: under ZeRO-3 the weights are gathered collectively, so all ranks must run the
same forward calls; on 2 CPU workers the ranks run side by side, costing one rank's time.
"""

from __future__ import annotations

from endprompt_ray.eval.passkey import PasskeySettings, build_samples
from endprompt_ray.models.loading import load_tokenizer
from endprompt_ray.rope.scaling import reset_dynamic_rope

PROBE_SEED_OFFSET = 7919  # probe samples: run.seed + this, apart from the evaluation's (run.seed)


class PasskeyProbe:
    def __init__(self, tokenizer, length: int, depths: list[float], samples: int, seed: int, every: int) -> None:
        self.every, self.last = every, 0
        self.items = []  # (token ids of prompt + key, number of key tokens)
        drafts = build_samples(tokenizer, PasskeySettings(lengths=[length], depths=list(depths), num_samples=samples,
                                                          seed=seed, progress=False))
        for sample in drafts:
            prompt = tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]  # as the evaluation encodes
            full = tokenizer(f"{sample.prompt} {sample.key}", add_special_tokens=True)["input_ids"]
            if full[:len(prompt)] != prompt:  # the key merged with the prompt's last token: encode it apart
                full = prompt + tokenizer(f" {sample.key}", add_special_tokens=False)["input_ids"]
            self.items.append((full, len(full) - len(prompt)))

    @classmethod
    def for_config(cls, cfg, settings: dict) -> "PasskeyProbe":
        return cls(load_tokenizer(cfg.model.name_or_path, cfg.model.tiny),
                   length=settings.get("length") or cfg.method.target_length, depths=settings["depths"],
                   samples=settings["samples"], seed=cfg.run.seed + PROBE_SEED_OFFSET, every=settings["every"])

    def due(self, step: int, final: bool) -> bool:
        """At the first report at or after each multiple of `every`, and at the last step."""
        if final or step // self.every > self.last // self.every:
            self.last = step
            return True
        return False

    def __call__(self, model, device) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        was_training = model.training
        model.eval()
        nll = tokens = exact = 0.0
        with torch.no_grad():
            for ids, n_key in self.items:
                x = torch.tensor([ids], dtype=torch.long, device=device)
                logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False,
                               logits_to_keep=n_key + 1).logits[0, :-1].float()  # the predictions of the key
                target = x[0, -n_key:]
                nll += F.cross_entropy(logits, target, reduction="sum").item()
                tokens += n_key
                exact += float(bool((logits.argmax(-1) == target).all()))
        reset_dynamic_rope(model)  # training goes back to its own lengths
        model.train(was_training)
        return {"probe/nll": nll / tokens, "probe/acc": 100.0 * exact / len(self.items)}
