"""Exact resume: stop after k batches, restore the state dict, the remaining keys equal an uninterrupted run."""

from __future__ import annotations

import io

import pytest
import torch

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from clipl.data.shapes import write_tar
from datafixtures import jpeg, stand_in_tokenizer


@pytest.fixture
def shards(tmp_path):
    """6 uneven shards; every 7th sample has an empty caption, so raw cursors and batch counts diverge."""
    img = jpeg()
    sizes = [23, 17, 30, 11, 26, 19]
    for s, n in enumerate(sizes):
        samples = [(f"k{s}_{i:03d}", {"jpg": img, "txt": b" " if (s * 100 + i) % 7 == 0 else f"c {s} {i}".encode()})
                   for i in range(n)]
        write_tar(tmp_path / f"r-{s}.tar", samples)
    return str(tmp_path / "r-{0..5}.tar")


def make(pattern, workers):
    cfg = DataConfig(train=pattern, num_workers=workers, shuffle_buffer=10, epoch_size=100,
                     max_skip_rate=1.0)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, seed=7, tokenizer=stand_in_tokenizer, batch_size=3)
    dm.setup()
    return dm


def run_epoch(dm, stop_after=None):
    """Iterate like Lightning: each batch goes through on_after_batch_transfer before 'training_step'."""
    keys = []
    for i, b in enumerate(dm.train_dataloader()):
        if stop_after is not None and i == stop_after:
            break  # the loader has prefetched further; only consumed batches count
        b = dm.on_after_batch_transfer(b, 0)
        assert "_loader" not in b
        keys.append(b["key"])
    return keys


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_and_at_boundary(shards, workers):
    ref = make(shards, workers)
    per_epoch = ref.batches_per_epoch
    K = max(1, workers)
    assert per_epoch == (100 // (3 * K)) * K  # equal whole batches per worker
    ref_e0, ref_e1 = run_epoch(ref), run_epoch(ref)
    assert len(ref_e0) == len(ref_e1) == per_epoch and ref_e0 != ref_e1

    for k in (5, 6, per_epoch):  # 5: not a multiple of the worker count; per_epoch: exactly at the boundary
        dm = make(shards, workers)
        first = run_epoch(dm, stop_after=k if k < per_epoch else None)
        state = roundtrip(dm.state_dict())
        assert state["epoch"] == 0 and state["consumed"] == k
        assert all(type(v) is int for row in state["cursors"] for v in row)
        resumed = make(shards, workers)
        resumed.load_state_dict(state)
        rest = run_epoch(resumed)
        if k < per_epoch:
            assert first + rest == ref_e0
            assert run_epoch(resumed) == ref_e1
        else:
            assert first == ref_e0 and rest == ref_e1  # a boundary state resumes into the next epoch
        assert resumed.epoch == 1


def test_resume_twice_in_one_epoch(shards):
    ref = run_epoch(make(shards, 2))
    dm = make(shards, 2)
    a = run_epoch(dm, stop_after=3)
    dm2 = make(shards, 2)
    dm2.load_state_dict(dm.state_dict())
    b = run_epoch(dm2, stop_after=4)
    dm3 = make(shards, 2)
    dm3.load_state_dict(dm2.state_dict())
    assert dm2.state_dict()["consumed"] == 7
    assert a + b + run_epoch(dm3) == ref


def test_resume_with_other_worker_count_is_refused(shards):
    dm = make(shards, 2)
    run_epoch(dm, stop_after=2)
    with pytest.raises(ValueError, match="num_workers=2 but this run has 0"):
        make(shards, 0).load_state_dict(dm.state_dict())
