"""Splitting by rank and worker, equal batches per rank, deterministic shard order, mixing."""

from __future__ import annotations

from collections import Counter

import pytest

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from datafixtures import stand_in_tokenizer, write_shards


def make_dm(cfg: DataConfig, world: int = 1, rank: int = 0, seed: int = 0, batch_size: int = 4) -> CLIPDataModule:
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, seed=seed, tokenizer=stand_in_tokenizer,
                        batch_size=batch_size)
    dm._world = lambda: (world, rank)  # stands in for trainer.world_size / global_rank
    dm.setup()
    return dm


def epoch_keys(dm) -> list[list[str]]:
    return [b["key"] for b in dm.train_dataloader()]


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_disjoint_samples_covering_the_epoch(tmp_path, workers):
    pattern = write_shards(tmp_path, [24] * 8)
    cfg = DataConfig(train=pattern, num_workers=workers, shuffle_buffer=16)
    per_rank = [sum(epoch_keys(make_dm(cfg, 2, r)), []) for r in range(2)]
    assert [len(k) for k in per_rank] == [96, 96]
    everything = per_rank[0] + per_rank[1]
    assert len(set(everything)) == len(everything) == 192
    assert len(set(per_rank[0]) & set(per_rank[1])) == 0


def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path):
    sizes = [30, 5, 17, 8, 40, 3, 21, 12]
    pattern = write_shards(tmp_path, sizes)
    cfg = DataConfig(train=pattern, num_workers=2, shuffle_buffer=8)
    counts = []
    for r in range(2):
        dm = make_dm(cfg, 2, r)
        batches = epoch_keys(dm)
        assert all(len(b) == 4 for b in batches)
        counts.append(len(batches))
        assert len(batches) == len(dm.train_dataloader())
    # 136 samples // (4 per batch * 2 ranks * 2 workers) = 8 per worker -> 16 per rank
    assert counts == [16, 16]


def test_shard_order_is_a_function_of_seed_and_epoch(tmp_path):
    pattern = write_shards(tmp_path, [10] * 6)
    cfg = DataConfig(train=pattern, num_workers=0, shuffle_buffer=10)
    a, b = make_dm(cfg, seed=1, batch_size=5), make_dm(cfg, seed=1, batch_size=5)
    e0a, e0b = epoch_keys(a), epoch_keys(b)
    assert e0a == e0b
    e1a = epoch_keys(a)  # the next iteration is the next epoch
    assert a.epoch == 1 and e1a != e0a and sorted(sum(e1a, [])) == sorted(sum(e0a, []))
    assert epoch_keys(make_dm(cfg, seed=2, batch_size=5)) != e0a


def test_fewer_shards_than_readers_are_split_not_refused(tmp_path):
    pattern = write_shards(tmp_path, [10] * 3)
    cfg = DataConfig(train=pattern, num_workers=2)
    # 3 shards for 2 ranks x 2 workers: each shard is read in 4 parts (every 4th sample), 3 per reader.
    # 30 samples // (2 per batch * 2 ranks * 2 workers) = 3 batches per worker: 12 samples per rank.
    per_rank = [sum(epoch_keys(make_dm(cfg, 2, r, batch_size=2)), []) for r in range(2)]
    everything = per_rank[0] + per_rank[1]
    assert [len(k) for k in per_rank] == [12, 12] and len(set(everything)) == 24  # no sample twice
    cfg.resampled = True
    assert len(sum(epoch_keys(make_dm(cfg, 2, 0, batch_size=2)), [])) == 12
    with pytest.raises(ValueError, match=r"3 samples for 2 ranks x data.num_workers=2 = 4 readers"):
        make_dm(DataConfig(train=write_shards(tmp_path / "tiny", [1] * 3), num_workers=2), 2, 0, batch_size=1)


def test_a_batch_mixes_a_workers_shards_in_proportion_to_their_sizes(tmp_path):
    # One worker, shards of 40, 20 and 20 samples, no shuffle buffer: the interleaved read alone mixes.
    pattern = write_shards(tmp_path, [40, 20, 20])
    cfg = DataConfig(train=pattern, num_workers=0, shuffle_buffer=0)
    batches = epoch_keys(make_dm(cfg, batch_size=8))
    assert len(batches) == 10
    assert all(len({k.split("_")[0] for k in b}) >= 2 for b in batches[:8])  # not one shard per batch
    first_half = sum(batches[:5], [])
    share = Counter(k.split("_")[0] for k in first_half)["s000"] / len(first_half)
    assert abs(share - 0.5) < 0.2, share  # 40 of 80 samples; read one shard after another it would be 0 or 1


def test_resampled_mixing_follows_weights(tmp_path):
    a = write_shards(tmp_path / "a", [20] * 4, prefix="a")
    b = write_shards(tmp_path / "b", [20] * 4, prefix="b")
    cfg = DataConfig(train=f"{a}::{b}", train_weights=[3.0, 1.0], resampled=True, epoch_size=4000,
                     num_workers=0, shuffle_buffer=0)
    keys = sum(epoch_keys(make_dm(cfg, batch_size=10)), [])
    share = Counter(k[0] for k in keys)["a"] / len(keys)
    assert len(keys) == 4000 and abs(share - 0.75) < 0.1  # 200 shard draws: sd 0.03
    cfg.resampled = False
    with pytest.raises(ValueError, match="train_weights needs data.resampled=true"):
        make_dm(cfg)


def test_epoch_size_from_img2dataset_stats(tmp_path):
    pattern = write_shards(tmp_path, [7, 9], sizes_json=False)
    for s, n in enumerate([7, 9]):
        (tmp_path / f"s-{s:03d}_stats.json").write_text(f'{{"successes": {n}, "count": 10}}')
    dm = make_dm(DataConfig(train=pattern, num_workers=0), batch_size=2)
    assert dm._train.epoch_size == 16 and dm.batches_per_epoch == 8
    (tmp_path / "s-001_stats.json").unlink()
    with pytest.raises(ValueError, match="set data.epoch_size"):
        make_dm(DataConfig(train=pattern, num_workers=0), batch_size=2)
