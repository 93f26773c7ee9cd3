"""ZeroShotEval: zero-shot classification during training (a thin adapter over clipl.eval)."""

from __future__ import annotations

import math

import torch

from clipl.callbacks.eval_base import EvalCallback, text_tower_frozen
from clipl.eval.runner import run_zero_shot
from clipl.eval.specs import resolve


class ZeroShotEval(EvalCallback):
    """Logs ``val/zeroshot/<dataset>/top1`` (top5, mean_per_class_recall) on every set.

    The class embeddings are cached while the text tower is frozen (LiT, or a locked text
    tower): they cannot change, so only the images are re-encoded.
    """

    task = "zeroshot"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classifiers: dict[str, torch.Tensor] = {}

    def resolve(self) -> list:
        return [s for spec in self.specs for s in resolve(spec, "zeroshot", self.shapes, self.members)]

    def evaluate(self, enc, trainer, pl_module):
        frozen = text_tower_frozen(pl_module.model)
        if not frozen:
            self._classifiers.clear()
        out = []
        for s in self._sets:
            res = run_zero_shot(enc, s, self.cfg, self._classifiers.get(s.name))
            if frozen:
                self._classifiers[s.name] = res.weights
            logged = {"top1": res.metrics["acc1"], "mean_per_class_recall": res.metrics["mean_per_class_recall"]}
            if "acc5" in res.metrics:
                logged["top5"] = res.metrics["acc5"]
            for lg in self.wandb_loggers(trainer):
                rows = [[c, None if math.isnan(r) else r] for c, r in zip(s.classnames, res.per_class_recall)]
                lg.log_table(key=f"val/zeroshot/{s.name}/per_class", columns=["class", "top1_recall"], data=rows)
            out.append((s.name, logged, res.metrics))
        return out
