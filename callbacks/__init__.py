"""Lightning callbacks over clipl.eval (installed as clipl.callbacks)."""

from __future__ import annotations

from typing import Any, Optional

from clipl.callbacks.eval_base import EvalCallback
from clipl.callbacks.linear_probe import LinearProbeEval
from clipl.callbacks.retrieval import RetrievalEval
from clipl.callbacks.zero_shot import ZeroShotEval
from clipl.data.wds_format import Members
from clipl.eval.config import EvalConfig


def build_eval_callbacks(
    cfg: EvalConfig,
    out_dir: Optional[str],
    shapes: Any = None,
    model_name: Optional[str] = None,
    pretrained: Optional[str] = None,
    members: Optional[Members] = None,
) -> list[EvalCallback]:
    """One callback per task with data sets in ``cfg``; results go to ``<out_dir>/eval/``.

    ``shapes`` is the run's ShapesConfig (for "shapes" specs; None: the default set); ``members`` reads
    WebDataset sets with the run's ``data.image_key``/``data.caption_key`` (``Members.of(cfg.data)``;
    None: the defaults). The JSON names
    the architecture as ``model`` (default: its preset name or custom-<hash>) and the run with the
    step as ``pretrained`` (default: ``<out_dir>@step<N>``).
    """
    kinds = ((ZeroShotEval, cfg.zeroshot), (RetrievalEval, cfg.retrieval), (LinearProbeEval, cfg.linear_probe))
    return [cls(list(specs), cfg, out_dir, model_name, pretrained, shapes, members) for cls, specs in kinds if specs]


__all__ = ["EvalCallback", "LinearProbeEval", "RetrievalEval", "ZeroShotEval", "build_eval_callbacks"]
