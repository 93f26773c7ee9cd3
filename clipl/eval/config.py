"""The typed configuration of the evaluation callbacks and of `clipl eval`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from clipl.registry import check_literals


@dataclass
class EvalConfig:
    """Which evaluations run, on which data, and how often (see clipl.eval.datasets for specs)."""

    zeroshot: list[str] = field(default_factory=list)
    """Zero-shot classification sets: "shapes" (every shapes eval split), "shapes:colour" (one
    split), an ImageFolder directory (one sub-folder per class), labelled WebDataset eval shards
    (`.cls` per sample, `classnames.txt` beside them), or a clip_benchmark WebDataset folder
    (DIR/test/*.tar with classnames.txt and zeroshot_classification_templates.txt in DIR; "DIR:train"
    for another split). Prefix "name=" to name a set."""
    retrieval: list[str] = field(default_factory=list)
    """Image-text retrieval sets: "shapes" (the shapes val split), "shapes:<split>", or WebDataset
    shards (brace pattern, a .tar, or a directory of .tar) whose `.json` has "captions" (else `.txt`)."""
    linear_probe: list[str] = field(default_factory=list)
    """Linear-probe sets, same forms as `zeroshot`; a directory with train/ and test/ (or val/)
    sub-folders is used as given, any other set is split by `linear_probe_train_fraction`."""
    every_n_steps: Optional[int] = None
    """Also evaluate every N optimizer steps during training; None evaluates only at validation end
    and at fit end."""
    on_validation_end: bool = True
    """Evaluate at the end of every validation epoch (never during the sanity check)."""
    on_fit_end: bool = True
    """Evaluate once more when training ends, still on the accelerator (skipped if the last
    evaluation was at the same step)."""
    batch_size: int = 64
    """Images per forward pass on each rank."""
    num_workers: int = 2
    """DataLoader worker processes per rank for decoding eval images."""
    templates: Optional[str] = None
    """Prompt templates: a builtin name ("openai": 80 templates, "openai7": 7, "shapes", "plain")
    or a text file with one "{}" template per line, or clip_benchmark's templates JSON ("FILE.json"
    takes the entry named like the data set, "FILE.json:KEY" entry KEY); None uses the data set's own templates
    (shapes, or a templates.txt beside the data) and otherwise "openai"."""
    linear_probe_position: Literal["after", "before"] = "after"
    """Image features for the linear probe: "after" the projection (the CLIP embedding) or
    "before" it (the tower's pooled features, from the Tower contract: every registered tower)."""
    linear_probe_train_fraction: float = 0.5
    """For a labelled set without a train/test split: the fraction used to train the probe."""
    linear_probe_val_fraction: float = 0.2
    """Fraction of the probe's training features held out to choose the L2 regularisation."""
    linear_probe_weight_decays: list[float] = field(
        default_factory=lambda: [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    )
    """L2 penalties (on the mean cross-entropy; sklearn's C = 1 / (penalty * n_train)) searched."""
    linear_probe_max_iter: int = 200
    """L-BFGS iterations per probe fit."""
    max_samples: Optional[int] = None
    """Use only the first N samples of every set (quick checks); None uses them all."""
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """K values of recall@K."""
    max_captions: int = 5
    """Captions per image used for retrieval (extra ones are dropped; a fixed count keeps the
    number of text forwards equal on every rank, which ZeRO-3 requires)."""
    chunk_size: int = 1024
    """Query rows per similarity block in retrieval (bounds memory: chunk x N scores)."""
    wandb_examples: int = 8
    """Example retrievals (image with its top captions) sent to W&B per retrieval set."""
    seed: int = 0
    """Seed of the deterministic train/held-out splits of the linear probe."""

    def __post_init__(self) -> None:
        check_literals(self, "eval")
        for name in ("linear_probe_train_fraction", "linear_probe_val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"eval.{name} must lie in (0, 1), got {getattr(self, name)}")
