"""The epoch plan of the training stream: which reader (rank x worker) reads which shards, in which
order, and where a resumed reader restarts. Pure functions of sizes, seeds and positions: no I/O.

- :func:`units` / :func:`deal`: an epoch's shards are permuted (by the caller's seeded RNG) and dealt to
  the readers, largest first to the reader with the fewest samples when every size is known (equal
  shares however uneven the shards), round-robin otherwise; with fewer shards than readers every shard
  is cut into parts (every k-th sample).
- :func:`interleave`: a reader reads its units a few at a time, each next sample drawn from one of
  them in proportion to the samples it has left.
- :func:`shuffle_buffer`: the seeded sample shuffle after that.
- :class:`ResumePoint` / :class:`ElasticPlan`: where a stopped run's readers were (same topology), or
  what is left of an epoch started on another one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

Unit = tuple[int, int, int]  # (shard index, part, parts): every `parts`-th sample of a shard from `part`


@dataclass
class ResumePoint:
    """Where one rank's iteration restarts: batches consumed on this rank and per-worker raw cursors."""

    consumed: int
    cursors: list[int] = field(default_factory=list)


@dataclass
class ElasticPlan:
    """The rest of an epoch that was started on another topology (world size, workers, batch size).

    Old reader g = rank * workers + worker had taken ``cursors[rank][worker]`` raw samples out of its
    shuffle buffer when the checkpoint was written. What remains of the epoch is, for every old reader
    in order, the rest of its first pass over its shards, in the order it would have produced them:
    concatenated, this is one sequence that every new reader can rebuild; new rank r takes its items
    r, r + W', r + 2W', ... and its workers take consecutive batch-sized chunks of those in turn. So no
    sample is taken twice and none is left out, whatever the new topology; the order differs from the
    uninterrupted run's.
    """

    world_size: int
    num_workers: int
    cursors: list[list[int]]
    consumed: int
    """Batches each old rank had consumed (Lightning's restored batch count in this epoch)."""
    batch_size: int
    """The old per-rank loader batch size."""
    offset: int
    """The same consumed part in batches of the new topology (the epoch's batch index continues from
    here)."""


def shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir-style shuffle: emit a random element of a `size`-element buffer per new item."""
    if size <= 1:
        yield from items
        return
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


def units(n_shards: int, readers: int) -> list[Unit]:
    """What is dealt to the readers: whole shards, or each shard cut into k parts when there are
    fewer shards than readers (every reader then reads the shard and keeps every k-th sample)."""
    # k parts per shard so that n * k is a multiple of the readers: every reader gets as many parts.
    k = 1 if n_shards >= readers else readers // math.gcd(n_shards, readers)
    return [(j, p, k) for j in range(n_shards) for p in range(k)]


def unit_size(sizes: list[Optional[int]], unit: Unit) -> Optional[int]:
    """Samples in ``unit`` given the shards' ``sizes`` (None: unknown)."""
    j, p, k = unit
    return None if sizes[j] is None else len(range(p, sizes[j], k))


def deal(all_units: list[Unit], sizes: list[Optional[int]], order: np.ndarray, readers: int) -> list[list[Unit]]:
    """Units per reader, in `order`: largest first to the reader with the fewest samples so far when
    every size is known (equal shares however uneven the shards), round-robin otherwise."""
    unit_sizes = [unit_size(sizes, all_units[i]) for i in order]
    if any(n is None for n in unit_sizes):
        return [[all_units[int(i)] for i in order[g::readers]] for g in range(readers)]
    dealt: list[list[Unit]] = [[] for _ in range(readers)]
    load = np.zeros(readers, np.int64)
    for rank_in_order in np.argsort(-np.asarray(unit_sizes), kind="stable"):  # ties keep the random order
        g = int(np.argmin(load))
        dealt[g].append(all_units[int(order[rank_in_order])])
        load[g] += unit_sizes[rank_in_order]
    return dealt


def interleave(mine: list[Unit], read: Callable[[Unit], Iterator], sizes: list[Optional[int]], open_units: int,
               rng: np.random.Generator) -> Iterator:
    """The samples of the units ``mine`` (``read(unit)`` yields them), each next one drawn from one of at
    most ``open_units`` open units with probability in proportion to the samples it has left (equal odds
    when sizes are unknown): a run of samples mixes the shards as the whole set does, not one after another."""
    pending, live = list(mine), []  # live: [iterator, samples left (or None)]
    while pending or live:
        while pending and len(live) < max(1, open_units):
            unit = pending.pop(0)
            live.append([read(unit), unit_size(sizes, unit)])
        known = all(left is not None for _, left in live)
        weights = np.array([max(left, 1) if known else 1 for _, left in live], np.float64)
        pick = int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum(), side="right"))
        pick = min(pick, len(live) - 1)
        try:
            item = next(live[pick][0])
        except StopIteration:
            live.pop(pick)
            continue
        if live[pick][1] is not None:
            live[pick][1] -= 1
        yield item


def first_pass_left(plan: ElasticPlan, sizes: list[int], rng: np.random.Generator) -> int:
    """Raw samples the old readers of ``plan`` had left of the epoch's first pass (``rng`` draws that
    pass's shard order, as the stream did; every size known)."""
    K = plan.num_workers
    G = plan.world_size * K
    all_units = units(len(sizes), G)
    left = 0
    for g, mine in enumerate(deal(all_units, sizes, rng.permutation(len(all_units)), G)):
        left += max(0, sum(unit_size(sizes, u) for u in mine) - plan.cursors[g // K][g % K])
    return left


def check_weights(weights: list[float], n_sources: int, allowed: bool, field: str) -> None:
    """``data.train_weights``: one non-negative weight per source, a positive sum, and ``allowed``
    (resampled training: the weights set shard sampling rates)."""
    if len(weights) != n_sources:
        raise ValueError(f"{field}_weights has {len(weights)} entries for {n_sources} sources")
    if not allowed:
        raise ValueError(f"{field}_weights needs data.resampled=true (weights set shard sampling rates)")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{field}_weights must be non-negative with a positive sum, got {weights}")


def shard_draw_probabilities(shards_per_source: list[int], weights: Optional[list[float]]) -> np.ndarray:
    """Resampling: each shard's probability of being drawn. A source's share of draws is its weight
    (equal without weights); within a source every shard is equally likely."""
    w = np.ones(len(shards_per_source)) if weights is None else np.asarray(weights, np.float64)
    p = np.concatenate([np.full(int(n), wi / n) for wi, n in zip(w, shards_per_source)])
    return p / p.sum()
