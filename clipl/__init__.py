"""clipl: train CLIP models with Lightning."""

from __future__ import annotations

__version__ = "0.1.0"

from clipl import models  # noqa: E402  (cheap: registries import backbones lazily)


def tokenize(texts, context_length: int = 77):
    """CLIP byte-level BPE tokenisation: a (N, context_length) LongTensor (see clipl.tokenizer)."""
    from clipl.tokenizer import tokenize as _tokenize

    return _tokenize(texts, context_length=context_length)


__all__ = ["models", "tokenize", "__version__"]
