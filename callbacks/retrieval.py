"""RetrievalEval: image<->text recall@K during training (a thin adapter over clipl.eval)."""

from __future__ import annotations

from clipl.callbacks.eval_base import EvalCallback
from clipl.eval.datasets import load_image
from clipl.eval.runner import run_retrieval
from clipl.eval.specs import resolve


class RetrievalEval(EvalCallback):
    """Logs ``val/retrieval/<dataset>/image_retrieval_recall@K`` and ``text_retrieval_recall@K``.

    With a WandbLogger it also logs a panel of example retrievals: the first images of the set
    with their three best captions (marked when the caption is the image's own).
    """

    task = "retrieval"

    def resolve(self) -> list:
        return [s for spec in self.specs for s in resolve(spec, "retrieval", self.shapes, self.members)]

    def evaluate(self, enc, trainer, pl_module):
        out = []
        wandb_loggers = self.wandb_loggers(trainer)
        for s in self._sets:
            # Every rank must take the same code path (collectives inside), so the example count
            # does not depend on the rank; only rank 0 renders them.
            n_examples = self.cfg.wandb_examples if self._wants_examples(trainer) else 0
            res = run_retrieval(enc, s, self.cfg, n_examples=n_examples)
            if wandb_loggers and res.examples:
                self._log_examples(wandb_loggers, s, res.examples, enc.image_size)
            out.append((s.name, res.metrics, res.metrics))
        return out

    def _wants_examples(self, trainer) -> bool:
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            return False
        return self.cfg.wandb_examples > 0 and any(isinstance(lg, WandbLogger) for lg in trainer.loggers)

    def _log_examples(self, loggers, s, examples, image_size: int) -> None:
        import wandb

        rows = []
        for index, caps in examples:
            img = load_image(s.samples[index].image, image_size).permute(1, 2, 0).numpy()
            text = "\n".join(("[own] " if own else "") + c for c, own in caps)
            rows.append([wandb.Image(img), text])
        for lg in loggers:
            lg.log_table(key=f"val/retrieval/{s.name}/examples", columns=["image", "top captions"], data=rows)
