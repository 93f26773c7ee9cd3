"""LinearProbeEval: logistic regression on frozen features during training (over clipl.eval)."""

from __future__ import annotations

from clipl.callbacks.eval_base import EvalCallback
from clipl.eval.runner import run_linear_probe
from clipl.eval.specs import resolve_probe


class LinearProbeEval(EvalCallback):
    """Logs ``val/linear_probe/<dataset>/top1`` (top5, mean_per_class_recall, weight_decay).

    Features are taken before or after the projection (``EvalConfig.linear_probe_position``); the
    L2 penalty is chosen on held-out training features, never on the test split.
    """

    task = "linear_probe"

    def resolve(self) -> list:
        c = self.cfg
        return [p for spec in self.specs
                for p in resolve_probe(spec, self.shapes, c.linear_probe_train_fraction, c.seed, self.members)]

    def evaluate(self, enc, trainer, pl_module):
        out = []
        for p in self._sets:
            res = run_linear_probe(enc, p, self.cfg)
            logged = {"top1": res.metrics["acc1"], "mean_per_class_recall": res.metrics["mean_per_class_recall"]}
            if "acc5" in res.metrics:
                logged["top5"] = res.metrics["acc5"]
            logged["weight_decay"] = res.weight_decay
            out.append((p.name, logged, {**res.metrics, "weight_decay": res.weight_decay}))
        return out
