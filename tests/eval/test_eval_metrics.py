"""Zero-shot and retrieval metrics vs brute force and torchmetrics, with ties and several captions."""

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from clipl.eval.retrieval import retrieval_metrics, top_texts
from clipl.eval.zero_shot import ZeroShotCounter, classifier_weights, correct_at_k, zero_shot_metrics

torch.set_num_threads(1)


def _tied_logits(n=300, c=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Coarse integer scores make many ties, including ties with the true class.
    logits = torch.randint(0, 6, (n, c), generator=g).double()
    labels = torch.randint(0, c, (n,), generator=g)
    labels[:c] = torch.arange(c)  # every class present
    return logits, labels


def _brute_zero_shot(logits, labels, k):
    # Ties in favour of the true class: count classes strictly above it.
    hits = [sum(1 for j in range(logits.shape[1]) if logits[i, j] > logits[i, labels[i]]) < k for i in range(len(labels))]
    return torch.tensor(hits)


def _favour(scores, target):
    # Break ties in favour of the positives by less than the smallest gap: the torchmetrics
    # implementations break ties by position, we break them towards the positive.
    return scores + 1e-6 * target.double()


@pytest.mark.parametrize("seed", [0, 1])
def test_zero_shot_metrics_match_brute_force_and_torchmetrics(seed):
    logits, labels = _tied_logits(seed=seed)
    c = logits.shape[1]
    counter = ZeroShotCounter(c)
    for chunk in range(0, len(labels), 64):  # batching must not matter
        counter.update(logits[chunk:chunk + 64], labels[chunk:chunk + 64])
    m = counter.compute()
    for k in (1, 5):
        assert m[f"acc{k}"] == pytest.approx(_brute_zero_shot(logits, labels, k).double().mean().item(), abs=1e-12)
    onehot = F.one_hot(labels, c)
    fav = _favour(logits, onehot)
    for k in (1, 5):
        tm = MulticlassAccuracy(num_classes=c, top_k=k, average="micro")(fav, labels)
        assert m[f"acc{k}"] == pytest.approx(tm.item(), abs=1e-6)
    tm_macro = MulticlassAccuracy(num_classes=c, top_k=1, average="macro")(fav, labels)
    assert m["mean_per_class_recall"] == pytest.approx(tm_macro.item(), abs=1e-6)
    # Brute-force per-class recall.
    hit1 = _brute_zero_shot(logits, labels, 1)
    rec = [hit1[labels == j].double().mean().item() for j in range(c)]
    assert m["mean_per_class_recall"] == pytest.approx(sum(rec) / c, abs=1e-12)
    # Ties do change the answer here (otherwise the test would not exercise them).
    assert (logits.argmax(1) != labels).sum() > (~hit1).sum()


def test_zero_shot_valid_mask_and_errors():
    logits, labels = _tied_logits()
    c = ZeroShotCounter(logits.shape[1])
    valid = torch.arange(len(labels)) % 2 == 0
    c.update(logits, labels, valid)
    assert int(c.total.sum()) == int(valid.sum())
    with pytest.raises(ValueError, match="labels must lie"):
        c.update(logits[:2], torch.tensor([0, 99]))
    few = ZeroShotCounter(3)
    few.update(torch.eye(3), torch.arange(3))
    assert "acc5" not in few.compute() and few.compute()["acc1"] == 1.0


def test_classifier_weights_mean_of_normalised_embeddings():
    torch.manual_seed(0)
    table = torch.randn(100, 8)
    encode = lambda tokens: table[tokens[:, 0]] * 3.0  # unnormalised on purpose
    vocab = {}
    tokenize = lambda texts: torch.tensor([[vocab.setdefault(t, len(vocab))] for t in texts])
    classes, templates = ["cat", "dog", "red car"], ["a {}.", "the {}!", "{}"]
    w = classifier_weights(encode, tokenize, classes, templates, batch_size=4)
    assert w.shape == (3, 8)
    for i, c in enumerate(classes):
        e = F.normalize(table[[vocab[t.format(c)] for t in templates]], dim=-1).mean(0)
        torch.testing.assert_close(w[i], F.normalize(e, dim=0))
    feats = F.normalize(torch.randn(20, 8), dim=-1)
    labels = (feats @ w.T).argmax(1)
    assert zero_shot_metrics(feats, labels, w)["acc1"] == 1.0


def _retrieval_data(n_img=37, caps=(1, 2, 3, 5), d=6, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    text_to_image = torch.cat([torch.full((caps[i % len(caps)],), i) for i in range(n_img)])
    img = F.normalize(torch.randn(n_img, d, generator=g), dim=-1)
    txt = F.normalize(img[text_to_image] + 0.9 * torch.randn(len(text_to_image), d, generator=g), dim=-1)
    if ties:
        # Exact duplicates: identical captions on different images and duplicate images.
        txt[5] = txt[40]
        txt[11] = txt[2]
        img[7] = img[8]
        # Quantise so many similarities tie exactly.
        img, txt = (img * 2).round() / 2, (txt * 2).round() / 2
    return img.double(), txt.double(), text_to_image


def _brute_retrieval(img, txt, t2i, k):
    sims = txt @ img.T  # full matrix: fine for the reference
    t_hits = [(sims[t] > sims[t, t2i[t]]).sum().item() < k for t in range(len(t2i))]
    i_hits = []
    for i in range(img.shape[0]):
        pos = t2i == i
        best = sims[pos, i].max()
        i_hits.append(((sims[:, i] > best) & ~pos).sum().item() < k)
    return sum(t_hits) / len(t_hits), sum(i_hits) / len(i_hits)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("ties", [True, False])
def test_retrieval_matches_brute_force_and_torchmetrics(chunk, ties):
    img, txt, t2i = _retrieval_data(ties=ties)
    m = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk_size=chunk)
    sims = txt @ img.T
    n_txt, n_img = sims.shape
    for k in (1, 5, 10):
        t2i_ref, i2t_ref = _brute_retrieval(img, txt, t2i, k)
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(t2i_ref, abs=1e-12)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(i2t_ref, abs=1e-12)
        # torchmetrics: scores shifted positive (its recall ignores non-positive scores; ranking unchanged).
        target = (t2i[:, None] == torch.arange(n_img)[None, :])
        preds = _favour(sims + 3.0, target)
        q = torch.arange(n_txt)[:, None].expand_as(preds)
        # text -> image: one relevant image per caption, so recall@K == hit@K.
        tm = RetrievalRecall(top_k=k)(preds.flatten(), target.flatten(), indexes=q.flatten())
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(tm.item(), abs=1e-6)
        # image -> text with several relevant captions: clip_benchmark counts a hit when any one is
        # in the top K, which is torchmetrics' hit rate (its RetrievalRecall would be the fraction of
        # the image's captions found, a different quantity; checked below on 1-caption images).
        best_pos = sims.T.masked_fill(~target.T, -10).max(dim=1, keepdim=True).values
        # Only the best positive matters: push the other positives below every negative.
        predsT = torch.where(target.T & (sims.T < best_pos), -10.0, sims.T) + 3.0
        predsT = _favour(predsT, target.T)
        qT = torch.arange(n_img)[:, None].expand_as(predsT)
        tm = RetrievalHitRate(top_k=k)(predsT.flatten(), target.T.flatten(), indexes=qT.flatten())
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(tm.item(), abs=1e-6)


def test_retrieval_single_caption_equals_torchmetrics_recall_both_ways():
    img, txt, t2i = _retrieval_data(caps=(1,), ties=False)
    m = retrieval_metrics(img, txt, t2i, ks=(1, 5), chunk_size=5)
    sims = img @ txt.T + 3.0
    target = torch.eye(img.shape[0], dtype=torch.bool)
    q = torch.arange(img.shape[0])[:, None].expand_as(sims)
    for k in (1, 5):
        tm = RetrievalRecall(top_k=k)(sims.flatten(), target.flatten(), indexes=q.flatten())
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(tm.item(), abs=1e-6)


def test_retrieval_is_permutation_invariant_and_validates():
    img, txt, t2i = _retrieval_data()
    m = retrieval_metrics(img, txt, t2i, chunk_size=8)
    pi, pt = torch.randperm(img.shape[0]), torch.randperm(txt.shape[0])
    inv = torch.argsort(pi)
    m2 = retrieval_metrics(img[pi], txt[pt], inv[t2i[pt]], chunk_size=3)
    assert m == m2
    with pytest.raises(ValueError, match="every image needs at least one caption"):
        retrieval_metrics(img, txt[:3], t2i[:3])
    with pytest.raises(ValueError, match="text_to_image must have shape"):
        retrieval_metrics(img, txt, t2i[:-1])


def test_retrieval_blocks_bound_memory(monkeypatch):
    # 2,500 x 500 in chunks of 100: no similarity block may exceed 100 rows.
    img = F.normalize(torch.randn(500, 4), dim=-1)
    t2i = torch.arange(500).repeat_interleave(5)
    txt = F.normalize(img[t2i] + 0.3 * torch.randn(2500, 4), dim=-1)
    import clipl.eval.retrieval as r

    shapes = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    m = r.retrieval_metrics(img, txt, t2i, chunk_size=100)
    monkeypatch.undo()
    assert shapes and max(s[0] for s in shapes) <= 100
    assert 0 < m["image_retrieval_recall@1"] <= m["image_retrieval_recall@5"] <= m["image_retrieval_recall@10"] <= 1


def test_top_texts():
    img, txt, t2i = _retrieval_data(ties=False)
    top = top_texts(img[:4], txt, k=3)
    assert top.shape == (4, 3)
    assert torch.equal(top[:, 0], (img[:4] @ txt.T).argmax(1))


def test_correct_at_k_simple():
    logits = torch.tensor([[3.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    hits = correct_at_k(logits, torch.tensor([1, 0]), (1, 2, 3))
    assert hits[1].tolist() == [True, False] and hits[2].tolist() == [True, False] and hits[3].tolist() == [True, True]
