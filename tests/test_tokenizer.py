"""clipl's tokenizer against open_clip's (the reference): ids, truncation, decode, bad input."""

from __future__ import annotations

import random

import ftfy
import html
import pytest
import torch

import clipl
from clipl.tokenizer import CLIPTokenizer, _ftfy_unchanged, _is_fast_path, clean_text, get_tokenizer

open_clip = pytest.importorskip("open_clip")

WORDS = (
    "a the photo of dog cat man woman sitting on with red blue green car street city tree house "
    "people standing front large small white black two three young old table it's don't we're "
    "they've i'm you'll he'd antidisestablishmentarianism supercalifragilistic mcdonald's o'neill"
).split()
SCRIPTS = [
    "日本語のテキスト", "中文字符测试", "한국어 문장", "Ελληνικά κείμενα", "Русский текст", "עברית",
    "العربية", "हिन्दी पाठ", "ไทยภาษา", "ქართული", "Ꭰꭰ cherokee", "𝔉𝔯𝔞𝔨𝔱𝔲𝔯 𝕕𝕠𝕦𝕓𝕝𝕖",
    "Ünïcödé àccénts çà", "straße ÆØÅ æøå", "İstanbul ıi", "ǅungla ǈ", "ﬁnancial ﬂuﬃest",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "🏳️‍🌈", "©®™", "→←↑", "½¼¾", "①②③", "∑∫√"]
ENTITIES = ["&amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x2019;", "&amp;amp;amp;", "&nbsp;", "&eacute;",
            "&EACUTE;", "&hellip;", "&not", "&copy", "&#128512;", "&bogus;", "AT&T", "R&D", "<i>x</i>"]
SPACES = ["  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2028", "\u200b",
          "\u2003", "\x1c", "\x85", "\ufeff", "\x1b[31m", "\x00", "\x07"]
PUNCT = ["...", "!!", "?!", "--", "—", "–", "“quoted”", "‘single’", "'s", "'T", "#hashtag",
         "@user", "http://example.com/a_b?c=1&d=2", "$12.50", "3.14159", "1,000,000", "2024-01-31",
         "12:30pm", "50%", "(parens)", "[brackets]", "{braces}", "a/b\\c", "_under_", "~tilde`",
         "<start_of_text>", "<end_of_text>", "<END_OF_TEXT>", "Ã©tÃ©", "â€™", "ÃƒÂ©"]


def _corpus(n: int = 2400, seed: int = 0) -> list[str]:
    """Adversarial captions covering every category the acceptance list names."""
    rng = random.Random(seed)
    pools = [WORDS, WORDS, SCRIPTS, EMOJI, ENTITIES, SPACES, PUNCT, [str(rng.randrange(10**6))]]
    out = ["", " ", "\n\t ", "&amp;", "a", "A", "'", "<end_of_text>"]
    while len(out) < n:
        kind = len(out) % 6
        if kind == 0:  # plain English-like caption
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
            text = text.capitalize() + rng.choice([".", "", "!", " ."])
        elif kind == 1:  # far over 77 tokens
            text = " ".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(60, 300)))
        elif kind == 2:  # mixed everything, joined by odd whitespace
            parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
            text = "".join(p + rng.choice(SPACES + [" ", ""]) for p in parts)
        elif kind == 3:  # digits, punctuation, case
            text = "".join(rng.choice(PUNCT + WORDS + [str(rng.random())]) + " " for _ in range(8))
            text = text.upper() if rng.random() < 0.3 else text
        elif kind == 4:  # random code points from several blocks, including rare ones
            blocks = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x530), (0x600, 0x700), (0x900, 0x980),
                      (0x3040, 0x3100), (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0x1F300, 0x1F700),
                      (0x2000, 0x2070), (0xFF00, 0xFFF0), (0x1D400, 0x1D500)]
            lo, hi = rng.choice(blocks)
            text = "".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randint(1, 40)))
        else:  # printable ASCII soup (exercises the ftfy-free fast path)
            text = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randint(0, 120)))
        out.append(text)
    return out


CORPUS = _corpus()


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return get_tokenizer()


def test_vocab_and_specials(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_token_id, tok.eot_token_id) == (49406, 49407)
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


@pytest.fixture(scope="module")
def ref_ids() -> list[list[int]]:
    """open_clip's encode of every corpus string (computed once: ftfy makes it slow)."""
    return [open_clip.tokenizer._tokenizer.encode(text) for text in CORPUS]


def _reference_rows(ref_ids, context_length):
    # open_clip's truncation rule applied to its own encodings: cut, then force EOT last.
    out = torch.zeros(len(ref_ids), context_length, dtype=torch.long)
    for i, ids in enumerate(ref_ids):
        row = [49406, *ids, 49407]
        if len(row) > context_length:
            row = row[:context_length]
            row[-1] = 49407
        out[i, : len(row)] = torch.tensor(row)
    return out


def test_tokenize_equals_open_clip_tokenize(tok):
    sample = CORPUS[::4]
    assert torch.equal(clipl.tokenize(sample), open_clip.tokenize(sample))


