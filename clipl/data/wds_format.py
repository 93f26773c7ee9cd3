"""The WebDataset member rules: one statement, read by the training reader (clipl.data.webdataset) and
the evaluation reader (clipl.eval.datasets), so ``data.image_key``/``data.caption_key`` mean the same
to both.

- **Grouping.** A sample is every file of a tar whose names share a key: the path up to the first "."
  of the file name (img2dataset's layout: ``a/0001.jpg``, ``a/0001.txt`` -> key ``a/0001``; the rest,
  lower-cased, is the extension: ``0001.c.json`` -> ``c.json``). Members of one sample are consecutive.
- **Image.** The first of ``data.image_key``'s ";"-separated extensions that the sample has
  (default ``jpg;png;jpeg;webp``).
- **Caption.** The ``data.caption_key`` member's UTF-8 text (default ``txt``); ``ext:field`` reads a
  field of that member as JSON (a list of captions: training picks one at random per epoch).
- **Every caption** (retrieval evaluation): the ``caption_key`` field's list when it names one; for a
  plain-text caption key, the ``.json`` member's ``"captions"`` list when the sample has one (the
  layout of the shapes set and of captioned eval shards, whose ``.txt`` holds only the first), else the
  caption text (clip_benchmark's retrieval shards: one caption per line).
- **Label** (classification evaluation): an ASCII integer in the ``.cls`` member.

Only the standard library and the skip reasons are imported: this is a leaf both readers depend on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Container, Mapping, Optional

from clipl.data.skip import BadSample

IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", "webp")
"""Member extensions taken as the image, in order of preference (``data.image_key``'s default)."""
CAPTION_EXTENSION = "txt"
"""The caption member's extension (``data.caption_key``'s default)."""
LABEL_EXTENSION = "cls"
"""The class-label member of labelled evaluation shards."""
ALL_CAPTIONS = ("json", "captions")
"""(member, JSON field) holding every caption of a sample for retrieval, beside a plain-text caption."""


def split_member(name: str) -> tuple[str, str]:
    """A tar member's (sample key, extension): key = path up to the first '.' of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _decode(data: bytes, ext: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSample("bad_caption_encoding", f".{ext} is not UTF-8") from None


@dataclass(frozen=True)
class Members:
    """Which members of a sample are its image and caption(s) (see the module docstring)."""

    image_exts: tuple[str, ...] = IMAGE_EXTENSIONS
    """Image extensions in order of preference."""
    caption_ext: str = CAPTION_EXTENSION
    """The caption member's extension."""
    caption_field: str = ""
    """JSON field of the caption member holding the caption(s); "": the member's text is the caption."""

    @classmethod
    def from_keys(cls, image_key: str = ";".join(IMAGE_EXTENSIONS), caption_key: str = CAPTION_EXTENSION) -> Members:
        """The rules of ``data.image_key`` ("jpg;png") and ``data.caption_key`` ("txt" or "json:caption")."""
        ext, _, caption_field = caption_key.partition(":")
        return cls(tuple(k.strip().lower() for k in image_key.split(";") if k.strip()), ext.strip().lower(),
                   caption_field.strip())

    @classmethod
    def of(cls, data_cfg: Any) -> Members:
        """The rules of a DataConfig (its ``image_key``/``caption_key``); None: the defaults."""
        return cls() if data_cfg is None else cls.from_keys(data_cfg.image_key, data_cfg.caption_key)

    def image_ext(self, present: Container[str]) -> Optional[str]:
        """The extension of the sample's image member (the first preferred one present), or None."""
        return next((e for e in self.image_exts if e in present), None)

    def caption(self, members: Mapping[str, bytes]) -> Any:
        """The caption value for training: a str, or the JSON field's value (a str or a list of them).
        BadSample("missing_caption" / "bad_caption_encoding") when it is absent or unreadable."""
        if self.caption_ext not in members:
            raise BadSample("missing_caption", f"no .{self.caption_ext} member")
        text = _decode(members[self.caption_ext], self.caption_ext)
        if not self.caption_field:
            return text
        try:
            return json.loads(text)[self.caption_field]
        except (ValueError, KeyError, TypeError):
            raise BadSample("missing_caption", f"no field {self.caption_field!r} in .{self.caption_ext}") from None

    def every_caption(self, members: Mapping[str, bytes], one_per_line: bool = False) -> list[str]:
        """Every caption of a sample, for retrieval evaluation ([] when it has none)."""
        member, field = ALL_CAPTIONS
        if not self.caption_field and member in members and member != self.caption_ext:
            listed = json.loads(_decode(members[member], member)).get(field, [])
            if listed:
                return [c.strip() for c in ([listed] if isinstance(listed, str) else listed) if c.strip()]
        try:
            value = self.caption(members)
        except BadSample as bad:
            if bad.reason == "missing_caption":
                return []
            raise
        if isinstance(value, str):
            lines = value.splitlines() if one_per_line and not self.caption_field else [value]
            return [c.strip() for c in lines if c.strip()]
        return [c.strip() for c in value if isinstance(c, str) and c.strip()]

    def read_now(self, ext: str) -> bool:
        """Whether an indexer reads member ``ext`` at once (captions, labels) rather than by byte range later."""
        return ext in (self.caption_ext, LABEL_EXTENSION, ALL_CAPTIONS[0])
