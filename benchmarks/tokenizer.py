"""clipl vs open_clip tokenizer throughput on the same captions, identical output asserted.

    python benchmarks/tokenizer.py [--n 50000] [--seed 0] [--batch 50000]

The captions are synthetic alt-text: words drawn Zipf-like from the ~33k whole ASCII words of CLIP's
own BPE vocabulary, capitalised and punctuated, with numbers and 2% far over 77 tokens. A fraction
``--non-ascii`` of captions (default 0.1) also carries non-ASCII vocabulary words, accents, emoji,
non-Latin scripts, curly quotes, HTML entities or odd whitespace: those take ftfy's slow path in both
tokenizers. Both tokenizers start with empty caches (the first pass is "cold"); a second is "warm".
Throughput is measured in process CPU time, so other jobs on a shared machine do not skew it.
"""

from __future__ import annotations

import argparse
import gzip
import random
import time

import torch

from clipl.tokenizer import DEFAULT_MERGES, NUM_MERGES, CLIPTokenizer

EXTRAS = ["café", "naïve", "😀", "👍🏽", "日本語", "Москва", "&amp;", "&quot;hi&quot;", "“quoted”",
          "it’s", "\t", "  ", "\n", "ﬁne", "ＡＢＣ", "Ünïcödé", "東京タワー", "سلام", "…"]


def captions(n: int, seed: int = 0, non_ascii: float = 0.1) -> list[str]:
    """``n`` deterministic synthetic captions (see the module docstring)."""
    lines = gzip.open(DEFAULT_MERGES).read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    tok = CLIPTokenizer()
    # Whole-word merges ("cat</w>"), mapped from byte symbols back to text.
    vocab = [tok.decode([tok.encoder["".join(m.split())]]).strip() for m in lines if m.endswith("</w>")]
    vocab = [w for w in vocab if w.isalpha()]
    words = [w for w in vocab if w.isascii()]
    extras = EXTRAS + [w for w in vocab if not w.isascii()]
    rng = random.Random(seed)
    # Zipf-like weights over a shuffled vocabulary: a few very common words, a long tail.
    rng.shuffle(words)
    weights = [1.0 / (rank + 10) for rank in range(len(words))]
    out = []
    for _ in range(n):
        length = rng.randint(60, 150) if rng.random() < 0.02 else rng.randint(4, 25)
        toks = rng.choices(words, weights, k=length)
        if rng.random() < 0.15:
            toks.insert(rng.randrange(len(toks) + 1), str(rng.randrange(1, 3000)))
        if rng.random() < non_ascii:
            toks.insert(rng.randrange(len(toks) + 1), rng.choice(extras))
        text = " ".join(toks)
        text = text.capitalize() if rng.random() < 0.6 else text
        out.append(text + rng.choice(["", ".", ".", "!", ",", " - stock photo"]))
    return out


def _throughput(fn, texts: list[str], batch: int) -> tuple[float, torch.Tensor]:
    start = time.process_time()
    out = torch.cat([fn(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return len(texts) / (time.process_time() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of captions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1024, help="captions per tokenizer call")
    parser.add_argument("--non-ascii", type=float, default=0.1, help="fraction of non-ASCII captions")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds (best of)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from open_clip.tokenizer import SimpleTokenizer

    texts = captions(args.n, args.seed, args.non_ascii)
    reference, ours = SimpleTokenizer(), CLIPTokenizer()  # fresh instances: empty caches
    print(f"{len(texts)} captions, batch {args.batch}, "
          f"{sum(not t.isascii() or '&' in t for t in texts)} with non-ASCII or '&'")
    # Cold: one pass each from empty caches. Warm: interleaved rounds, best of each (the least
    # disturbed by other processes).
    for name, rounds in (("cold", 1), ("warm", args.rounds)):
        ref_rate = our_rate = 0.0
        for _ in range(rounds):
            rate, ref_out = _throughput(lambda b: reference(b, context_length=77), texts, args.batch)
            ref_rate = max(ref_rate, rate)
            rate, our_out = _throughput(lambda b: ours(b, context_length=77), texts, args.batch)
            our_rate = max(our_rate, rate)
            assert torch.equal(ref_out, our_out), "clipl and open_clip token ids differ"
        print(f"{name}: open_clip {ref_rate:,.0f} captions/s | clipl {our_rate:,.0f} captions/s | "
              f"ratio {our_rate / ref_rate:.1f}x | outputs identical")


if __name__ == "__main__":
    main()
