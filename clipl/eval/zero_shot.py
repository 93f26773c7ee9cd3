"""Zero-shot classification: a classifier from class names x prompt templates, and its metrics.

Ties are resolved in favour of the true class: a sample is correct at k when fewer than k classes
score strictly higher than its own class. That rule depends on no ordering, so it is the same
whatever the sharding, and it equals argmax accuracy whenever there is no tie.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from clipl.eval.dist import all_gather_rows, all_reduce_sum
from clipl.ranks import rank_and_world

EncodeText = Callable[[torch.Tensor], torch.Tensor]
Tokenize = Callable[[list[str]], torch.Tensor]


def prompts_for(classname: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: every template with "{}" replaced by the class name."""
    return [t.format(classname) for t in templates]


@torch.no_grad()
def classifier_weights(
    encode_text: EncodeText,
    tokenize: Tokenize,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, D) zero-shot weights: per class the mean of its L2-normalised prompt embeddings, renormalised.

    Under torch.distributed each rank encodes a contiguous block of ceil(C / world) classes
    (padded with repeats so every rank runs the same number of forwards, as ZeRO-3 needs) and
    the blocks are gathered. ``encode_text`` maps tokens to (N, D) features.
    """
    if not classnames or not templates:
        raise ValueError("zero-shot classifier needs at least one class name and one template")
    rank, world = rank_and_world()
    n_cls, n_tmpl = len(classnames), len(templates)
    per_rank = math.ceil(n_cls / world)
    mine = [min(i, n_cls - 1) for i in range(rank * per_rank, (rank + 1) * per_rank)]
    classes_per_forward = max(1, batch_size // n_tmpl)
    rows = []
    for start in range(0, per_rank, classes_per_forward):
        block = mine[start : start + classes_per_forward]
        texts = [p for c in block for p in prompts_for(classnames[c], templates)]
        emb = F.normalize(encode_text(tokenize(texts)).float(), dim=-1)
        rows.append(F.normalize(emb.view(len(block), n_tmpl, -1).mean(dim=1), dim=-1))
    weights = all_gather_rows(torch.cat(rows))
    return weights[:n_cls]


def correct_at_k(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per sample: is the true class among the top k (ties in its favour)? {k: bool (B,)}."""
    true = logits.gather(1, labels.view(-1, 1))
    rank = (logits > true).sum(dim=1)  # classes strictly better than the true one
    return {k: rank < k for k in ks}


class ZeroShotCounter:
    """Accumulates per-class correct counts over batches; `compute` reduces them over ranks."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ks = [1, 5] if num_classes >= 5 else [1]  # clip_benchmark reports acc5 only for C >= 5
        self.correct = {k: torch.zeros(num_classes, dtype=torch.long, device=device) for k in self.ks}
        self.total = torch.zeros(num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """Add a batch of (B, C) logits and (B,) labels; ``valid`` masks padding samples."""
        labels = labels.to(self.total.device).long()
        logits = logits.to(self.total.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
        if valid is not None:
            keep = valid.to(self.total.device).bool()
            logits, labels = logits[keep], labels[keep]
        hits = correct_at_k(logits, labels, self.ks)
        for k in self.ks:
            self.correct[k] += torch.bincount(labels[hits[k]], minlength=self.num_classes)
        self.total += torch.bincount(labels, minlength=self.num_classes)

    def reduced(self) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Per-class correct counts {k: (C,)} and totals (C,) summed over ranks."""
        return {k: all_reduce_sum(v) for k, v in self.correct.items()}, all_reduce_sum(self.total)

    def compute(self) -> dict[str, float]:
        """clip_benchmark metrics: acc1, acc5 (C >= 5), mean_per_class_recall (over present classes)."""
        correct, total = self.reduced()
        return metrics_from_counts(correct, total)


def metrics_from_counts(correct: dict[int, torch.Tensor], total: torch.Tensor) -> dict[str, float]:
    """acc@k and the mean over classes with samples of the per-class top-1 recall."""
    n = int(total.sum())
    if n == 0:
        raise ValueError("zero-shot evaluation saw no samples")
    out = {f"acc{k}": float(c.sum()) / n for k, c in correct.items()}
    present = total > 0
    out["mean_per_class_recall"] = float((correct[1][present].double() / total[present]).mean())
    return out


def zero_shot_metrics(image_features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
    """Metrics of the classifier ``weights`` (C, D) on (N, D) features, reduced over ranks."""
    counter = ZeroShotCounter(weights.shape[0], device=image_features.device)
    counter.update(image_features.float() @ weights.float().T, labels)
    return counter.compute()
