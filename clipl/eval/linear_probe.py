"""Linear probe: multinomial logistic regression on frozen features, the CLIP paper's protocol.

The L2 penalty is chosen on a held-out part of the *training* features (never the test split),
then the probe is refit on all training features and scored once on the test split.
Objective per fit: mean cross-entropy + penalty / 2 * ||W||^2 (bias unpenalised), minimised
full-batch with L-BFGS; sklearn's C for the same objective is 1 / (penalty * n_train).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from clipl.eval.zero_shot import ZeroShotCounter, metrics_from_counts


@dataclass
class LinearProbeResult:
    """Test metrics of the refit probe and how its penalty was chosen."""

    metrics: dict[str, float]
    """acc1, acc5 (>= 5 classes) and mean_per_class_recall on the test split."""
    weight_decay: float
    """The L2 penalty chosen on the held-out training features."""
    val_accuracy: dict[float, float] = field(default_factory=dict)
    """Held-out accuracy of every penalty searched."""


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 200,
    init: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (C, D), b (C,)) minimising mean CE + weight_decay / 2 * ||W||^2 on (N, D) ``x``."""
    x = x.float()
    w = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init[0].clone()
    b = torch.zeros(num_classes, device=x.device) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@contextlib.contextmanager
def _few_threads_if_small(x: torch.Tensor, num_classes: int):
    # A small full-batch fit is thousands of tiny ops: on CPU, thread hand-offs cost more than the
    # arithmetic (measured 20x slower with 2 threads on a busy 2-core machine), so use one thread.
    small = x.device.type == "cpu" and x.numel() * num_classes < 50_000_000
    n = torch.get_num_threads()
    if small and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and n > 1:
            torch.set_num_threads(n)


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Per-dimension scaling puts every feature on one scale, so one penalty grid suits any model.
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp(min=1e-6)
    return mean, std


def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    # Every rank holds all the (gathered) data here, so torchmetrics' functional form needs no sync.
    # Imported here: torchmetrics takes seconds to import, and clipl.eval is on the config path that
    # must fail fast (clipl.config.validate runs before anything heavy is imported).
    from torchmetrics.functional.classification import multiclass_accuracy

    return float(multiclass_accuracy(x @ w.T + b, y, num_classes=w.shape[0], average="micro"))


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: Optional[int] = None,
    weight_decays: Sequence[float] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    val_fraction: float = 0.2,
    max_iter: int = 200,
    seed: int = 0,
) -> LinearProbeResult:
    """Choose the penalty on a seeded held-out part of the training set, refit, score on test.

    Deterministic for a given input order; the callers sort gathered features by sample index
    so the result does not depend on the number of processes.
    """
    if not weight_decays:
        raise ValueError("linear_probe needs at least one weight decay to search")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n = train_x.shape[0]
    if n < 2 or test_x.shape[0] == 0:
        raise ValueError(f"linear probe needs >= 2 training and >= 1 test samples, got {n} and {test_x.shape[0]}")
    train_y, test_y = train_y.long().to(train_x.device), test_y.long().to(train_x.device)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1

    with _few_threads_if_small(train_x, num_classes):
        return _select_and_fit(train_x, train_y, test_x, test_y, num_classes, weight_decays, val_fraction, max_iter, seed)


def _select_and_fit(train_x, train_y, test_x, test_y, num_classes, weight_decays, val_fraction, max_iter, seed):
    """The protocol proper: seeded held-out split of train, penalty search, refit, one test score."""
    n = train_x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).to(train_x.device)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]

    mean, std = _standardiser(train_x[fit_idx].float())
    fit_x = (train_x[fit_idx].float() - mean) / std
    val_x = (train_x[val_idx].float() - mean) / std
    val_acc: dict[float, float] = {}
    init = None
    # Strongest penalty first: each fit warm-starts from the previous, smoother solution.
    for wd in sorted(weight_decays, reverse=True):
        init = fit_logistic_regression(fit_x, train_y[fit_idx], num_classes, wd, max_iter, init)
        val_acc[wd] = _accuracy(*init, val_x, train_y[val_idx])
    best = max(val_acc.values())
    chosen = max(wd for wd, acc in val_acc.items() if acc == best)  # ties: the most regularised

    mean, std = _standardiser(train_x.float())
    w, b = fit_logistic_regression((train_x.float() - mean) / std, train_y, num_classes, chosen, max_iter)
    logits = ((test_x.float() - mean) / std) @ w.T + b
    counter = ZeroShotCounter(num_classes, device=logits.device)
    counter.update(logits, test_y)
    return LinearProbeResult(metrics_from_counts(counter.correct, counter.total), chosen, val_acc)