@pytest.mark.parametrize("context_length", [77, 32, 5, 2])
def test_ids_equal_open_clip_on_corpus(tok, ref_ids, context_length):
    assert len(CORPUS) >= 2000
    ours = clipl.tokenize(CORPUS, context_length=context_length)
    ref = _reference_rows(ref_ids, context_length)
    assert ours.dtype == torch.long and ours.shape == (len(CORPUS), context_length)
    bad = (ours != ref).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"{len(bad)} rows differ, first: {CORPUS[bad[0]]!r}"


def test_long_captions_keep_eot_last(tok, ref_ids):
    long = [text for text, ids in zip(CORPUS, ref_ids) if len(ids) > 200]
    assert len(long) >= 50
    rows = tok(long)
    assert (rows[:, -1] == tok.eot_token_id).all() and (rows[:, 0] == tok.sot_token_id).all()


def test_encode_and_decode_match_reference(tok, ref_ids):
    ref = open_clip.tokenizer._tokenizer
    for text, expected in zip(CORPUS, ref_ids):
        ids = tok.encode(text)
        assert ids == expected, text
        assert tok.decode(ids) == ref.decode(ids)
    assert tok.decode(torch.tensor(tok.encode("Hello, World!"))) == "hello , world ! "


def test_fast_path_is_exact_cleaning():
    # On printable ASCII without "&", ftfy and html.unescape must be the identity.
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randint(0, 60)))
        if _is_fast_path(text):
            assert html.unescape(html.unescape(ftfy.fix_text(text))) == text
    assert not _is_fast_path("a\x0bb") and not _is_fast_path("x &amp; y") and not _is_fast_path("é")
    assert clean_text("  Hello\t&amp;amp;  WORLD ") == "hello & world"


def test_ftfy_noop_shortcut_is_exact():
    # Whenever the shortcut skips ftfy, ftfy must indeed return the text unchanged.
    assert _ftfy_unchanged is not None, "ftfy 6.3 expected in the test environment"
    skipped = [text for text in CORPUS if _ftfy_unchanged(text)]
    assert len(skipped) > 300  # the shortcut is exercised, not vacuous
    assert all(ftfy.fix_text(text) == text for text in skipped)
    for text in ["Ã©tÃ©", "it’s", "ﬁne", "ＡＢＣ", "e\u0301", "a\nb", "x &amp; y", "\x9d"]:
        assert not _ftfy_unchanged(text), text


def test_mojibake_prefilter_is_sound():
    from ftfy.badness import BADNESS_RE, is_bad

    from clipl.tokenizer import _mojibake_suspects

    suspects = _mojibake_suspects()
    assert suspects is not None, "ftfy's BADNESS_RE changed: re-check _mojibake_suspects"
    source = BADNESS_RE.pattern
    # Every class range touching non-ASCII must start non-ASCII, or the expansion would miss it.
    for i, c in enumerate(source[1:-1], start=1):
        if c == "-" and not source[i + 1].isascii():
            assert not source[i - 1].isascii(), source[i - 5 : i + 5]
    clean = [text for text in CORPUS if suspects.isdisjoint(text)]
    assert len(clean) > 500 and not any(is_bad(text) for text in clean)


def test_rust_and_python_bpe_agree():
    rust, python = CLIPTokenizer(), CLIPTokenizer(use_rust=False)
    assert rust._rust is not None and python._rust is None
    rng = random.Random(2)
    words = [w for text in CORPUS[:300] for w in rust._pattern.findall(clean_text(text))]
    words += ["".join(chr(rng.randrange(0x61, 0x7B)) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    assert rust._bpe_ids(words) == python._bpe_ids(words)


def test_single_string_and_cache_consistency(tok):
    first = tok("A Photo Of A Cat")
    assert first.shape == (1, 77)
    assert torch.equal(tok("A Photo Of A Cat"), first)  # second call served from the cache
    fresh = CLIPTokenizer()
    assert torch.equal(fresh(CORPUS[:300]), tok(CORPUS[:300]))
    careful = CLIPTokenizer()
    careful._has_empty_chunk = True  # forces the per-row path used after a chunk without ids
    assert torch.equal(careful(CORPUS[:300]), tok(CORPUS[:300]))


def test_cache_cap_empties_and_refills(monkeypatch):
    import clipl.tokenizer as module

    monkeypatch.setattr(module, "MAX_CACHED", 50)
    small = CLIPTokenizer()
    for start in range(0, 400, 40):  # many clears along the way
        batch = CORPUS[start : start + 40]
        assert torch.equal(small(batch), get_tokenizer()(batch))
    assert len(small._cache) + len(small._words) < 50 + 40 * 200


def test_bad_input_is_named(tok):
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        tok(["ok"], context_length=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5, 49408])
    with pytest.raises(FileNotFoundError, match="merges"):
        CLIPTokenizer("/nonexistent/bpe.txt.gz")
    assert tok([]).shape == (0, 77)
