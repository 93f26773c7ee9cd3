"""Warning hygiene for `lightning run`: messages that do not concern the user are filtered here, each
with the reason it does not apply. (What could be fixed at its cause is fixed there: Lightning's
"Trainer(limit_*=1.0)" lines in clipl.training.trainer, the val_dataloader warning without a validation set in
clipl.data.datamodule, W&B's "anonymous setting" warning in clipl.training.tracking, "weights_only was not
set" in clipl.training.checkpointing.) tests/test_warnings.py runs the quickstart and fails on anything else.
"""

from __future__ import annotations

import logging
import warnings

FILTERED_WARNINGS: dict[str, str] = {
    # CLIPStream's __len__ is exact: every worker reads its own shards (split by rank and worker id)
    # and yields the same fixed number of batches, the very configuration the warning asks for.
    r"Your `IterableDataset` has `__len__` defined": "clipl's stream length is exact per worker",
    # CLIPModule always defines validation_step (it scores data.val, or any loader given to
    # trainer.validate); a run without a validation set simply has nothing to validate.
    r"You defined a `validation_step` but have no `val_dataloader`": "validation runs when data.val is set",
    # Lightning's own code calling a torch API deprecated in torch 2.9+; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated": "inside Lightning (torch deprecation)",
}
"""Python warning message (regex, start of the message) -> why it does not concern a clipl user."""

FILTERED_INFO: dict[str, str] = {
    "💡 Tip: For seamless": "Lightning advertises its cloud products (LitLogger, litmodels) on every run",
}
"""Lightning rank-zero log line (prefix) -> why it is dropped."""


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(prefix) for prefix in FILTERED_INFO)


_FILTER = _DropLines()


def install() -> None:
    """Filter the messages above in this process (idempotent)."""
    for pattern in FILTERED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
