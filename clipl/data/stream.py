"""The per-worker sample stream: reading the epoch plan, decode, batching, exact resume.

Every worker's stream is a pure function of (seed, epoch, rank, worker): which shards it reads and in
which order is clipl.data.shard_plan's (seeded by (seed, epoch)); its samples are decoded and cut into
a fixed number of batches per worker (so every rank yields the same number). Per-sample randomness
(crop, caption choice) is seeded by the sample's key, so it does not depend on where in the stream
the sample lands.

Resume: each batch carries `_loader` = {worker, cursor, batch}; `cursor` counts raw samples the
worker has taken out of its shuffle buffer. Resuming replays the raw stream through the shuffle
buffer up to the cursor without decoding anything, then continues."""

from __future__ import annotations

import math
import zlib
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipl.data.config import DataConfig
from clipl.data import shard_plan
from clipl.data.skip import BadSample, SkipCounter
from clipl.data.transforms import decode_image

Tokenizer = Callable[[list, int], torch.Tensor]
_SHUFFLE_STREAM, _RESAMPLE_STREAM, _PLAN_STREAM, _MIX_STREAM, _ELASTIC_STREAM = 1, 2, 3, 4, 5  # distinct RNG streams


class CLIPStream(IterableDataset):
    """Batches of (uint8 images, tokens, keys) from a list of sources, split over ranks and workers."""

    def __init__(self, sources: list, cfg: DataConfig, image_size: int, context_length: int, train: bool,
                 seed: int = 0, tokenizer: Optional[Tokenizer] = None, weights: Optional[list[float]] = None,
                 field: str = "data.train", *, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"{field}: the loader batch size must be >= 1, got {batch_size}")
        self.sources, self.cfg, self.train, self.seed = sources, cfg, train, seed
        self.batch_size = batch_size  # samples per yielded batch (from the run's batch plan)
        self.image_size, self.context_length, self.tokenizer = image_size, context_length, tokenizer
        self.field = field
        self.shards = [(i, u) for i, s in enumerate(sources) for u in s.shards]
        self.sizes = [n for s in sources for n in s.sizes]
        self.epoch, self.rank, self.world_size = 0, 0, 1
        self.num_workers = max(1, cfg.num_workers)
        self.resume: Optional[shard_plan.ResumePoint] = None
        self.elastic: Optional[shard_plan.ElasticPlan] = None
        if weights is not None:
            shard_plan.check_weights(weights, len(sources), cfg.resampled or not train, field)
        self.weights = weights

    # ------------------------------------------------------------------ epoch geometry
    @property
    def epoch_size(self) -> int:
        """Samples per epoch over all ranks (config, else the shards' sizes.json / *_stats.json)."""
        if self.cfg.epoch_size is not None:
            return self.cfg.epoch_size
        if all(n is not None for n in self.sizes):
            return int(sum(self.sizes))
        patterns = " :: ".join(s.pattern for s in self.sources)
        raise ValueError(f"data.epoch_size: cannot tell how many samples {patterns!r} holds (no sizes.json "
                         "or *_stats.json next to the shards); set data.epoch_size")

    def batches_per_worker(self) -> int:
        # floor, so no worker has to repeat samples when shards are equal; at least one batch each.
        per = self.epoch_size // (self.batch_size * self.world_size * self.num_workers)
        return max(1, per)

    def __len__(self) -> int:
        if self.train and self.elastic is not None:
            # Lightning restores the epoch's batch count (converted to this topology's batches) and ends
            # the epoch when it reaches len(): the consumed part plus what remains.
            return self.elastic.offset + self.elastic_batches()
        if self.train:
            return self.batches_per_worker() * self.num_workers
        if any(n is None for n in self.sizes):
            raise TypeError("validation length unknown (no shard sizes)")
        b = self.batch_size
        total = 0
        for w in range(self.num_workers):
            g, G = self.rank * self.num_workers + w, self.world_size * self.num_workers
            total += math.ceil(sum(self.sizes[i] for i in range(g, len(self.shards), G)) / b)
        return total

    def check_shards(self) -> None:
        """Without resampling every worker of every rank needs samples of its own (shards are split into
        parts when there are fewer than readers, but a part cannot be smaller than one sample)."""
        need = self.world_size * self.num_workers
        known = None if any(n is None for n in self.sizes) else sum(self.sizes)
        if self.train and not self.cfg.resampled and known is not None and known < need:
            raise ValueError(
                f"{self.field}: {known} samples for {self.world_size} ranks x data.num_workers={self.num_workers} "
                f"= {need} readers; use fewer data.num_workers, or data.resampled=true")

    # ------------------------------------------------------------------ raw streams
    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *stream])

    def _read(self, shard_index: int, counter: SkipCounter) -> Iterator:
        si, url = self.shards[shard_index]
        for key, members in self.sources[si].iter_shard(url, counter):
            yield si, key, members

    def _read_unit(self, unit: shard_plan.Unit, counter: SkipCounter) -> Iterator:
        j, p, k = unit
        items = self._read(j, counter)
        return items if k == 1 else (item for i, item in enumerate(items) if i % k == p)

    def _train_passes(self, worker: int, counter: SkipCounter, rank: Optional[int] = None,
                      world_size: Optional[int] = None, num_workers: Optional[int] = None) -> Iterator[Iterator]:
        """Endless sequence of passes over one worker's shards (one pass each, freshly permuted).

        Passes are shuffled separately so the buffer's read-ahead never pulls the next pass's
        (repeated) samples into this one: a worker with enough data never repeats a sample in an epoch.
        ``rank``/``world_size``/``num_workers`` select another topology's reader (elastic resume).
        """
        rank = self.rank if rank is None else rank
        K = self.num_workers if num_workers is None else num_workers
        G = (self.world_size if world_size is None else world_size) * K
        g = rank * K + worker
        if self.cfg.resampled:
            yield self._resampled_raw(g, counter)
            return
        plan = shard_plan.units(len(self.shards), G)
        for pass_index in range(1_000_000):
            order = self._rng(_PLAN_STREAM, pass_index).permutation(len(plan))
            mine = shard_plan.deal(plan, self.sizes, order, G)[g]
            mix = self._rng(_MIX_STREAM, pass_index, g)
            got = []

            def one_pass():
                read = lambda unit: self._read_unit(unit, counter)  # noqa: E731
                for item in shard_plan.interleave(mine, read, self.sizes, self.cfg.open_shards, mix):
                    got.append(True)
                    yield item

            yield one_pass()
            if not got:
                raise RuntimeError(f"{self.field}: worker {g} read no samples from its shards "
                                   f"{[self.shards[j][1] for j, _, _ in mine]} (all missing or unreadable)")

    def _resampled_raw(self, g: int, counter: SkipCounter, stream: int = _RESAMPLE_STREAM) -> Iterator:
        p = shard_plan.shard_draw_probabilities([len(s.shards) for s in self.sources], self.weights)
        rng = self._rng(stream, self.rank, g)
        empty = 0
        while True:
            got = False
            for item in self._read(int(rng.choice(len(self.shards), p=p)), counter):
                got = True
                yield item
            empty = 0 if got else empty + 1
            if empty >= 100:
                raise RuntimeError(f"{self.field}: 100 resampled shards in a row gave no samples")

    # ------------------------------------------------------------------ elastic resume
    def _old_reader_rest(self, plan: shard_plan.ElasticPlan, g: int) -> Iterator:
        """Old reader g's raw samples after its cursor, to the end of its first pass, in its order."""
        rank, worker = divmod(g, plan.num_workers)
        rng = self._rng(_SHUFFLE_STREAM, rank, worker)
        first_pass = next(self._train_passes(worker, SkipCounter(1.0), rank, plan.world_size, plan.num_workers))
        stream = shard_plan.shuffle_buffer(first_pass, self.cfg.shuffle_buffer, rng)
        for _ in range(plan.cursors[rank][worker]):  # replay what that reader had consumed, no decoding
            if next(stream, None) is None:
                return
        yield from stream

    def _elastic_remaining(self) -> int:
        """Raw samples left in the epoch over all old readers (from the shard sizes)."""
        plan = self.elastic
        if self.cfg.resampled:  # draws with replacement: what is left is a count, not a set of samples
            return max(0, self.epoch_size - plan.consumed * plan.batch_size * plan.world_size)
        if any(n is None for n in self.sizes):
            raise ValueError(f"{self.field}: resuming on another topology needs every shard's size "
                             "(sizes.json or *_stats.json next to the shards)")
        return shard_plan.first_pass_left(plan, self.sizes, self._rng(_PLAN_STREAM, 0))  # the epoch's first pass

    def elastic_batches(self) -> int:
        """Batches each new rank yields for the rest of an elastically resumed epoch: its equal share of
        what is left, in whole batches (exact when the rest divides by ranks x batch size, as it does
        when the global batch is kept: the rest is then a whole number of global batches)."""
        return self._elastic_remaining() // self.world_size // self.batch_size

    def _elastic_stream(self, worker: int) -> Iterator:
        """This reader's share of the old readers' rests, concatenated: rank r takes items r, r + W', ...;
        within the rank, consecutive batch-sized chunks go to the workers in turn, the order in which the
        DataLoader collects their batches. Repeated from its start only if bad samples leave it short."""
        plan = self.elastic
        W, B, K = self.world_size, self.batch_size, self.num_workers
        if self.cfg.resampled:  # fresh draws, from RNG streams no reader of either topology used
            yield from self._resampled_raw(self.rank * K + worker, SkipCounter(1.0), _ELASTIC_STREAM)
            return
        G_old = plan.world_size * plan.num_workers
        while True:
            i = 0
            for g in range(G_old):
                for item in self._old_reader_rest(plan, g):
                    if i % W == self.rank and (i // W // B) % K == worker:
                        yield item
                    i += 1

    # ------------------------------------------------------------------ decoding and batching
    def _decode_counted(self, item: tuple, counter: SkipCounter) -> Optional[tuple[np.ndarray, str, str]]:
        """(pixels, caption, key) of one raw sample (si, key, members), counted as good; None, counted
        under its skip reason, when it is bad. Randomness (crop, caption choice) is seeded by the key."""
        si, key, members = item
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(key.encode()), si])
        try:
            image, caption = self.sources[si].extract(members, rng)
            pixels = decode_image(image, self.image_size, self.train, rng, self.cfg.max_image_pixels,
                                  self.cfg.draft_decode)
        except BadSample as e:
            counter.skip(e.reason)
            return None
        counter.ok()
        return pixels, caption, key

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            from clipl.tokenizer import get_tokenizer

            self.tokenizer = get_tokenizer()
        return self.tokenizer(captions, self.context_length)

    def _batch(self, samples: list[tuple[np.ndarray, str, str]], counter: SkipCounter, meta: dict) -> dict:
        images, captions, keys = zip(*samples)
        return {"image": torch.from_numpy(np.stack(images)), "text": self._tokenize(list(captions)),
                "key": list(keys), "skipped": counter.flush(), "_loader": meta}

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        phys, n = (0, 1) if info is None else (info.id, info.num_workers)
        if n != self.num_workers:
            raise RuntimeError(f"CLIPStream built for {self.num_workers} workers runs under {n}")
        return phys, n

    def __iter__(self) -> Iterator[dict]:
        counter = SkipCounter(self.cfg.max_skip_rate, self.cfg.skip_check_after)
        phys, K = self._worker()
        if not self.train:
            yield from self._iter_val(phys, counter)
            return
        resume = self.resume or shard_plan.ResumePoint(0)
        # Rotate logical worker ids so the DataLoader's round-robin continues where the stopped run was.
        worker = (phys + resume.consumed) % K
        done = max(0, -(-(resume.consumed - worker) // K))
        cursor = resume.cursors[worker] if resume.cursors else 0
        if self.elastic is not None:
            quota = len(range(worker, self.elastic_batches(), K))  # this worker's turns among the rank's batches
            stream = self._elastic_stream(worker)
        else:
            self.check_shards()
            quota = self.batches_per_worker()
            rng = self._rng(_SHUFFLE_STREAM, self.rank, worker)
            stream = (item for one in self._train_passes(worker, counter)
                      for item in shard_plan.shuffle_buffer(one, self.cfg.shuffle_buffer, rng))
        for _ in range(cursor):  # replay without decoding
            next(stream)
        counter.total.clear(), counter.flush()
        samples = []
        while done < quota:
            cursor += 1
            sample = self._decode_counted(next(stream), counter)
            if sample is None:
                continue
            samples.append(sample)
            if len(samples) == self.batch_size:
                done += 1
                yield self._batch(samples, counter, {"worker": worker, "cursor": cursor, "batch": done})
                samples = []
        counter.check(final=True)

    def _iter_val(self, worker: int, counter: SkipCounter) -> Iterator[dict]:
        """All samples of this worker's shards once, in order; the last batch may be short.

        A full batch is held back until the next good sample (or the end) so that skips found in
        between, including shards failing after the last sample, are reported with it.
        """
        G, g = self.world_size * self.num_workers, self.rank * self.num_workers + worker
        samples, ready, n = [], None, 0
        for j in range(g, len(self.shards), G):
            for item in self._read(j, counter):
                sample = self._decode_counted(item, counter)
                if sample is None:
                    continue
                if ready is not None:
                    yield self._batch(ready, counter, {"worker": worker, "cursor": 0, "batch": n})
                    ready = None
                samples.append(sample)
                if len(samples) == self.batch_size:
                    n += 1
                    ready, samples = samples, []
        if ready is not None:
            yield self._batch(ready, counter, {"worker": worker, "cursor": 0, "batch": n})
        if samples:
            yield self._batch(samples, counter, {"worker": worker, "cursor": 0, "batch": n + 1})
        counter.check(final=True)
