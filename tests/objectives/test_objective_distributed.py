"""W gloo processes with B pairs each == one process with the W*B global batch (loss and grads)."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from clipl.objectives import build_objective, distributed, objective_config
from clipl.ranks import LOCAL

B, D_IMG, D_TXT, EMBED = 4, 6, 5, 8
OBJECTIVES = ("clip", "siglip")


class TwoTowers(nn.Module):
    """Two linear 'towers' plus the temperature and bias parameters of a CLIP model."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(D_IMG, EMBED)
        self.text = nn.Linear(D_TXT, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, images, texts):
        img = F.normalize(self.visual(images), dim=-1)
        txt = F.normalize(self.text(texts), dim=-1)
        return img, txt, self.logit_scale, self.logit_bias


def _model():
    torch.manual_seed(0)
    return TwoTowers()


def _data(world_size):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(world_size * B, D_IMG, generator=g)
    texts = torch.randn(world_size * B, D_TXT, generator=g)
    return images, texts


def _step(model, objective, images, texts):
    loss = build_objective(objective_config(objective))(*model(images, texts))
    loss.backward()
    return loss.detach()


def _worker(rank, world_size, init_file, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    images, texts = _data(world_size)
    local = slice(rank * B, (rank + 1) * B)
    results = {}
    for objective in OBJECTIVES:
        # The accelerator path (all_gather_into_tensor / reduce_scatter_tensor), which this
        # torch's gloo also supports, so it is checked here too.
        distributed._list_collectives = lambda t: False
        model = _model()
        loss = _step(model, objective, images[local], texts[local])
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / world_size
        results[objective, "tensor_collectives"] = (loss / world_size, grads)
        distributed._list_collectives = lambda t: True
        # Manual averaging: what DDP does to gradients, written out.
        model = _model()
        loss = _step(model, objective, images[local], texts[local])
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / world_size
        results[objective, "manual"] = (loss / world_size, grads)
        # Real DDP: its gradient hooks interleave with the objective's own collectives.
        ddp = nn.parallel.DistributedDataParallel(_model())
        loss = _step(ddp, objective, images[local], texts[local])
        dist.all_reduce(loss)
        grads = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
        results[objective, "ddp"] = (loss / world_size, grads)
        # Unequal local batches must fail on every rank with a clear message, not hang.
        n = B - 1 if rank == world_size - 1 else B
        try:
            _step(_model(), objective, images[:n], texts[:n])
            results[objective, "unequal"] = None
        except ValueError as err:
            results[objective, "unequal"] = str(err)
        # group=LOCAL (validation's per-rank loss): no collective, so unequal batches neither hang nor
        # fail, and each rank's loss is that of its own batch alone.
        loss = build_objective(objective_config(objective))
        loss.group = LOCAL
        with torch.no_grad():
            mine = loss(*_model()(images[local][:n], texts[local][:n]))
        every = [None] * world_size
        dist.all_gather_object(every, mine)
        results[objective, "local"] = every
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "world_size",
    [
        2,
        # 3: one two-way ring hop; 4: a two-way hop chained into a one-way hop. Several seconds
        # each on a loaded CPU, hence slow.
        pytest.param(3, marks=pytest.mark.slow),
        pytest.param(4, marks=pytest.mark.slow),
    ],
)
def test_distributed_equals_global_batch(world_size):
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        out_path = os.path.join(tmp, "results.pt")
        mp.spawn(_worker, args=(world_size, init_file, out_path), nprocs=world_size, join=True)
        results = torch.load(out_path)
    images, texts = _data(world_size)
    for objective in OBJECTIVES:
        model = _model()
        ref_loss = _step(model, objective, images, texts)
        ref_grads = {n: p.grad for n, p in model.named_parameters()}
        for mode in ("manual", "ddp", "tensor_collectives"):
            loss, grads = results[objective, mode]
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
            assert set(grads) == set(ref_grads)
            for name, ref in ref_grads.items():
                torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{objective}/{mode}/{name}: {m}")
        # The clip objective's bias has no effect on a softmax; siglip's gets a real gradient.
        if objective == "siglip":
            assert ref_grads["logit_bias"].abs().item() > 1e-4
        message = results[objective, "unequal"]
        assert message is not None and "same local batch size" in message
        assert str([B] * (world_size - 1) + [B - 1]) in message
        for r, got in enumerate(results[objective, "local"]):
            n = B - 1 if r == world_size - 1 else B
            rows = slice(r * B, r * B + n)
            with torch.no_grad():
                want = build_objective(objective_config(objective))(*_model()(images[rows], texts[rows]))
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
