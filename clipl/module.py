"""CLIPModule: the LightningModule that trains a CLIPModel with a contrastive objective.

The model (clipl.models.CLIPModel) knows nothing of Lightning; this system owns the objective, the
optimiser, logging and the non-finite-loss guard.

Optimisation is manual (Lightning's ``automatic_optimization = False``): one loader batch is one
optimiser step, split into the batch plan's micro-batches by :mod:`clipl.accumulation` (contrastive
accumulation: the loss covers all of them), so the Trainer never accumulates, and gradient clipping,
the non-finite skip and the LR schedule happen here (their strategy-aware parts in
:mod:`clipl.manual_step`). The common path of a step reads nothing from the
device: the skip is decided on the device and metrics are read at logging steps only
(docs/distributed.md lists the synchronisations that remain).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from clipl import manual_step
from clipl.accumulation import Backward, StepOutput, contrastive_step, plain_step, split_batch
from clipl.data.transforms import normalize
from clipl.distributed.plan import BatchPlan
from clipl.models.clip import CLIPOutput
from clipl.objectives import effective_logit_scale
from clipl.ranks import LOCAL
from clipl.rng import gather_rng_states, set_rng_state
from clipl.step_stats import StepStats, Window, in_batch_accuracy, mean_over_ranks

# Lightning 2.6 warns about every step checkpoint of a manually optimised module that its weights are
# those after the optimiser step: that is what clipl wants (as under automatic optimisation).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run cannot recover by skipping steps."""


def _as_run_config(config: Any) -> Any:
    from clipl.codec import from_container
    from clipl.config.schema import RunConfig

    return config if isinstance(config, RunConfig) else from_container(RunConfig, dict(config))


