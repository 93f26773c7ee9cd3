"""CLIP's byte-level BPE tokenizer (49,408 tokens), id-for-id equal to OpenAI's / open_clip's.

Text is cleaned exactly as OpenAI's ``SimpleTokenizer`` does (ftfy, HTML unescaping twice, whitespace
collapsing, lower-casing), split with the same pre-tokenisation regex, and every word is byte-encoded
and BPE-merged with the shipped merges file. The speed comes from shortcuts that keep the ids exact:

- ftfy is skipped for text it provably leaves unchanged: printable ASCII without ``&`` (every ftfy
  fixer and ``html.unescape`` is then the identity), and, for ftfy 6.3, other text without any
  character ftfy's fixers or its mojibake detector act on (see ``_ftfy_noop_check``);
- cleaned text is cut at spaces (no pre-tokenisation match spans one) and each chunk is cached as
  its packed ids, so a caption of known chunks costs one C-level join;
- the words of unseen chunks are merged in one batch by the Rust ``tokenizers`` BPE (a Python merge
  loop is the fallback), and only the chunks that can survive truncation are looked at.

The merges file is OpenAI's (MIT licence, see ``clipl/assets/NOTICE.bpe_simple_vocab_16e6.txt``).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import os
import unicodedata
from array import array
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
# A cap on cached words and chunks so a long-running loader worker cannot grow without bound; when
# it is reached the caches are simply emptied (cheap, and frequent words come straight back).
MAX_CACHED = 1_000_000
# Cached ids are packed as native int32 bytes (array typecode "i" is 4 bytes on every platform
# torch supports); numpy reads them back with the matching dtype.
_ID_TYPECODE, _ID_BYTES, _ID_DTYPE = "i", 4, np.dtype(np.intc)


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


def _ftfy_noop_check():
    """A predicate that is True only for text ftfy 6.3 provably returns unchanged, or None.

    ftfy runs each fixer until nothing changes; if none applies on the first pass the text comes
    back as is. The character-level fixers (C1 controls, ligatures, character widths, curly quotes,
    line breaks, surrogates, terminal escapes, control characters) only act on characters in their
    own tables, so text without those characters, already NFC, without "&" (HTML) or "\\n" (one
    segment), and not flagged by ftfy's own mojibake detector ``is_bad`` is a fixed point.
    """
    try:
        from ftfy import __version__ as version
        from ftfy.badness import is_bad
        from ftfy.chardata import CONTROL_CHARS, LIGATURES, WIDTH_MAP
    except ImportError:
        return None
    if not version.startswith("6.3"):  # the reasoning above was checked against ftfy 6.3's fixers
        return None
    triggers = set(map(chr, [*CONTROL_CHARS, *LIGATURES, *WIDTH_MAP, *range(0x80, 0xA0)]))
    triggers |= set("&\n\r\x1b\u2028\u2029\u02bc") | set(map(chr, range(0x2018, 0x2020)))
    triggers = frozenset(triggers | set(map(chr, range(0xD800, 0xE000))))  # + lone surrogates
    suspects = _mojibake_suspects()

    # Set membership per character (frozenset.isdisjoint) is far cheaper than a regex with a large
    # character class.
    def unchanged(text: str) -> bool:
        return (
            len(text) < 1_000_000  # ftfy also segments very long text
            and triggers.isdisjoint(text)
            and unicodedata.is_normalized("NFC", text)
            and ((suspects is not None and suspects.isdisjoint(text)) or not is_bad(text))
        )

    return unchanged


# sha256 of ftfy 6.3's BADNESS_RE pattern, whose alternatives were each checked to require at least
# one non-ASCII character written in the pattern (literally or as a class range).
_BADNESS_SHA = "9dcc0f2ac90d9ae3c85eb7b9b2c0b8a8e8126153847c2b30c91a0bb263f3b8c4"


def _mojibake_suspects():
    """The set of every non-ASCII character ftfy's ``is_bad`` can match on, or None.

    Text containing none of them cannot be flagged, so the (slow) ``is_bad`` search is skipped.
    Only used for the exact pattern checked by hand (hash above); otherwise ``is_bad`` always runs.
    """
    from ftfy.badness import BADNESS_RE

    source = BADNESS_RE.pattern
    if hashlib.sha256(source.encode("utf-8")).hexdigest() != _BADNESS_SHA:
        return None
    chars = set()
    for i, c in enumerate(source):
        if c.isascii():
            continue
        chars.add(c)
        if source[i + 1 : i + 2] == "-" and i + 2 < len(source) and not source[i + 2].isascii():
            chars.update(map(chr, range(ord(c), ord(source[i + 2]) + 1)))  # a class range "a-b"
    return frozenset(chars)


_ftfy_unchanged = _ftfy_noop_check()


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML-unescape twice, collapse whitespace, strip, lower-case."""
    if not _is_fast_path(text) and not (_ftfy_unchanged is not None and _ftfy_unchanged(text)):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Byte-level BPE with <start_of_text>/<end_of_text>; ``__call__`` returns (N, context_length)."""

    def __init__(self, merges_path: Union[str, Path] = DEFAULT_MERGES, use_rust: bool = True):
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
        # The pattern matches the special tokens' text whole; they map to their own ids.
        self._specials = {SOT: [self.sot_token_id], EOT: [self.eot_token_id]}
        self._words: dict[str, list[int]] = dict(self._specials)  # pre-tokenised word -> ids
        self._cache: dict[str, bytes] = {}  # space-free chunk of cleaned text -> packed ids
        # Whether some cached chunk has no ids (no real text seems to produce one); while none
        # has, every chunk gives >= 1 id and truncating to room + 1 chunks is exact.
        self._has_empty_chunk = False
        self._rust = _rust_bpe(self.encoder, merges) if use_rust else None

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

    def _bpe_ids(self, words: list[str]) -> list[list[int]]:
        """Token ids of raw pre-tokenised words (uncached), through the Rust BPE when available."""
        symbols = [w.encode("utf-8").decode("latin-1").translate(self._to_symbols) for w in words]
        if self._rust is not None:
            return [e.ids for e in self._rust.encode_batch_fast(symbols, add_special_tokens=False)]
        return [[self.encoder[p] for p in self._bpe(s)] for s in symbols]

    def _fill(self, chunks: Iterable[str]) -> None:
        """Cache the ids of every uncached chunk (space-free piece of cleaned text), in one batch.

        Chunking is exact because no pattern alternative matches a space: the matches of a cleaned
        text are the matches of its space-separated chunks, in order.
        """
        if len(self._cache) + len(self._words) > MAX_CACHED:
            self._cache, self._words = {}, dict(self._specials)
        missing = set(chunks).difference(self._cache)
        if not missing:
            return
        split = {c: self._pattern.findall(c) for c in missing}
        new_words = list({w for ws in split.values() for w in ws}.difference(self._words))
        self._words.update(zip(new_words, self._bpe_ids(new_words)))
        words = self._words
        for chunk, ws in split.items():
            ids = array(_ID_TYPECODE, chain.from_iterable(words[w] for w in ws)).tobytes()
            self._cache[chunk] = ids
            self._has_empty_chunk |= not ids

    def _encode_chunks(self, chunks: list[str], room: int, fill: bool = True) -> bytes:
        """Concatenated ids of ``chunks`` as packed int32 bytes; at least ``room`` ids if available.

        With ``fill=False`` an uncached chunk raises KeyError instead of being resolved.
        """
        # A chunk normally gives >= 1 id, so the first room + 1 chunks cover what truncation keeps.
        # This is the per-caption hot loop: ids are cached as packed bytes and joined in C, so no
        # Python int objects are touched (memory latency, not arithmetic, dominates here).
        head = chunks if len(chunks) <= room + 1 else chunks[: room + 1]
        try:
            ids = b"".join(map(self._cache.__getitem__, head))
        except KeyError:
            if not fill:
                raise
            self._fill(head)
            ids = b"".join(map(self._cache.__getitem__, head))
        if len(ids) <= room * _ID_BYTES and len(head) < len(chunks):  # a chunk gave no ids
            self._fill(chunks)
            ids = b"".join(map(self._cache.__getitem__, chunks))
        return ids

    @staticmethod
    def _chunks(text: str) -> list[str]:
        # For fast-path text, " ".join(t.split()).lower().split() == t.lower().split().
        return text.lower().split() if _is_fast_path(text) else clean_text(text).split()

    # -- public API --------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without <start_of_text>/<end_of_text>."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects a str, got {type(text).__name__}")
        chunks = self._chunks(text)
        return array(_ID_TYPECODE, self._encode_chunks(chunks, room=len(chunks))).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list or 1-D tensor); word ends become spaces, like OpenAI's decode."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        symbols = "".join(self.decoder[i] for i in ids)
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
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        # The hot path, inlined: fast-path text needs only lower() and split() (see _chunks).
        chunked = [
            t.lower().split() if (t.isascii() and t.isprintable() and "&" not in t) else clean_text(t).split()
            for t in texts
        ]
        cut, head = room * _ID_BYTES, room + 1
        if not self._has_empty_chunk:
            get = self._cache.__getitem__
            try:  # everything cached (the steady state): one C-level join per text
                rows = [b"".join(map(get, c if len(c) <= head else c[:head]))[:cut] for c in chunked]
                return _pack(rows, context_length, sot, eot)
            except KeyError:
                pass
        rows: list[bytes] = []
        pending = []  # rows with an unseen chunk: resolved together in one BPE batch below
        for i, chunks in enumerate(chunked):
            try:
                rows.append(self._encode_chunks(chunks, room, fill=False)[:cut])
            except KeyError:
                rows.append(b"")
                pending.append(i)
        if pending:
            self._fill(chain.from_iterable(chunked[i][:head] for i in pending))
            for i in pending:
                rows[i] = self._encode_chunks(chunked[i], room)[:cut]
        return _pack(rows, context_length, sot, eot)


def _pack(rows: list[bytes], context_length: int, sot: int, eot: int) -> torch.LongTensor:
    """(N, context_length) rows of SOT, the packed ids of each row, EOT, then zero padding."""
    # One vectorised scatter instead of a tensor per row: row r's ids go to columns 1..len.
    lengths = np.fromiter((len(r) // _ID_BYTES for r in rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), context_length), dtype=np.int64)
    out[:, 0] = sot
    out[np.arange(len(rows)), lengths + 1] = eot
    if lengths.sum():
        flat = np.frombuffer(b"".join(rows), dtype=_ID_DTYPE)
        row_idx = np.repeat(np.arange(len(rows)), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row_idx, np.arange(flat.size) - starts + 1] = flat
    return torch.from_numpy(out)


def _rust_bpe(encoder: dict[str, int], merges: list[tuple[str, str]]):
    """The BPE merge loop in Rust (``tokenizers``), fed byte-symbol words: no normaliser or
    pre-tokeniser, since cleaning and splitting stay in Python with OpenAI's exact regex."""
    try:
        from tokenizers import Tokenizer, models
    except ImportError:  # the pure-Python merge loop gives the same ids, only slower
        return None
    # Tokenisation runs in forked data-loader workers; Rust thread pools there deadlock or warn, and
    # the batches of unseen words are small. An explicit user setting wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    vocab = {tok: i for tok, i in encoder.items() if tok not in (SOT, EOT)}
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))


@lru_cache(maxsize=None)
def get_tokenizer() -> CLIPTokenizer:
    """The process-wide tokenizer built from the shipped merges file (built once, then cached)."""
    return CLIPTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.LongTensor:
    """Tokenise ``texts`` into a (N, context_length) LongTensor with the shared tokenizer."""
    return get_tokenizer()(texts, context_length=context_length)


__all__ = ["CLIPTokenizer", "clean_text", "get_tokenizer", "tokenize", "DEFAULT_CONTEXT_LENGTH"]
