"""Experiment tracking: W&B (offline when there is no key or no reachable server), CSV, TensorBoard.

The W&B API key is only ever read from the environment or ~/.netrc by wandb itself; it is never put
into a config, a checkpoint or a log. When we decide to run offline we also drop it from this
process's environment so nothing downstream can record it.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from clipl.training.config import LoggingConfig

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id.txt"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _server_reachable(timeout_s: float = 2.0) -> bool:
    """A TCP connect to the W&B server, bounded so an unreachable one never stalls the run."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_offline(cfg: LoggingConfig) -> bool:
    """Whether W&B must run offline: asked for, no API key, or no reachable server."""
    return cfg.offline or os.environ.get("WANDB_MODE") in ("offline", "disabled") or not (
        _has_wandb_key() and _server_reachable()
    )


def _run_id(out_dir: Path) -> str:
    """The W&B run id of this run directory, created once, so a resumed run continues the same run."""
    path = out_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class AppendingCSVLogger(Logger):
    """Per-step metrics in <out_dir>/metrics.csv, appended across resumes (never truncated).

    Lightning's CSVLogger deletes an existing metrics file when a run restarts in the same folder;
    a resumed run must keep the history it continues.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(out_dir) / "metrics.csv"
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                self._keys = list(csv.DictReader(f).fieldnames or [])

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is written next to metrics.csv as config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step
        self._rows.append(row)

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        new = sorted({k for r in self._rows for k in r} - set(self._keys))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new and self.path.is_file():  # a wider header: rewrite once, keeping every earlier row
            with self.path.open(newline="") as f:
                old = list(csv.DictReader(f))
            self._keys += new
            tmp = self.path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._keys)
                writer.writeheader()
                writer.writerows(old)
            tmp.replace(self.path)
        elif new:
            self._keys += new
        fresh = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys)
            if fresh:
                writer.writeheader()
            writer.writerows(self._rows)
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def build_loggers(cfg: LoggingConfig, out_dir: str | Path, config: dict) -> list[Logger]:
    """The loggers for ``cfg.backend`` writing into ``out_dir``; ``config`` is the resolved run config."""
    out_dir = Path(out_dir)
    if cfg.backend == "none":
        return []
    if cfg.backend == "csv":
        return [AppendingCSVLogger(out_dir)]
    if cfg.backend == "tensorboard":
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            return [TensorBoardLogger(save_dir=str(out_dir), name="tensorboard", version="")]
        except ModuleNotFoundError as e:
            raise RuntimeError("logging.backend=tensorboard needs `pip install tensorboard`") from e
    return [_wandb_logger(cfg, out_dir, config)]  # "wandb": LoggingConfig refuses any other name


def _wandb_logger(cfg: LoggingConfig, out_dir: Path, config: dict) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    offline = wandb_offline(cfg)
    if offline:
        os.environ.pop("WANDB_API_KEY", None)  # not needed offline; keep it out of every file
        os.environ["WANDB_MODE"] = "offline"
        log.info("W&B runs offline (no API key, no reachable server, or logging.offline=true)")
    logger = WandbLogger(
        project=cfg.project,
        name=cfg.name or out_dir.name,
        save_dir=str(out_dir),
        id=_run_id(out_dir),
        resume="allow",
        offline=offline,
        group=cfg.group,
        tags=list(cfg.tags) or None,
        notes=cfg.notes,
        entity=cfg.entity,
        config=config,
    )
    # Lightning always passes wandb.init(anonymous=None); wandb >= 0.19 warns that the (deprecated)
    # setting has no effect whenever the key is present, even as None. Not passing it changes nothing.
    logger._wandb_init.pop("anonymous", None)
    return logger
