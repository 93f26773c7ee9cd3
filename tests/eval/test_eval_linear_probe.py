"""Linear probe: accuracy on separable features, parity with sklearn, selection never sees test."""

import numpy as np
import pytest
import torch

from clipl.eval.linear_probe import fit_logistic_regression, linear_probe

torch.set_num_threads(1)


def _separable(n=600, d=16, c=6, seed=0, margin=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g)
    x = torch.randn(n * 3, d, generator=g)
    logits = x @ w.T
    top2 = logits.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > margin  # a margin makes the classes linearly separable
    x, y = x[keep][:n], logits[keep][:n].argmax(1)
    return x, y


def test_probe_reaches_95_percent_on_separable_features():
    x, y = _separable()
    res = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=6)
    assert res.metrics["acc1"] >= 0.95
    assert res.metrics["acc5"] >= res.metrics["acc1"]
    assert 0.9 <= res.metrics["mean_per_class_recall"] <= 1.0
    assert set(res.val_accuracy) == {0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}


def test_choice_of_penalty_ignores_the_test_split():
    x, y = _separable(seed=1, margin=0.2)
    x = x + 0.8 * torch.randn_like(x)  # noisy: the penalty matters
    a = linear_probe(x[:300], y[:300], x[300:], y[300:], num_classes=6)
    shuffled = y[300:][torch.randperm(len(y) - 300)]
    b = linear_probe(x[:300], y[:300], x[300:], shuffled, num_classes=6)
    c = linear_probe(x[:300], y[:300], torch.randn(50, x.shape[1]), torch.zeros(50, dtype=torch.long), num_classes=6)
    assert a.weight_decay == b.weight_decay == c.weight_decay
    assert a.val_accuracy == b.val_accuracy == c.val_accuracy
    assert a.metrics["acc1"] > b.metrics["acc1"] + 0.2  # the shuffled labels did reach the scoring


def test_fit_matches_sklearn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _separable(n=300, d=8, c=4, seed=2, margin=0.0)
    x = x + 0.5 * torch.randn_like(x)
    wd = 1e-2
    w, b = fit_logistic_regression(x.double().float(), y, 4, wd, max_iter=500)
    # Same objective: sklearn minimises C * sum(CE) + ||W||^2 / 2, i.e. C = 1 / (wd * n).
    ref = sklearn.LogisticRegression(C=1.0 / (wd * len(y)), max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    ours = (x @ w.T + b).softmax(1).numpy()
    theirs = ref.predict_proba(x.numpy())
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    np.testing.assert_allclose(w.numpy() - w.numpy().mean(0), ref.coef_ - ref.coef_.mean(0), atol=2e-2)


def test_probe_is_deterministic_and_validates():
    x, y = _separable(n=200)
    a = linear_probe(x[:150], y[:150], x[150:], y[150:], num_classes=6)
    b = linear_probe(x[:150], y[:150], x[150:], y[150:], num_classes=6)
    assert a.metrics == b.metrics and a.weight_decay == b.weight_decay
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x, y, x, y, val_fraction=1.0)
    with pytest.raises(ValueError, match=">= 2 training"):
        linear_probe(x[:1], y[:1], x, y)
