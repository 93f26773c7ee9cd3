"""CLIP's byte-level BPE tokenizer (49,408 tokens), id-for-id equal to OpenAI's / open_clip's.

Text is cleaned exactly as OpenAI's ``SimpleTokenizer`` does (ftfy, HTML unescaping twice, whitespace
collapsing, lower-casing), split with the same pre-tokenisation regex, and every word is byte-encoded
and BPE-merged with the shipped merges file. Speed comes from two exact shortcuts:

- ftfy is skipped for printable ASCII text without ``&``: on such text every ftfy fixer (and
  ``html.unescape``) is the identity (mojibake, quotes, widths, ligatures, surrogates, line breaks
  and control characters all need non-ASCII, ``&``, ``\\r``/``\\x0b``/``\\x1b`` or other controls);
- a word cache maps each raw word straight to its token ids, so common words cost one dict lookup.

The merges file is OpenAI's (MIT licence, see ``clipl/assets/NOTICE.bpe_simple_vocab_16e6.txt``).
"""

from __future__ import annotations

import gzip
import html
import sys
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence, Union

import ftfy
import numpy as np
import regex
import torch

DEFAULT_MERGES = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
SOT, EOT = "<start_of_text>", "<end_of_text>"
# The released vocabulary: 256 byte symbols, the same with "</w>", 48,894 merges, 2 specials.
NUM_MERGES = 49152 - 256 - 2
# A cap on cached words so a long-running loader worker cannot grow without bound; when it is
# reached the cache is simply emptied (cheap, and frequent words come straight back).
MAX_CACHED_WORDS = 500_000


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte 0..255 used by byte-level BPE (index = byte value).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 bytes (controls,
    space, soft hyphen, ...) are assigned code points 256, 257, ... in byte order, so the BPE never
    sees whitespace or control characters.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _is_fast_path(text: str) -> bool:
    # Printable ASCII with no "&": ftfy.fix_text and html.unescape leave it unchanged (see module doc).
    return text.isascii() and text.isprintable() and "&" not in text


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML-unescape twice, collapse whitespace, strip, lower-case."""
    if not _is_fast_path(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Byte-level BPE with <start_of_text>/<end_of_text>; ``__call__`` returns (N, context_length)."""

    def __init__(self, merges_path: Union[str, Path] = DEFAULT_MERGES):
        path = Path(merges_path)
        if not path.is_file():
            raise FileNotFoundError(f"BPE merges file not found: {path}")
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        # Line 0 is a version header; OpenAI's vocabulary uses the first NUM_MERGES merges only.
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path}: expected {NUM_MERGES} merge lines of two symbols each")
        symbols = byte_symbols()
        # The vocabulary lists the byte symbols by code point (the self-standing printable bytes
        # first, then the remapped ones), not by byte value: OpenAI's id order.
        base = sorted(symbols, key=ord)
        vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: list[str] = vocab
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        # Latin-1 code point (= byte value) -> byte symbol, and back, for str.translate.
        self._to_symbols = {b: s for b, s in enumerate(symbols)}
        self._from_symbols = {ord(s): b for b, s in enumerate(symbols)}
        # OpenAI's pre-tokenisation: the special tokens, English contractions, letter runs, single
        # digits, and runs of other non-space characters. Whitespace is dropped.
        self._pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self._specials = {SOT: [self.sot_token_id], EOT: [self.eot_token_id]}
        self._cache: dict[str, list[int]] = {}

    # -- BPE ---------------------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[str]:
        """Merge the byte symbols of one (byte-encoded) word, lowest-ranked pair first."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = None, NUM_MERGES
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair, NUM_MERGES)
                if r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            # Merge every non-overlapping occurrence of the best pair, scanning left to right.
            first, second = best
            merged, i, n = [], 0, len(parts)
            while i < n:
                if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _word_ids(self, word: str) -> list[int]:
        if word in self._specials:  # the pattern matches the special tokens' text whole
            return self._specials[word]
        symbols = word.encode("utf-8").decode("latin-1").translate(self._to_symbols)
        return [self.encoder[p] for p in self._bpe(symbols)]

    def _chunk_ids(self, chunk: str) -> list[int]:
        """Ids of one space-free chunk of cleaned text, cached.

        Exact because no pattern alternative matches a space: the matches of a cleaned text are the
        matches of its space-separated chunks, in order.
        """
        ids = list(chain.from_iterable(self._word_ids(w) for w in self._pattern.findall(chunk)))
        if len(self._cache) >= MAX_CACHED_WORDS:
            self._cache = {}
        self._cache[chunk] = ids
        return ids

    def _encode_chunks(self, chunks: list[str], limit: int) -> list[int]:
        """Concatenated ids of ``chunks``, stopping once more than ``limit`` ids are collected."""
        cache, out = self._cache, []
        for chunk in chunks:
            ids = cache.get(chunk)
            out.extend(ids if ids is not None else self._chunk_ids(chunk))
            if len(out) > limit:
                break
        return out

    @staticmethod
    def _chunks(text: str) -> list[str]:
        # For fast-path text, " ".join(t.split()).lower().split() == t.lower().split().
        return text.lower().split() if _is_fast_path(text) else clean_text(text).split()

    # -- public API --------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without <start_of_text>/<end_of_text>."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects a str, got {type(text).__name__}")
        return self._encode_chunks(self._chunks(text), limit=sys.maxsize)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list or 1-D tensor); word ends become spaces, like OpenAI's decode."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        try:
            symbols = "".join(self.decoder[int(i)] for i in ids)
        except IndexError:
            bad = next(int(i) for i in ids if not 0 <= int(i) < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})") from None
        raw = symbols.translate(self._from_symbols).encode("latin-1", errors="ignore")
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self, texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> torch.LongTensor:
        """Tokenise ``texts`` into a zero-padded (N, context_length) LongTensor.

        Each row is <start_of_text>, the text's ids, <end_of_text>; rows that do not fit are cut to
        ``context_length`` with <end_of_text> kept as the last token.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}")
        room = context_length - 2
        sot, eot = self.sot_token_id, self.eot_token_id
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
            ids = self._encode_chunks(self._chunks(text), limit=room)
            rows.append([sot, *ids[:room], eot])
        return _pack(rows, context_length)


def _pack(rows: list[list[int]], context_length: int) -> torch.LongTensor:
    # One vectorised scatter instead of a tensor per row: row r's tokens go to columns 0..len-1.
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), context_length), dtype=np.int64)
    if len(rows):
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        row_idx = np.repeat(np.arange(len(rows)), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row_idx, np.arange(flat.size) - starts] = flat
    return torch.from_numpy(out)


@lru_cache(maxsize=None)
def get_tokenizer() -> CLIPTokenizer:
    """The process-wide tokenizer built from the shipped merges file (built once, then cached)."""
    return CLIPTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.LongTensor:
    """Tokenise ``texts`` into a (N, context_length) LongTensor with the shared tokenizer."""
    return get_tokenizer()(texts, context_length=context_length)


__all__ = ["CLIPTokenizer", "clean_text", "get_tokenizer", "tokenize", "DEFAULT_CONTEXT_LENGTH"]
