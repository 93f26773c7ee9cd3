"""CLIPDataModule: train/val loaders from a DataConfig, with exactly resumable training iteration.

State = (epoch, batches consumed this epoch, per-rank per-worker raw cursors). A batch counts as
consumed in `on_after_batch_transfer` while the trainer is training: Lightning calls that hook right
before `training_step` (after its one-batch prefetch), so the count is exactly the batches that
entered a step. See docs/data.md for how this meets Lightning's checkpointing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from clipl.data.config import DataConfig
from clipl.data.sources import SHAPES, make_sources
from clipl.data.shard_plan import ElasticPlan, ResumePoint
from clipl.data.stream import CLIPStream
from clipl.ranks import initialized, rank_and_world

log = logging.getLogger(__name__)


class _EpochLoader(DataLoader):
    """A DataLoader that tells the datamodule when a new pass starts (before workers are forked)."""

    def __init__(self, dataset, on_iter, **kwargs):
        super().__init__(dataset, **kwargs)
        self._on_iter = on_iter

    def __iter__(self):
        self._on_iter()
        return super().__iter__()

    # Lightning checks the loader for state_dict/load_state_dict to decide whether a mid-epoch resume is
    # exact. The state lives on the datamodule (saved and restored by Lightning); these only say so.
    def state_dict(self) -> dict:
        return {"state_in": "CLIPDataModule"}

    def load_state_dict(self, state: dict) -> None:
        pass


class CLIPDataModule(L.LightningDataModule):
    """Image-text batches {image uint8 (B,3,H,W), text (B,L), key, skipped} from `cfg`.

    ``batch_size``: samples one rank's training loader yields per optimiser step, the batch plan's
    ``per_device_batch_size`` (micro-batch x accumulation; the CLIPModule splits it into micro-batches).
    ``val_batch_size``: validation batches (the plan's micro-batch; None: ``batch_size``).
    """

    def __init__(self, cfg: DataConfig, image_size: int, context_length: int, seed: int = 0, tokenizer=None,
                 *, batch_size: int, val_batch_size: Optional[int] = None):
        super().__init__()
        if cfg.train is None and cfg.val is None:
            raise ValueError("data.train and data.val are both unset; nothing to load")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.cfg, self.image_size, self.context_length = cfg, image_size, context_length
        self.seed, self.tokenizer = seed, tokenizer
        self.epoch = 0
        self.consumed = 0
        self.cursors: list[int] = [0] * max(1, cfg.num_workers)
        self._started = False
        self._pending: Optional[dict] = None
        self._elastic: Optional[ElasticPlan] = None
        self._train: Optional[CLIPStream] = None
        self._val: Optional[CLIPStream] = None
        if cfg.val is None:
            # No validation set: no val_dataloader hook at all, so Lightning skips the val loop (its
            # "validation_step but no val_dataloader" notice is filtered in clipl.quiet).
            self.val_dataloader = None

    # ------------------------------------------------------------------ topology
    def _world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        rank, world = rank_and_world()
        return world, rank

    # ------------------------------------------------------------------ building
    def prepare_data(self) -> None:
        # Local rank 0 generates the shapes set once; other ranks find it cached in setup().
        if SHAPES in (self.cfg.train or "").split("::") or SHAPES in (self.cfg.val or "").split("::"):
            from clipl.data.shapes import ensure_shapes

            ensure_shapes(self.cfg.shapes)

    def setup(self, stage: Optional[str] = None) -> None:
        world, rank = self._world()
        readers = world * max(1, self.cfg.num_workers)
        if self.cfg.train and self._train is None:
            srcs = make_sources(self.cfg.train, self.cfg, "train", "data.train", readers)
            self._train = CLIPStream(srcs, self.cfg, self.image_size, self.context_length, True, self.seed,
                                     self.tokenizer, self.cfg.train_weights, "data.train",
                                     batch_size=self.batch_size)
        if self.cfg.val and self._val is None:
            srcs = make_sources(self.cfg.val, self.cfg, "val", "data.val", readers)
            self._val = CLIPStream(srcs, self.cfg, self.image_size, self.context_length, False, self.seed,
                                   self.tokenizer, None, "data.val", batch_size=self.val_batch_size)
        for ds in (self._train, self._val):
            if ds is not None:
                ds.world_size, ds.rank = world, rank
        if self._train is not None:
            self._train.check_shards()
            self._train.epoch_size  # noqa: B018  (fail now, not in a worker, when the size is unknown)

    def _loader(self, ds: CLIPStream, on_iter) -> DataLoader:
        K = self.cfg.num_workers
        return _EpochLoader(ds, on_iter, batch_size=None, num_workers=K,
                            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
                            # Workers must be re-forked per pass: they read the epoch/resume point set
                            # in _begin_epoch from their copy of the dataset.
                            persistent_workers=False, prefetch_factor=2 if K > 0 else None)

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        if self._train is None:
            raise ValueError("data.train is unset; no training loader")
        return self._loader(self._train, self._begin_epoch)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self.setup("validate")
        if self._val is None:
            return []
        return self._loader(self._val, lambda: None)

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch on every rank."""
        if self._train is None:
            self.setup("fit")
        return len(self._train)

    # ------------------------------------------------------------------ epochs and resume
    def _begin_epoch(self) -> None:
        ds = self._train
        world, rank = self._world()
        ds.world_size, ds.rank = world, rank
        K = max(1, self.cfg.num_workers)
        resume = None
        if self._pending is not None:
            st, self._pending = self._pending, None
            switch = st["switch"]
            if switch is not None:  # saved on another topology: elastic resume (see ElasticPlan)
                size = ds.epoch_size
                per = max(1, size // (switch.batch_size * switch.world_size * switch.num_workers))
                if st["consumed"] >= per * switch.num_workers:  # saved at that topology's epoch end
                    self.epoch, self.consumed, self._elastic = st["epoch"] + 1, 0, None
                else:
                    self.epoch, self.consumed, self._elastic = st["epoch"], switch.offset, switch
                    self.cursors = [0] * K
                    resume = ResumePoint(0, list(self.cursors))
                    self._rescale_lightning_progress(switch.offset - switch.consumed)
            else:
                self._elastic = st["elastic"]
                ds.epoch, ds.elastic = st["epoch"], self._elastic
                if st["consumed"] >= self.batches_per_epoch:  # saved exactly at an epoch boundary
                    self.epoch, self.consumed, self._elastic = st["epoch"] + 1, 0, None
                else:
                    self.epoch, self.consumed = st["epoch"], st["consumed"]
                    self.cursors = list(st["cursors"][rank])
                    resume = ResumePoint(self.consumed - self._offset(), list(self.cursors))
        elif self._started and 0 < self.consumed < self.batches_per_epoch:
            # The previous pass stopped before the epoch's end. Lightning does this when it resumes
            # from an end-of-epoch checkpoint (it closes the restored epoch after one more batch), or
            # with limit_train_batches. The data epoch is not over: continue it where it stopped,
            # so the sample sequence stays that of an uninterrupted run.
            resume = ResumePoint(self.consumed - self._offset(), list(self.cursors))
        elif self._started:
            self.epoch, self.consumed, self._elastic = self.epoch + 1, 0, None
        if resume is None:
            self.cursors = [0] * K
        self._started = True
        ds.epoch, ds.resume, ds.elastic = self.epoch, resume, self._elastic

    def _offset(self) -> int:
        """Batches of this epoch consumed on the old topology, before an elastic resume, counted in
        batches of this topology (else 0)."""
        return self._elastic.offset if self._elastic is not None else 0

    def _rescale_lightning_progress(self, delta: int) -> None:
        """Lightning restored the epoch's batch counters in the old topology's batches; count them in
        this topology's, as the data now does, so the epoch ends where the data does and accumulation
        boundaries fall on whole global batches. Runs inside iter(train loader), after Lightning restored
        its loops and before its epoch loop resets on restart (which keeps the completed counts)."""
        if delta == 0 or self.trainer is None:
            return
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        for tracker in (progress.current, progress.total):
            for name in ("ready", "started", "processed", "completed"):
                setattr(tracker, name, getattr(tracker, name) + delta)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        meta = batch.pop("_loader", None) if isinstance(batch, dict) else None
        training = self.trainer is None or self.trainer.training
        if meta is not None and training and self._started:
            self.consumed += 1
            self.cursors[meta["worker"]] = meta["cursor"]
        return batch

    def state_dict(self) -> dict[str, Any]:
        world, rank = self._world()
        cursors = [list(map(int, self.cursors))]
        if world > 1 and initialized():
            # Raw cursors differ per rank (bad samples differ); checkpoints are written by rank 0 only.
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, cursors[0])
            cursors = gathered
        return {"epoch": int(self.epoch), "consumed": int(self.consumed), "world_size": int(world),
                "num_workers": int(self.cfg.num_workers), "batch_size": int(self.batch_size),
                "cursors": cursors, "elastic": None if self._elastic is None else asdict(self._elastic)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        world, _ = self._world()
        # Checkpoints from before elastic resume carry no batch size: it was the same as now or refused.
        saved = (int(state["world_size"]), int(state["num_workers"]), int(state.get("batch_size", self.batch_size)))
        now = (world, int(self.cfg.num_workers), int(self.batch_size))
        elastic = state.get("elastic")
        elastic = None if elastic is None else ElasticPlan(**elastic)
        cursors = [list(map(int, c)) for c in state["cursors"]]
        switch = None
        if saved != now:
            if elastic is not None:
                raise ValueError(
                    f"data loader state was saved while finishing an epoch that had been resumed on another "
                    f"topology (world_size={saved[0]}, data.num_workers={saved[1]}, per-device batch={saved[2]}); "
                    f"this run has world_size={now[0]}, num_workers={now[1]}, per-device batch={now[2]}. Resume "
                    "once more with the saved topology until that epoch ends, or from a checkpoint of an earlier "
                    "epoch end")
            samples = int(state["consumed"]) * saved[2] * saved[0]  # consumed over all old ranks
            offset, extra = divmod(samples, now[2] * now[0])
            if extra:
                log.warning("elastic resume: the %d samples consumed this epoch are not a whole number of batches "
                            "of %d x %d ranks (the global batch changed?); the epoch's batch count is rounded down",
                            samples, now[2], now[0])
            switch = ElasticPlan(world_size=saved[0], num_workers=max(1, saved[1]), cursors=cursors,
                                 consumed=int(state["consumed"]), batch_size=saved[2], offset=offset)
            log.info("resuming epoch %d on world_size=%d, data.num_workers=%d, per-device batch=%d (saved on %d, "
                     "%d, %d): the rest of the epoch is re-dealt to the new readers", int(state["epoch"]), *now, *saved)
        self._pending = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"]), "cursors": cursors,
                         "elastic": elastic, "switch": switch}
        self.epoch, self.consumed = self._pending["epoch"], self._pending["consumed"]
