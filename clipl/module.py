"""CLIPModule: the LightningModule that trains a CLIPModel with a contrastive objective.

The model (clipl.models.CLIPModel) knows nothing of Lightning; this system owns the objective, the
optimiser, logging and the non-finite-loss guard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn

from clipl.data.transforms import normalize
from clipl.distributed.deepspeed import drops_nonfinite_steps, skip_step_loss
from clipl.objectives import effective_logit_scale
from clipl.rng import gather_rng_states, set_rng_state


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run cannot recover by skipping steps."""


def _as_run_config(config: Any) -> Any:
    from clipl.config.io import from_container
    from clipl.config.schema import RunConfig

    return config if isinstance(config, RunConfig) else from_container(RunConfig, dict(config))


class CLIPModule(L.LightningModule):
    """Trains ``config.model`` with ``config.objective`` and ``config.optim`` (a RunConfig or its dict).

    Towers are built in :meth:`configure_model`, so under DeepSpeed ZeRO-3 they are sharded as they
    are created; the constructor only stores the configuration.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        from clipl.config.io import to_container

        self.config = _as_run_config(config)
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"config": to_container(self.config)})
        self.model = None
        self.objective = None
        self._nonfinite_in_window = False  # any non-finite micro-batch since the last optimiser step
        self._consecutive_nonfinite = 0
        self.nonfinite_steps = 0
        self.samples_seen = 0
        self.skipped_samples: dict[str, int] = {}
        self._pending_rng: list | None = None  # per-rank RNG states of a restored checkpoint
        self._ds_drops: bool | None = None  # DeepSpeed discards non-finite steps itself (found once)

    # ----------------------------------------------------------------------------------- building
    def model_config(self) -> Any:
        """The model config, with the objective's initial temperature/bias when it needs a bias."""
        cfg, ocfg = self.config.model, self.config.objective
        if ocfg.init_logit_bias is not None and cfg.init_logit_bias is None:
            cfg = dataclasses.replace(
                cfg, init_logit_scale=ocfg.init_logit_scale, init_logit_bias=ocfg.init_logit_bias
            )
        return cfg

    def configure_model(self) -> None:
        if self.model is not None:  # idempotent: Lightning may call it more than once
            return
        from clipl.models.clip import CLIPModel
        from clipl.objectives import build_objective
        from clipl.optim import apply_locks
        from clipl.trainer import apply_model_switches

        self.objective = build_objective(self.config.objective)
        model = CLIPModel.from_config(self.model_config())
        if self.config.model.init_from:  # pretrained towers (a resumed checkpoint still overwrites them)
            from clipl.models.init_from import init_from

            init_from(model, self.config.model.init_from, strict=self.config.model.init_from_strict)
        if self.config.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        apply_locks(model, self.config.optim)
        self.model = apply_model_switches(model, self.config.trainer)  # channels_last, compile

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

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite on every rank (one tiny all-reduce; every rank agrees)."""
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def compute_loss(self, out: Any) -> torch.Tensor:
        """The objective in fp32, outside autocast, whatever the training precision."""
        bias = out.logit_bias.float() if out.logit_bias is not None else None
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.objective(
                out.image_features.float(), out.text_features.float(), out.logit_scale.float(), bias
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored here, not at load time: the new loader iterator draws from the generators first,
        # which an uninterrupted run did before the checkpointed step, not after it.
        if self._pending_rng is not None:
            states, self._pending_rng = self._pending_rng, None
            if len(states) == self.trainer.world_size:
                set_rng_state(states[self.global_rank])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(self._images(batch), batch["text"])
        loss = self.compute_loss(out)
        finite = self._all_finite(loss)
        self._count_samples(batch)
        self._log_step(loss, out, batch, finite)
        if not finite:
            # Every rank still runs backward (DDP needs its gradient all-reduce to happen); the
            # gradients are dropped in on_before_optimizer_step, so no rank takes the step.
            self._nonfinite_in_window = True
            if isinstance(self.trainer.strategy, DeepSpeedStrategy):
                # DeepSpeed keeps gradients in its own buffers and always steps; make it drop the step.
                return skip_step_loss((out.image_features, out.text_features), self._deepspeed_drops())
        return loss

    def _deepspeed_drops(self) -> bool:
        if self._ds_drops is None:
            self._ds_drops = drops_nonfinite_steps(self.trainer.strategy.deepspeed_engine)
            if not self._ds_drops:
                rank_zero_warn(
                    "this DeepSpeed engine does not discard steps with non-finite gradients by itself; "
                    "non-finite steps backpropagate zeros instead (Adam's moments decay on those steps); "
                    "upgrade DeepSpeed, or keep bf16.check_grad_overflow on, for exact skips"
                )
        return self._ds_drops

    def _count_samples(self, batch: dict) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        self.samples_seen += int(batch["text"].shape[0]) * world
        for reason, n in (batch.get("skipped") or {}).items():
            self.skipped_samples[reason] = self.skipped_samples.get(reason, 0) + int(n)

    def _log_step(self, loss: torch.Tensor, out: Any, batch: dict, finite: bool) -> None:
        scale = effective_logit_scale(out.logit_scale.detach().float(), self.config.objective.max_logit_scale)
        with torch.no_grad():
            logits = out.image_features.detach().float() @ out.text_features.detach().float().T
            target = torch.arange(logits.shape[0], device=logits.device)
            i2t = (logits.argmax(dim=1) == target).float().mean()
            t2i = (logits.argmax(dim=0) == target).float().mean()
        # Each rank's loss is its rows of the global matrix; their mean is the global loss.
        self.log("train/loss", loss.detach() if finite else torch.nan, prog_bar=True, sync_dist=True)
        self.log("train/logit_scale", scale)
        self.log("train/temperature", 1.0 / scale)
        self.log("train/acc_i2t", i2t)
        self.log("train/acc_t2i", t2i)
        self.log("train/samples_seen", float(self.samples_seen))
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if out.logit_bias is not None:
            self.log("train/logit_bias", out.logit_bias.detach().float())
        for reason, n in self.skipped_samples.items():
            self.log(f"data/skipped/{reason}", float(n))
        if self._trainer is not None and self.trainer.optimizers:
            for i, group in enumerate(self.trainer.optimizers[0].param_groups):
                self.log(f"train/lr/{group.get('name', i)}", group["lr"])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._nonfinite_in_window:
            self._consecutive_nonfinite = 0
            return
        self._nonfinite_in_window = False
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        limit = self.config.loop.max_nonfinite_steps
        if self._consecutive_nonfinite >= limit:
            raise NonFiniteLossError(
                f"{self._consecutive_nonfinite} consecutive non-finite losses (loop.max_nonfinite_steps="
                f"{limit}); lower optim.lr, enable trainer.gradient_clip_val, or use bf16 instead of fp16"
            )
        # AdamW skips parameters without gradients entirely (no moment update, no weight decay),
        # so dropping every gradient skips the step exactly. fp16 loss scaling skips by itself.
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

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
