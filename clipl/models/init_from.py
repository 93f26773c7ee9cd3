"""``model.init_from``: start training from existing weights (any source clipl.models.sources reads).

Strict (the default): every parameter and buffer of the new model must come from the source with the
same shape, and where the source records its architecture (clipl checkpoints and exports, open_clip
and Hugging Face folders) it must equal the model's, activation and heads included: nothing is
loaded into a model that would compute another function. Non-strict: what matches by name and
shape is loaded (e.g. one tower); the rest keeps its fresh initialisation, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from clipl.models.layers import materialized
from clipl.models.pos_embed import adapt_pos_embed

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What ``init_from`` loaded."""

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """The model's entries the source lacks (kept as initialised)."""
    mismatched: list[str] = field(default_factory=list)
    """Entries present in both with different shapes (kept as initialised)."""
    unexpected: list[str] = field(default_factory=list)
    """Source entries the model has no place for (ignored)."""
    resized: list[str] = field(default_factory=list)
    """Positional embeddings resampled to the model's patch grid (another input resolution)."""
    architecture_checked: bool = False

    def summary(self) -> str:
        def tower(keys: list[str]) -> str:
            image = sum(k.startswith("visual.") for k in keys)
            return f"{len(keys)} ({image} image, {len(keys) - image} text/other)"

        parts = [f"model.init_from={self.source} ({self.kind}): loaded {tower(self.loaded)} tensors"]
        for name in ("resized", "missing", "mismatched", "unexpected"):
            keys = getattr(self, name)
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{name} {len(keys)}: {', '.join(keys[:3])}{more}")
        if not self.architecture_checked:
            parts.append("the source records no architecture: activation/heads not verified")
        return "; ".join(parts)


def init_from(model: nn.Module, path: str, strict: bool = True) -> InitReport:
    """Load the weights of ``path`` into ``model`` (a CLIPModel) in place; see the module docstring."""
    from clipl.models.metadata import describe_differences, without_training_fields
    from clipl.models.sources import read_source

    src = read_source(path)
    report = InitReport(str(path), src.kind)
    own_cfg = getattr(model, "config", None)
    if src.config is not None and own_cfg is not None:
        report.architecture_checked = True
        diff = describe_differences(without_training_fields(src.config, temperature=True),
                                    without_training_fields(own_cfg, temperature=True))
        # Another input resolution is the same function family: positions are resampled below.
        diff = [d for d in diff if not d.startswith("image.image_size:")]
        if diff and strict:
            raise ValueError(
                f"model.init_from={path}: its architecture differs from model.* ({'; '.join(diff[:5])}). "
                "Set the model fields to match, or model.init_from_strict=false to load only what fits."
            )
    # ZeRO-3 (configure_model under zero.Init): gathered to full tensors, written on rank 0, re-partitioned.
    with torch.no_grad(), materialized(model):
        own = model.state_dict()
        sd = dict(src.state_dict)
        # A source trained at another resolution (ViT-L/14 at 224 px -> 336 px): its positional grid is
        # interpolated to the model's (clipl.models.pos_embed), the class token kept.
        report.resized = [f"{k} {tuple(src.state_dict[k].shape)}->{tuple(sd[k].shape)}"
                          for k in adapt_pos_embed(sd, model)]
        for key, value in own.items():
            if key not in sd:
                report.missing.append(key)
            elif tuple(sd[key].shape) != tuple(value.shape):
                report.mismatched.append(f"{key} {tuple(sd[key].shape)}->{tuple(value.shape)}")
            else:
                report.loaded.append(key)
        report.unexpected = [k for k in sd if k not in own]
        if strict and (report.missing or report.mismatched or report.unexpected):
            raise ValueError(f"model.init_from={path} does not fit the model strictly: {report.summary()}. "
                             "Set model.init_from_strict=false to load only what fits.")
        if not report.loaded:
            raise ValueError(f"model.init_from={path}: no tensor fits this model ({report.summary()})")
        model.load_state_dict({k: sd[k] for k in report.loaded}, strict=False)
    try:
        from lightning.pytorch.utilities import rank_zero_info
    except ImportError:  # pragma: no cover - lightning is a core dependency
        rank_zero_info = log.info
    rank_zero_info(report.summary())
    return report
