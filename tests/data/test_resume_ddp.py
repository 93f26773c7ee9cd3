"""Two real ranks (gloo): state_dict gathers every rank's cursors; rank 0's state resumes both ranks exactly."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _worker(rank, pattern, port, out):
    from clipl.data.config import DataConfig
    from clipl.data.datamodule import CLIPDataModule
    from datafixtures import stand_in_tokenizer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    def make():
        cfg = DataConfig(train=pattern, num_workers=2, shuffle_buffer=6, max_skip_rate=1.0, epoch_size=56)
        dm = CLIPDataModule(cfg, image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=2)
        dm.setup()
        return dm

    def run(dm, stop=None):
        keys = []
        for i, b in enumerate(dm.train_dataloader()):
            if i == stop:
                break
            keys.append(dm.on_after_batch_transfer(b, 0)["key"])
        return keys

    ref = run(make())
    dm = make()
    first = run(dm, stop=3)
    state = dm.state_dict()  # collective: every rank calls it, as Lightning does
    shared = [state]
    dist.broadcast_object_list(shared, src=0)  # only rank 0's checkpoint file exists
    resumed = make()
    resumed.load_state_dict(shared[0])
    rest = run(resumed)
    torch.save({"ok": first + rest == ref, "n": len(ref), "cursors": shared[0]["cursors"]}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_resume_from_rank0_state(tmp_path):
    from clipl.data.shapes import write_tar
    from datafixtures import jpeg

    img = jpeg()
    for s in range(4):  # bad samples on one rank's shards only: the ranks' raw cursors differ
        samples = [(f"k{s}_{i:02d}", {"jpg": img, "txt": b"" if s == 0 and i % 3 == 0 else b"a caption"})
                   for i in range(15)]
        write_tar(tmp_path / f"d-{s}.tar", samples)
    pattern = str(tmp_path / "d-{0..3}.tar")
    port = 29500 + os.getpid() % 1000
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(r, pattern, port, str(tmp_path))) for r in range(2)]
    [p.start() for p in procs]
    [p.join(120) for p in procs]
    assert all(p.exitcode == 0 for p in procs)
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    assert res[0]["ok"] and res[1]["ok"] and res[0]["n"] == res[1]["n"] == 14  # 56 // (2 x 2 ranks x 2 workers) x 2 workers
    assert len(res[0]["cursors"]) == 2 and res[0]["cursors"][0] != res[0]["cursors"][1]