class CLIPModule(L.LightningModule):
    """Trains ``config.model`` with ``config.objective`` and ``config.optim`` (a RunConfig or its dict).

    Towers are built in :meth:`configure_model`, so under DeepSpeed ZeRO-3 they are sharded as they
    are created; the constructor only stores the configuration. ``plan`` (clipl.distributed.plan) says
    how each loader batch (``plan.per_device_batch_size`` samples) splits into micro-batches; None
    trains on each loader batch as one micro-batch, whatever its size.
    """

    def __init__(self, config: Any, plan: Optional[BatchPlan] = None) -> None:
        super().__init__()
        from clipl.codec import to_container

        self.config = _as_run_config(config)
        # Plain containers only, so checkpoints load with torch.load(weights_only=True). The plan is
        # not among them: it depends on the world a run is launched on, so the run resolves it anew.
        self.save_hyperparameters({"config": to_container(self.config)})
        self.plan = plan
        """How the loader's batch splits into micro-batches (None: the batch is one micro-batch)."""
        self.automatic_optimization = False  # see the module docstring
        self.model = None
        self.objective = None
        self._stats: Optional[StepStats] = None  # device counters, created at the first step
        self._nonfinite_loaded = 0  # non-finite steps before this process (from a checkpoint)
        self.samples_seen = 0
        self.skipped_samples: dict[str, int] = {}
        self._pending_rng: list | None = None  # per-rank RNG states of a restored checkpoint
        self._ds_drops: bool | None = None  # DeepSpeed discards non-finite steps itself (found once)

    # ----------------------------------------------------------------------------------- building
    def configure_model(self) -> None:
        if self.model is not None:  # idempotent: Lightning may call it more than once
            return
        from clipl.models.clip import CLIPModel
        from clipl.objectives import build_objective
        from clipl.optim import apply_locks

        objective = self.config.objective
        if self.plan is not None:
            # The plan fixes every rank's batch and split_batch checks it on the host each step: the
            # objective's own cross-rank check (an all-gather read by the host every step) is redundant.
            objective = dataclasses.replace(objective, check_batch_sizes=False)
        self.objective = build_objective(objective)
        # Validation batches (data.val) get the same loss, over each rank's own batch: no gathers, so
        # a short last batch or an uneven split of the val set across ranks cannot hang a collective.
        self.val_objective = build_objective(objective)
        self.val_objective.group = LOCAL
        model = CLIPModel.from_config(self.config.model)
        if self.config.model.init_from:  # pretrained towers (a resumed checkpoint still overwrites them)
            from clipl.models.init_from import init_from

            init_from(model, self.config.model.init_from, strict=self.config.model.init_from_strict)
        if self.config.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        apply_locks(model, self.config.optim)
        self.model = model.apply_switches(channels_last=self.config.trainer.channels_last,
                                          compile=self.config.trainer.compile)

    def configure_optimizers(self) -> Any:
        from clipl.distributed.deepspeed import optimizer_class_for
        from clipl.optim import build_optimizer, build_scheduler

        cfg = self.config.optim
        optimizer = build_optimizer(self.model, cfg, optimizer_class_for(self.config.trainer))
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------- training
    def _images(self, batch: dict) -> torch.Tensor:
        x = normalize(batch["image"])
        # bf16-true keeps the weights in bf16: feed the tower its own dtype (autocast handles -mixed).
        x = x.to(next(self.model.visual.parameters()).dtype)
        if self.config.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> Any:
        return self.model(images, tokens)

    def compute_loss(self, out: Any, objective: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The objective (default: the training one) in fp32, outside autocast, whatever the precision."""
        bias = out.logit_bias.float() if out.logit_bias is not None else None
        with torch.autocast(device_type=self.device.type, enabled=False):
            return (objective or self.objective)(
                out.image_features.float(), out.text_features.float(), out.logit_scale.float(), bias
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not at load time: the new loader iterator draws from the generators first,
        # which an uninterrupted run did before the checkpointed step, not after it.
        if self._pending_rng is not None:
            states, self._pending_rng = self._pending_rng, None
            if len(states) == self.trainer.world_size:
                set_rng_state(states[self.global_rank])

    @property
    def accumulation(self) -> int:
        """Micro-batches per device per optimiser step (1 without a plan)."""
        return self.plan.accumulation if self.plan is not None else 1

    def forward_backward(self, batch: dict, backward: Backward, mask: Optional[str] = None) -> StepOutput:
        """Every forward and backward of one optimiser step over ``batch`` (one rank's share of it).

        The batch is split into the plan's micro-batches; with contrastive accumulation the loss covers
        all of them (clipl.accumulation), otherwise each micro-batch's loss is backpropagated on its
        own, scaled by 1/k. ``backward(tensor, last)`` backpropagates one micro-batch; ``mask`` says
        what a non-finite step backpropagates (default: what this run's strategy and precision need).
        """
        micro_size = self.plan.micro_batch_size if self.plan is not None else None
        micro = split_batch(batch, self.accumulation, micro_size)
        mask = self._nonfinite_mask() if mask is None else mask

        def objective(image, text, scale, bias):
            return self.compute_loss(CLIPOutput(image, text, scale, bias))

        if self.plan is not None and not self.plan.contrastive_accumulation and len(micro) > 1:
            return plain_step(self._encode, objective, micro, backward, mask=mask)
        return contrastive_step(self._encode, objective, micro, backward, model=self.model, device=self.device,
                                mask=mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logging_step = self._is_logging_step()
        step = self.forward_backward(batch, self._backward)
        self._count_samples(batch)
        self._optimizer_step(step.finite)
        if self._stats is None:
            self._stats = StepStats(step.loss.device, nonfinite_steps=self._nonfinite_loaded)
        self._stats.update(step.loss, step.finite)
        if logging_step:
            self._log_step(step)
        return step.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """val/loss (the objective over each rank's batch of ``trainer.micro_batch_size``) and in-batch
        top-1 retrieval both ways, averaged over the validation set and all ranks."""
        out = self._encode(batch)
        i2t, t2i = in_batch_accuracy(out.image_features, out.text_features)
        for name, value in (("loss", self.compute_loss(out, self.val_objective)), ("acc_i2t", i2t), ("acc_t2i", t2i)):
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=out.image_features.shape[0])

    def _encode(self, micro: dict) -> Any:
        return self.model(self._images(micro), micro["text"])

    def _backward(self, tensor: torch.Tensor, last: bool) -> None:
        """Backpropagate one micro-batch; gradients are reduced across ranks on the last one only."""
        manual_step.backward(self, tensor, last, self.accumulation)

    def _nonfinite_mask(self) -> str:
        if self._ds_drops is None and isinstance(self.trainer.strategy, DeepSpeedStrategy):
            self._ds_drops = manual_step.deepspeed_drops(self.trainer.strategy.deepspeed_engine)  # found once
        return manual_step.nonfinite_mask(self.trainer, bool(self._ds_drops))

    def _optimizer_step(self, finite: torch.Tensor) -> None:
        """Step (or, for a non-finite loss on any rank, skip) the optimiser and the LR schedule."""
        manual_step.optimizer_step(self, finite)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        manual_step.clip_gradients(self.trainer, optimizer, self.config.trainer.gradient_clip_val)

    def _count_samples(self, batch: dict) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        self.samples_seen += int(batch["text"].shape[0]) * world
        for reason, n in (batch.get("skipped") or {}).items():
            self.skipped_samples[reason] = self.skipped_samples.get(reason, 0) + int(n)

    # ------------------------------------------------------------------------------------ logging
    def _is_logging_step(self) -> bool:
        """Whether this step's metrics are logged: Lightning's log_every_n_steps, and the run's last step."""
        if self._trainer is None:
            return True
        step = self.global_step + 1  # the number of this optimiser step once taken
        max_steps = self.trainer.max_steps
        return (step % self.trainer.log_every_n_steps == 0 or bool(self.trainer.is_last_batch)
                or (max_steps is not None and 0 < max_steps <= step))

    def contrastive_batch_size(self, local_batch: int) -> int:
        """Pairs one loss sees: the plan's contrastive batch, or one loader batch per rank."""
        if self.plan is not None:
            return self.plan.contrastive_batch_size
        return local_batch * (self.trainer.world_size if self._trainer is not None else 1)

    def _log_step(self, step: StepOutput) -> None:
        """Everything this step logs. The host reads the device here only, once (docs/distributed.md)."""
        counters = self._stats.take()  # (non-finite total, longest run, window loss mean)
        nan = torch.full_like(step.loss, float("nan"))
        # Each rank's loss is its rows of the global matrix; their mean over ranks is the global loss.
        # The window's finite steps are the same on every rank (the skip is decided together).
        losses = mean_over_ranks(torch.stack([torch.where(step.finite, step.loss, nan), counters[2]]))
        scale = effective_logit_scale(step.logit_scale.float(), self.config.objective.max_logit_scale)
        i2t, t2i = in_batch_accuracy(step.image_features, step.text_features)
        names = ["train/loss", "train/logit_scale", "train/temperature", "train/acc_i2t", "train/acc_t2i"]
        values = [losses[0], scale, 1.0 / scale, i2t, t2i]
        if step.logit_bias is not None:
            names.append("train/logit_bias")
            values.append(step.logit_bias.float())
        read = torch.cat([counters[:2], losses[1:], torch.stack([v.reshape(()).float() for v in values])]).tolist()
        window = Window.of(read[:3])
        host = dict(zip(names, read[3:]))
        limit = self.config.loop.max_nonfinite_steps
        if window.longest_nonfinite_run >= limit:
            raise NonFiniteLossError(
                f"{window.longest_nonfinite_run} consecutive non-finite losses (loop.max_nonfinite_steps="
                f"{limit}); lower optim.lr, enable trainer.gradient_clip_val, or use bf16 instead of fp16"
            )
        if window.loss_mean is not None:  # finite steps since the last log, over all ranks
            host["train/loss_avg"] = window.loss_mean
        host["train/samples_seen"] = float(self.samples_seen)
        host["train/nonfinite_steps"] = float(window.nonfinite_steps)
        host["train/contrastive_batch"] = float(self.contrastive_batch_size(step.image_features.shape[0]))
        for reason, n in self.skipped_samples.items():
            host[f"data/skipped/{reason}"] = float(n)
        if self._trainer is not None and self.trainer.optimizers:
            for i, group in enumerate(self.trainer.optimizers[0].param_groups):
                host[f"train/lr/{group.get('name', i)}"] = float(group["lr"])
        for name, value in host.items():
            # Host tensors: Lightning converts progress-bar values with .item() after every later step,
            # which on a device tensor would wait for that step's kernels.
            self.log(name, torch.tensor(value, dtype=torch.float32), prog_bar=name == "train/loss")

    @property
    def nonfinite_steps(self) -> int:
        """Optimiser steps skipped for a non-finite loss, over the whole run (reads the device counter)."""
        return self._stats.nonfinite_total() if self._stats is not None else self._nonfinite_loaded

    @nonfinite_steps.setter
    def nonfinite_steps(self, value: int) -> None:
        self._nonfinite_loaded = int(value)
        self._stats = None  # recreated from the loaded count at the next step

    # ----------------------------------------------------------------------------- checkpointing
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["clipl"] = {
            "samples_seen": self.samples_seen,
            "nonfinite_steps": self.nonfinite_steps,
            "skipped_samples": dict(self.skipped_samples),
            "rng": gather_rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("clipl")
        if state is not None:
            self.samples_seen = int(state["samples_seen"])
            self.nonfinite_steps = int(state["nonfinite_steps"])
            self.skipped_samples = dict(state["skipped_samples"])
            self._pending_rng = state["rng"] if "rng" in state else None
        self.configure_model()  # load_from_checkpoint restores weights into built towers
