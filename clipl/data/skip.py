"""Bad-sample accounting: every skipped sample or shard is counted under one named reason."""

from __future__ import annotations

from collections import Counter


class BadSample(Exception):
    """A sample that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# Reason -> what it means. Logged as data/skipped/<reason>.
REASONS: dict[str, str] = {
    "missing_image": "the sample has no image member (or the table cell is empty)",
    "missing_caption": "the sample has no caption member / field",
    "missing_file": "a table row names an image file that does not exist",
    "not_an_image": "the image bytes are not a known image format (e.g. an HTML page saved as .jpg)",
    "corrupt_image": "the image is truncated or fails to decode",
    "decompression_bomb": "the image has more pixels than data.max_image_pixels",
    "empty_caption": "the caption is empty or whitespace only",
    "bad_caption_encoding": "the caption is not valid UTF-8",
    "unreadable_shard": "a shard could not be opened or read to the end (the samples before the failure are kept)",
    "missing_shard": "a shard file does not exist",
}

# Shard-level reasons count shards, not samples, so they do not enter the sample skip rate.
SHARD_REASONS = frozenset({"unreadable_shard", "missing_shard"})


class SkipCounter:
    """Counts good and skipped samples; enforces the skip-rate limit."""

    def __init__(self, max_skip_rate: float = 0.05, check_after: int = 200):
        self.max_skip_rate = max_skip_rate
        self.check_after = check_after
        self.total: Counter = Counter()
        self._since_flush: Counter = Counter()
        self.good = 0

    def ok(self) -> None:
        self.good += 1

    def skip(self, reason: str) -> None:
        self.total[reason] += 1
        self._since_flush[reason] += 1
        self.check()

    @property
    def bad(self) -> int:
        return sum(v for k, v in self.total.items() if k not in SHARD_REASONS)

    def check(self, final: bool = False) -> None:
        """Raise when the fraction of bad samples passes max_skip_rate."""
        seen = self.good + self.bad
        if seen == 0 or (seen < self.check_after and not final):
            return
        rate = self.bad / seen
        if rate > self.max_skip_rate:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.total.items()))
            raise RuntimeError(
                f"data: {self.bad} of {seen} samples were bad ({rate:.1%} > data.max_skip_rate="
                f"{self.max_skip_rate:.1%}); skipped by reason: {counts}. Fix the data or raise "
                "data.max_skip_rate."
            )

    def flush(self) -> dict[str, int]:
        """Per-reason counts since the previous flush (what a batch reports as `skipped`)."""
        out = dict(self._since_flush)
        self._since_flush.clear()
        return out
