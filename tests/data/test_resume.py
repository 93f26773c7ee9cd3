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


# ------------------------------------------------------------------ elastic resume (another topology)
@pytest.fixture
def even_shards(tmp_path):
    """8 shards x 24 samples, sizes in sizes.json: every topology below divides the epoch evenly."""
    import json

    img = jpeg()
    for s in range(8):
        write_tar(tmp_path / f"e-{s}.tar", [(f"e{s}_{i:02d}", {"jpg": img, "txt": b"a caption"}) for i in range(24)])
    (tmp_path / "sizes.json").write_text(json.dumps({f"e-{s}.tar": 24 for s in range(8)}))
    return str(tmp_path / "e-{0..7}.tar")


def make_ranked(pattern, world, rank, workers, batch):
    cfg = DataConfig(train=pattern, num_workers=workers, shuffle_buffer=10)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, seed=7, tokenizer=stand_in_tokenizer, batch_size=batch)
    dm._world = lambda: (world, rank)  # a rank of a `world`-process run, without a process group
    dm.setup()
    return dm


def flat(batches):
    return [k for b in batches for k in b]


# (world size, data.num_workers, loader batch) before and after; the global batch is kept, as the batch
# plan keeps it (a changed accumulation keeps the loader batch).
@pytest.mark.parametrize("old, new", [
    ((2, 1, 4), (1, 2, 8)),   # 2 ranks -> 1 rank (global batch kept: micro-batch doubles), 1 -> 2 workers
    ((2, 1, 4), (1, 1, 4)),   # 2 ranks -> 1 rank, global batch kept by accumulation (loader batch 4)
    ((1, 2, 4), (2, 0, 2)),   # 1 rank, 2 workers -> 2 ranks without workers (micro-batch halves)
    ((1, 0, 4), (1, 2, 4)),   # workers only
])
def test_elastic_resume_sees_every_sample_of_the_epoch_once(even_shards, old, new):
    (w0, k0, b0), (w1, k1, b1) = old, new
    all_keys = {f"e{s}_{i:02d}" for s in range(8) for i in range(24)}
    stop = 5
    first, cursors = [], []
    for r in range(w0):  # segment 1: every old rank consumes `stop` batches, then the run dies
        dm = make_ranked(even_shards, w0, r, k0, b0)
        first += flat(run_epoch(dm, stop_after=stop))
        cursors.append(dm.state_dict()["cursors"][0])
    assert len(first) == w0 * stop * b0
    state = roundtrip({**dm.state_dict(), "cursors": cursors})  # what rank 0 writes (cursors gathered)
    rest, lengths = [], []
    for r in range(w1):  # segment 2 on the new topology
        dm = make_ranked(even_shards, w1, r, k1, b1)
        dm.load_state_dict(state)
        got = run_epoch(dm)
        lengths.append(len(got))
        rest += flat(got)
        offset = stop * b0 * w0 // (b1 * w1)  # the consumed part in new batches
        assert len(dm._train) == offset + len(got)  # Lightning's epoch length: consumed + the rest
        assert dm.epoch == 0 and dm.state_dict()["elastic"] is not None
        # the epoch after it is an ordinary one on the new topology
        nxt = run_epoch(dm)
        assert dm.epoch == 1 and dm.state_dict()["elastic"] is None and len(nxt) == dm.batches_per_epoch
    assert len(set(lengths)) == 1  # every rank steps the same number of times
    assert sorted(first + rest) == sorted(all_keys)  # each sample of the epoch exactly once


def test_elastic_rest_interrupted_again_resumes_exactly(even_shards):
    dm = make_ranked(even_shards, 1, 0, 2, 4)
    first = flat(run_epoch(dm, stop_after=7))
    state_old = roundtrip(dm.state_dict())
    ref = make_ranked(even_shards, 1, 0, 1, 4)
    ref.load_state_dict(state_old)
    ref_rest = flat(run_epoch(ref))
    a = make_ranked(even_shards, 1, 0, 1, 4)
    a.load_state_dict(state_old)
    part = flat(run_epoch(a, stop_after=3))
    mid = roundtrip(a.state_dict())
    b = make_ranked(even_shards, 1, 0, 1, 4)
    b.load_state_dict(mid)
    assert part + flat(run_epoch(b)) == ref_rest
    assert sorted(first + ref_rest) == sorted(f"e{s}_{i:02d}" for s in range(8) for i in range(24))
    with pytest.raises(ValueError, match="resumed on another topology"):
        make_ranked(even_shards, 1, 0, 2, 4).load_state_dict(mid)


def test_zero_checkpoint_on_another_world_size_is_refused_naming_the_conversion(tmp_path):
    from clipl.config import ConfigError, parse
    from clipl.run import check_zero_world_size, load_recipe

    ckpt = tmp_path / "step=000000010.ckpt" / "checkpoint"
    ckpt.mkdir(parents=True)
    for r in range(2):
        (ckpt / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    cfg = parse(load_recipe("quickstart").config(), ["trainer.devices=1"])
    with pytest.raises(ConfigError, match=r"written by 2 ranks and this run has 1.*clipl convert.*ds_to_universal"):
        check_zero_world_size(ckpt.parent, cfg)
    check_zero_world_size(ckpt.parent, parse(load_recipe("quickstart").config(), ["trainer.devices=2"]))
