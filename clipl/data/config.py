"""Typed configuration of the data pipeline (DataConfig) and of the built-in shapes set (ShapesConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ShapesConfig:
    """The built-in captioned-shapes data set (generated once, cached as WebDataset shards)."""

    seed: int = 0
    """Generation seed; one seed always gives byte-identical shards."""
    train_size: int = 20000
    """Number of training samples (one or two objects per scene)."""
    val_size: int = 2000
    """Number of validation samples (same distribution as train, different seed stream)."""
    eval_size: int = 1000
    """Samples in each class-labelled evaluation split ("shape" and "colour"; one object per scene)."""
    image_size: int = 64
    """Side of the square generated images, in pixels."""
    samples_per_shard: int = 500
    """Samples per .tar shard; more shards allow more ranks x workers without resampling."""
    caption_colour_prob: float = 0.85
    """Probability that a description in a caption names the object's colour (the shape is always
    named). Lower values make the shape, not the colour, what tells a batch's captions apart."""
    jpeg_quality: int = 90
    """JPEG quality of the stored images (fixed, so encoding is deterministic)."""
    cache_dir: Optional[str] = None
    """Folder holding generated sets, one <hash of this config> subfolder each; None: ~/.cache/clipl/shapes."""
    num_procs: int = 2
    """Processes used to generate shards (output does not depend on it)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_colour_prob <= 1.0:
            raise ValueError(f"data.shapes.caption_colour_prob must be in [0, 1], got {self.caption_colour_prob}")


@dataclass
class DataConfig:
    """Where the image-text pairs come from and how they are loaded."""

    train: Optional[str] = None
    """Training data: shard pattern(s) (brace ranges, local/fsspec/`pipe:` URLs; several sources
    joined by "::"), a table file (.csv/.tsv/.parquet), or "shapes" for the built-in set."""
    train_weights: Optional[list[float]] = None
    """Relative share of samples drawn from each "::"-separated train source (resampled mode only)."""
    val: Optional[str] = None
    """Validation data, same forms as `train`; None: no validation loader."""
    num_workers: int = 2
    """DataLoader worker processes per device (0: load in the main process)."""
    shuffle_buffer: int = 1000
    """Size of the in-memory sample shuffle buffer of each worker (0 or 1: no sample shuffling)."""
    resampled: bool = False
    """Draw shards with replacement (infinite stream, any shard count); epoch length is `epoch_size`."""
    epoch_size: Optional[int] = None
    """Samples per epoch over all ranks; None: from sizes.json / *_stats.json next to the shards."""
    image_key: str = "jpg;png;jpeg;webp"
    """Sample member(s) holding the image, ";"-separated, first present wins."""
    caption_key: str = "txt"
    """Sample member holding the caption; "ext:field" reads a JSON field (a list: one picked at random)."""
    img_column: str = "filepath"
    """Table sources: column with image paths (relative paths resolve against the table's folder)."""
    caption_column: str = "title"
    """Table sources: column with captions (a list cell: one picked at random)."""
    separator: Optional[str] = None
    """Table sources: field delimiter; None: "," for .csv, tab for .tsv."""
    table_rows_per_shard: int = 1000
    """Table sources: at most this many rows per virtual shard. A table is cut into equal shards
    (sizes differ by at most one row), as many as the smallest multiple of ranks x workers that
    respects this bound, so every worker reads the same number of rows."""
    open_shards: int = 8
    """Shards each worker reads at once, interleaved sample by sample in proportion to their sizes,
    so a batch mixes shards as the data set does (memory: one open file or `pipe:` process each)."""
    max_skip_rate: float = 0.05
    """Abort when more than this fraction of a worker's samples are bad (checked after `skip_check_after`)."""
    skip_check_after: int = 200
    """Samples a worker reads before the skip-rate check starts (avoids aborting on one early bad sample)."""
    max_image_pixels: int = 89_478_485
    """Images with more pixels than this are skipped as decompression bombs (PIL's default limit)."""
    draft_decode: bool = True
    """Decode big JPEGs at reduced size (PIL draft mode) when the source is >= 2x the output size."""
    pin_memory: bool = True
    """Pin host memory of batches (only used when an accelerator is present)."""
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    """The built-in shapes set used when `train` or `val` is "shapes"."""

    def __post_init__(self) -> None:
        # Values checked when the config is made; what needs the sources themselves (their number
        # against train_weights, sizes) is checked when they are opened.
        for key in ("num_workers", "shuffle_buffer"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("table_rows_per_shard", "open_shards", "max_image_pixels"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"data.epoch_size must be >= 1 or null, got {self.epoch_size}")
        if not 0.0 <= self.max_skip_rate <= 1.0:
            raise ValueError(f"data.max_skip_rate must be in [0, 1], got {self.max_skip_rate}")
        if not self.image_key.strip(" ;") or not self.caption_key.strip():
            raise ValueError("data.image_key and data.caption_key name sample members (e.g. jpg;png and txt); "
                             f"got {self.image_key!r} and {self.caption_key!r}")
