"""The hand-written evaluation metrics equal torchmetrics' on tie-free scores.

clipl keeps its own counting where it must: zero-shot counts are reduced over ranks as integers and
resolve ties in favour of the true class; retrieval ranks in chunks so the (N_txt, N_img) similarity
matrix never exists at once. Without ties those rules are the textbook metrics, checked here.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from clipl.eval.linear_probe import _accuracy
from clipl.eval.retrieval import retrieval_metrics
from clipl.eval.zero_shot import ZeroShotCounter


def test_zero_shot_counts_equal_torchmetrics_top_k_and_per_class_recall():
    g = torch.Generator().manual_seed(0)
    n, c = 300, 12
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)  # above chance
    counter = ZeroShotCounter(c)
    for lo in range(0, n, 64):  # several batches, as the runner feeds it
        counter.update(logits[lo:lo + 64], labels[lo:lo + 64])
    ours = counter.compute()
    for k in (1, 5):
        ref = MulticlassAccuracy(num_classes=c, top_k=k, average="micro")(logits, labels)
        assert abs(ours[f"acc{k}"] - float(ref)) < 1e-6
    per_class = MulticlassRecall(num_classes=c, average="none")(logits, labels)
    correct, total = counter.reduced()
    torch.testing.assert_close(correct[1].double() / total, per_class.double(), atol=1e-6, rtol=0)
    macro = MulticlassRecall(num_classes=c, average="macro")(logits, labels)
    assert abs(ours["mean_per_class_recall"] - float(macro)) < 1e-6
    assert 1.0 / c < ours["acc1"] < 1.0  # a real classifier, neither chance nor trivial


def test_chunked_retrieval_equals_torchmetrics_recall():
    g = torch.Generator().manual_seed(1)
    n_img, d, ks = 40, 16, (1, 5, 10)
    images = torch.nn.functional.normalize(torch.randn(n_img, d, generator=g), dim=-1)
    text_to_image = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (35,), generator=g)])  # 1-2 captions
    texts = torch.nn.functional.normalize(images[text_to_image] + 0.9 * torch.randn(len(text_to_image), d, generator=g), dim=-1)
    ours = retrieval_metrics(images, texts, text_to_image, ks, chunk_size=7)  # chunks smaller than either side
    sims = texts @ images.T  # (N_txt, N_img)
    n_txt = len(text_to_image)
    t2i_target = torch.zeros(n_txt, n_img, dtype=torch.bool)
    t2i_target[torch.arange(n_txt), text_to_image] = True
    t2i_queries = torch.arange(n_txt)[:, None].expand(n_txt, n_img)
    i2t_queries = torch.arange(n_img)[:, None].expand(n_img, n_txt)
    for k in ks:
        # text -> image: one relevant image per caption, so recall@k is torchmetrics' recall@k.
        ref = RetrievalRecall(top_k=k)(sims.flatten(), t2i_target.flatten(), indexes=t2i_queries.flatten())
        assert abs(ours[f"image_retrieval_recall@{k}"] - float(ref)) < 1e-6
        # image -> text: an image is found when any of its captions is in the top k (clip_benchmark's
        # rule), torchmetrics' hit rate.
        ref = RetrievalHitRate(top_k=k)(sims.T.flatten(), t2i_target.T.flatten(), indexes=i2t_queries.flatten())
        assert abs(ours[f"text_retrieval_recall@{k}"] - float(ref)) < 1e-6
    assert 0.0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] <= 1.0


def test_linear_probe_accuracy_is_argmax_accuracy():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(50, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    y = torch.randint(0, 5, (50,), generator=g)
    assert abs(_accuracy(w, b, x, y) - float(((x @ w.T + b).argmax(1) == y).float().mean())) < 1e-7
