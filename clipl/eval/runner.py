"""Run the three evaluations over a model's encoders; shared by the callbacks and `clipl eval`.

The model is reached only through `Encoders` (closures over uint8 images / tokens), so the same
code serves a bare CLIPModel, a DeepSpeed-wrapped one, or any precision.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal, Optional

import torch
from torch import nn

from clipl.data.transforms import normalize
from clipl.eval.config import EvalConfig
from clipl.eval.datasets import EvalImageDataset, EvalSet, loader
from clipl.eval.dist import broadcast_from_zero, gather_sorted
from clipl.eval.linear_probe import LinearProbeResult, linear_probe
from clipl.eval.prompts import load_templates
from clipl.eval.retrieval import gather_retrieval_features, retrieval_metrics, top_texts
from clipl.eval.specs import ProbeSet
from clipl.eval.zero_shot import ZeroShotCounter, classifier_weights, metrics_from_counts
from clipl.ranks import rank_and_world


@dataclass
class Encoders:
    """How to embed: uint8 images and token ids in, fp32 features out (on ``device``)."""

    image: Callable[[torch.Tensor], torch.Tensor]
    """uint8 (B, 3, S, S) -> L2-normalised (B, D) image embeddings."""
    text: Callable[[torch.Tensor], torch.Tensor]
    """(B, L) tokens -> L2-normalised (B, D) text embeddings."""
    probe: Callable[[torch.Tensor], torch.Tensor]
    """uint8 images -> the linear probe's features (before or after the projection)."""
    image_size: int
    context_length: int
    device: torch.device


def _check_pre_projection(tower: nn.Module) -> None:
    """The linear probe's 'before' features come from the Tower contract's ``forward(x, pre_projection=True)``."""
    if "pre_projection" not in inspect.signature(tower.forward).parameters:
        raise ValueError(
            f"linear_probe_position='before' needs image tower {type(tower).__name__} to follow the Tower "
            "contract (clipl.models.tower: forward(x, pre_projection=True) returns the features before its "
            "projection); use linear_probe_position='after'"
        )


