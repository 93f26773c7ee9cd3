"""What the three evaluation callbacks share: when to run, how to reach the model, where to report.

Schedule: every ``every_n_steps`` optimizer steps, at the end of each validation epoch (never the
sanity check) and at fit end; never twice for one global step. Every rank runs the evaluation
(its shard of the data, reductions inside clipl.eval), so ZeRO-3 parameter gathers stay matched.
Metrics are identical on all ranks: they go straight to the loggers (rank 0) and into
``callback_metrics`` via ``pl_module.log(..., sync_dist=False, logger=False)``; JSON is written by
global rank 0 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from clipl.data.wds_format import Members
from clipl.eval.config import EvalConfig
from clipl.eval.results import checkpoint_name, write_result
from clipl.models.metadata import architecture_name
from clipl.eval.runner import Encoders, eval_mode, model_encoders


def text_tower_frozen(model: torch.nn.Module) -> bool:
    """True when no text-tower parameter trains (everything outside visual.* and the temperature)."""
    return all(
        not p.requires_grad
        for n, p in model.named_parameters()
        if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")
    )


class EvalCallback(L.Callback):
    """Base class: subclasses set ``task`` and implement :meth:`evaluate`."""

    task = ""
    """clipl task name: "zeroshot", "retrieval" or "linear_probe"."""

    def __init__(
        self,
        datasets: list[str],
        config: Optional[EvalConfig] = None,
        out_dir: Optional[str] = None,
        model_name: Optional[str] = None,
        pretrained: Optional[str] = None,
        shapes: Any = None,
        members: Optional[Members] = None,
    ):
        super().__init__()
        if isinstance(datasets, str):
            datasets = [datasets]
        if not datasets:
            raise ValueError(f"{type(self).__name__} needs at least one dataset spec")
        self.specs = list(datasets)
        self.cfg = config or EvalConfig()
        self.out_dir = out_dir
        self.model_name = model_name
        """clip_benchmark's ``model``; None: the architecture's name (preset or custom-<hash>)."""
        self.pretrained = pretrained
        """clip_benchmark's ``pretrained`` before "@step<N>"; None: ``out_dir`` (the run)."""
        self.shapes = shapes
        self.members = members
        """WebDataset member rules (the run's data.image_key/caption_key); None: the defaults."""
        self._sets: Optional[list] = None
        self._last_step: Optional[int] = None
        self.last_metrics: dict[str, float] = {}
        """The latest logged metrics (full keys, e.g. val/zeroshot/shapes_shape/top1)."""

    # ------------------------------------------------------------------------------ subclass API
    def resolve(self) -> list:
        """Index the data sets (called once, lazily, on every rank)."""
        raise NotImplementedError

    def evaluate(self, enc: Encoders, trainer: L.Trainer, pl_module: L.LightningModule) -> list[tuple[str, dict, dict]]:
        """[(dataset name, metrics to log (short keys), metrics for the JSON)] for every set."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.cfg.every_n_steps
        step = trainer.global_step
        if n and step > 0 and step % n == 0 and step != self._last_step:
            self._run(trainer, pl_module, log_with_module=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.cfg.on_validation_end:
            return
        if trainer.global_step == self._last_step:
            for k, v in self.last_metrics.items():  # evaluated at this step already: monitors only
                pl_module.log(k, float(v), logger=False, sync_dist=False, rank_zero_only=False)
            return
        self._run(trainer, pl_module, log_with_module=True)

    def on_train_end(self, trainer, pl_module) -> None:
        # The end-of-fit evaluation runs here, not in on_fit_end: by then the strategy has torn
        # down (model moved to the CPU, DeepSpeed engine gone). self.log is not allowed here.
        if self.cfg.on_fit_end and trainer.global_step != self._last_step:
            self._run(trainer, pl_module, log_with_module=False)

    # --------------------------------------------------------------------------------- machinery
    def encoders(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Encoders:
        model = pl_module.model
        dtype = next(model.visual.parameters()).dtype  # bf16-true / DeepSpeed keep weights in bf16
        forward_context = getattr(getattr(trainer, "precision_plugin", None), "forward_context", None)
        return model_encoders(
            model, pl_module.device, self.cfg.linear_probe_position,
            convert_input=lambda x: x.to(dtype),
            forward_context=forward_context or (lambda: torch.no_grad()),
        )

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, log_with_module: bool) -> None:
        if self._sets is None:
            self._sets = self.resolve()
        step = trainer.global_step
        with eval_mode(pl_module.model):
            results = self.evaluate(self.encoders(trainer, pl_module), trainer, pl_module)
        metrics = {}
        arch = getattr(pl_module.model, "config", None)
        model_name = self.model_name or (architecture_name(arch) if arch is not None else "clipl")
        pretrained = checkpoint_name(self.pretrained or str(self.out_dir), step)
        for name, logged, bench in results:
            metrics.update({f"val/{self.task}/{name}/{k}": v for k, v in logged.items()})
            if trainer.is_global_zero and self.out_dir is not None:
                write_result(Path(self.out_dir) / "eval", name, self.task, bench, model_name, pretrained, step=step)
        self._last_step = step
        self.last_metrics = metrics
        self._log(trainer, pl_module, metrics, log_with_module)

    def _log(self, trainer, pl_module, metrics: dict[str, float], log_with_module: bool) -> None:
        # Straight to the loggers: self.log's step metrics only reach them every log_every_n_steps,
        # which would drop most evaluations. (Logger methods run on rank 0 only.)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if log_with_module:
            for k, v in metrics.items():
                # For callback_metrics (checkpoint monitors, early stopping) on every rank; already
                # reduced and equal everywhere, hence no sync; logger=False: sent above.
                pl_module.log(k, float(v), logger=False, sync_dist=False, rank_zero_only=False)

    def wandb_loggers(self, trainer: L.Trainer) -> list:
        """The attached WandbLoggers (none when W&B is not installed or not used)."""
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            return []
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)] if trainer.is_global_zero else []
