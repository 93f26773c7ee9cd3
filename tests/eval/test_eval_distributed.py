"""1 vs 2 gloo processes give the same zero-shot, retrieval and linear-probe metrics."""

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipl.eval.datasets import shard_indices
from clipl.eval.dist import gather_sorted
from clipl.eval.linear_probe import linear_probe
from clipl.eval.retrieval import gather_retrieval_features, retrieval_metrics
from clipl.eval.zero_shot import classifier_weights, zero_shot_metrics


def _data():
    g = torch.Generator().manual_seed(0)
    n, d, c = 61, 8, 7  # odd sizes: uneven shards and padding
    table = torch.randn(200, d, generator=g)
    feats = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    caps = torch.tensor([1 + i % 3 for i in range(n)])
    texts = [F.normalize(feats[i] + 0.7 * torch.randn(int(caps[i]), d, generator=g), dim=-1) for i in range(n)]
    probe_x = torch.randn(n, d, generator=g) + 2.0 * F.one_hot(labels, c).float() @ torch.randn(c, d, generator=g)
    return table, feats, labels, texts, probe_x, c


def _metrics(rank: int, world: int) -> dict:
    table, feats, labels, texts, probe_x, c = _data()
    encode = lambda tokens: table[tokens[:, 0] % 200]
    tokenize = lambda ts: torch.tensor([[sum(map(ord, t))] for t in ts])
    names = [f"class{i}" for i in range(c)]
    w = classifier_weights(encode, tokenize, names, ["a {}", "the {} here", "{}!"], batch_size=6)
    idx, valid = shard_indices(len(labels), rank, world)
    idx_t, valid_t = torch.tensor(idx), torch.tensor(valid)
    mine = idx_t[valid_t]
    out = {"zs": zero_shot_metrics(feats[mine], labels[mine], w), "w": w.sum().item()}
    # Retrieval: captions of this rank's images only, then gathered and sorted.
    t_img = torch.cat([torch.full((len(texts[i]),), int(i)) for i in mine])
    t_slot = torch.cat([torch.arange(len(texts[i])) for i in mine])
    t_feat = torch.cat([texts[i] for i in mine])
    images, txt, t2i = gather_retrieval_features(mine, feats[mine], t_img, t_slot, t_feat)
    out["ret"] = retrieval_metrics(images, txt, t2i, ks=(1, 5), chunk_size=4)
    _, x, y = gather_sorted(mine, probe_x[mine], labels[mine])
    res = linear_probe(x[:40], y[:40], x[40:], y[40:], num_classes=c, max_iter=50)
    out["lp"] = {"metrics": res.metrics, "wd": res.weight_decay}
    return out


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = _metrics(rank, world)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_and_two_processes_agree(tmp_path):
    single = json.loads(json.dumps(_metrics(0, 1)))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        multi = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert multi["zs"] == single["zs"]
        assert multi["ret"] == single["ret"]
        assert multi["lp"]["wd"] == single["lp"]["wd"]
        for k, v in single["lp"]["metrics"].items():
            assert abs(multi["lp"]["metrics"][k] - v) < 1e-9
        assert abs(multi["w"] - single["w"]) < 1e-5
    assert 0 < single["zs"]["acc1"] < 1 and 0 < single["ret"]["text_retrieval_recall@1"] < 1