def model_encoders(
    model: nn.Module,
    device: torch.device | str,
    position: Literal["after", "before"] = "after",
    convert_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Encoders:
    """Encoders of a clipl CLIPModel; ``convert_input``/``forward_context`` apply the run's precision."""
    if position not in ("after", "before"):  # a library function: callers other than EvalConfig exist
        raise ValueError(f"linear_probe_position must be 'after' or 'before', got {position!r}")
    device = torch.device(device)
    if position == "before":
        _check_pre_projection(model.visual)

    def image(x: torch.Tensor) -> torch.Tensor:
        with forward_context():
            return model.encode_image(convert_input(normalize(x.to(device, non_blocking=True))), normalize=True).float()

    def text(tokens: torch.Tensor) -> torch.Tensor:
        with forward_context():
            return model.encode_text(tokens.to(device, non_blocking=True), normalize=True).float()

    def probe(x: torch.Tensor) -> torch.Tensor:
        if position == "after":
            return image(x)
        with forward_context():  # through __call__, so DeepSpeed's forward hooks gather the parameters
            return model.visual(convert_input(normalize(x.to(device, non_blocking=True))), pre_projection=True).float()

    return Encoders(image, text, probe, model.image_size, model.context_length, device)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Model in eval mode without gradients; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _limit(n: int, cfg: EvalConfig) -> list[int]:
    return list(range(n if cfg.max_samples is None else min(n, cfg.max_samples)))


def _tokenizer(context_length: int):
    from clipl.tokenizer import tokenize

    return partial(tokenize, context_length=context_length)


def templates_for(s: EvalSet, cfg: EvalConfig) -> list[str]:
    """The config's templates, else the set's own, else OpenAI's 80."""
    if cfg.templates is not None:
        return load_templates(cfg.templates, s.templates, dataset=s.name)
    return list(s.templates) if s.templates else load_templates("openai")


@dataclass
class ZeroShotResult:
    metrics: dict[str, float]
    per_class_recall: list[float]
    """Top-1 recall of every class (nan for classes without samples)."""
    weights: torch.Tensor = field(repr=False)
    """The (C, D) classifier, reusable while the text tower is frozen."""


def run_zero_shot(enc: Encoders, s: EvalSet, cfg: EvalConfig, weights: Optional[torch.Tensor] = None) -> ZeroShotResult:
    """Zero-shot classification of ``s`` (this rank's shard; counts reduced over ranks)."""
    if weights is None:
        tokenize = _tokenizer(enc.context_length)
        weights = classifier_weights(enc.text, tokenize, s.classnames, templates_for(s, cfg), cfg.batch_size)
    rank, world = rank_and_world()
    ds = EvalImageDataset(s, enc.image_size, rank, world, indices=_limit(len(s.samples), cfg))
    counter = ZeroShotCounter(len(s.classnames), device=enc.device)
    for batch in loader(ds, cfg.batch_size, cfg.num_workers):
        feats = enc.image(batch["image"])
        counter.update(feats @ weights.to(feats.device).T, batch["label"], batch["valid"])
    correct, total = counter.reduced()
    per_class = (correct[1].double() / total.clamp(min=1)).masked_fill(total == 0, float("nan"))
    return ZeroShotResult(metrics_from_counts(correct, total), per_class.tolist(), weights)


@dataclass
class RetrievalResult:
    metrics: dict[str, float]
    examples: list[tuple[int, list[tuple[str, bool]]]]
    """(sample index, [(caption, is one of its own), ...]) of the first images, best captions first."""


def run_retrieval(enc: Encoders, s: EvalSet, cfg: EvalConfig, n_examples: int = 0) -> RetrievalResult:
    """Image<->text recall@K of ``s``: sharded forwards, gathered embeddings, blockwise ranking."""
    rank, world = rank_and_world()
    ds = EvalImageDataset(s, enc.image_size, rank, world, tokenize=_tokenizer(enc.context_length),
                          max_captions=cfg.max_captions, indices=_limit(len(s.samples), cfg))
    img_idx, img_feats, txt_img, txt_slot, txt_feats = [], [], [], [], []
    for batch in loader(ds, cfg.batch_size, cfg.num_workers):
        b, m, length = batch["text"].shape
        f_img = enc.image(batch["image"])
        f_txt = enc.text(batch["text"].view(b * m, length)).view(b, m, -1)  # same count on every rank
        valid = batch["valid"].to(f_img.device)
        tvalid = batch["text_valid"].to(f_img.device) & valid[:, None]
        index = batch["index"].to(f_img.device)
        img_idx.append(index[valid])
        img_feats.append(f_img[valid])
        txt_img.append(index[:, None].expand(b, m)[tvalid])
        txt_slot.append(torch.arange(m, device=f_img.device)[None, :].expand(b, m)[tvalid])
        txt_feats.append(f_txt[tvalid])
    images, texts, text_to_image = gather_retrieval_features(
        torch.cat(img_idx), torch.cat(img_feats), torch.cat(txt_img), torch.cat(txt_slot), torch.cat(txt_feats))
    metrics = retrieval_metrics(images, texts, text_to_image, cfg.retrieval_ks, cfg.chunk_size)
    examples = []
    if n_examples:
        order = _limit(len(s.samples), cfg)  # the gathered images are sorted by sample index
        captions = [c for i in order for c in s.samples[i].captions[: cfg.max_captions]]
        top = top_texts(images[:n_examples], texts, k=3).tolist()
        for row, hits in enumerate(top):
            examples.append((order[row], [(captions[t], int(text_to_image[t]) == row) for t in hits]))
    return RetrievalResult(metrics, examples)


def _probe_features(enc: Encoders, s: EvalSet, indices: list[int], cfg: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    rank, world = rank_and_world()
    ds = EvalImageDataset(s, enc.image_size, rank, world, indices=indices)
    idx, feats, labels = [], [], []
    for batch in loader(ds, cfg.batch_size, cfg.num_workers):
        f = enc.probe(batch["image"])
        valid = batch["valid"].to(f.device)
        idx.append(batch["index"].to(f.device)[valid])
        feats.append(f[valid])
        labels.append(batch["label"].to(f.device)[valid])
    _, x, y = gather_sorted(torch.cat(idx), torch.cat(feats), torch.cat(labels))
    return x, y


def run_linear_probe(enc: Encoders, p: ProbeSet, cfg: EvalConfig) -> LinearProbeResult:
    """Linear probe on ``p``: sharded feature extraction, gathered, fit identically on every rank."""
    cap = (lambda ix: ix) if cfg.max_samples is None else (lambda ix: ix[: cfg.max_samples])
    train_x, train_y = _probe_features(enc, p.train, cap(p.train_indices), cfg)
    test_x, test_y = _probe_features(enc, p.test, cap(p.test_indices), cfg)
    res = linear_probe(train_x, train_y, test_x, test_y, p.num_classes, cfg.linear_probe_weight_decays,
                       cfg.linear_probe_val_fraction, cfg.linear_probe_max_iter, cfg.seed)
    # Every rank fit the same data; broadcasting rank 0's numbers guarantees identical logs.
    keys = sorted(res.metrics)
    vals = broadcast_from_zero(torch.tensor([res.metrics[k] for k in keys] + [res.weight_decay],
                                            dtype=torch.float64, device=train_x.device)).tolist()
    return LinearProbeResult(dict(zip(keys, vals[:-1])), vals[-1], res.val_accuracy)
