"""The quickstart, run for a few steps with only the default install importable, says nothing the user
has to wonder about (no Python warning, no WARNING-level log line of Lightning, clipl or W&B that is
not on ALLOWED), bounds its checkpoint folder and ends with the run summary."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, str] = {}
"""Regex of a message -> why it is acceptable on the quickstart. Empty: nothing is."""

# Tiny overrides: a 512-scene shapes set, 12 steps of 32, an epoch end, a periodic, an end-of-run
# checkpoint and the end-of-fit zero-shot/linear-probe evaluation, as the real quickstart does.
TINY = ["data.shapes.train_size=512", "data.shapes.val_size=64", "data.shapes.eval_size=64",
        "data.shapes.samples_per_shard=64", "trainer.micro_batch_size=32", "trainer.max_steps=12",
        "checkpoint.every_n_steps=5", "trainer.log_every_n_steps=2", "optim.warmup_steps=2"]

# The optional extras ([deepspeed], [hf], [timm], [table], [tensorboard]) and CI-only packages are
# made unimportable: the default install must be enough for the quickstart.
COLLECT = textwrap.dedent('''
    import importlib.abc, json, logging, sys, warnings
    EXTRAS = {"deepspeed", "transformers", "timm", "pyarrow", "tensorboard", "open_clip", "sklearn", "webdataset"}

    class ExtrasAbsentForClipl(importlib.abc.MetaPathFinder):
        # An import of an extra made by clipl's own code fails as if the extra were not installed.
        # (Third-party libraries that probe for them, e.g. torchmetrics, are left alone.)
        def find_spec(self, name, path=None, target=None):
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            caller = frame.f_globals.get("__name__", "") if frame is not None else ""
            if name.split(".")[0] in EXTRAS and caller.split(".")[0] == "clipl":
                raise ModuleNotFoundError(f"No module named {name!r} (an extra, imported by {caller})", name=name)
            return None

    sys.meta_path.insert(0, ExtrasAbsentForClipl())
    caught = []
    warnings.simplefilter("always")
    warnings.showwarning = lambda m, c, f, n, file=None, line=None: caught.append(f"{c.__name__}: {m} ({f}:{n})")

    class Collect(logging.Handler):
        def emit(self, record):
            caught.append(f"log {record.name} {record.levelname}: {record.getMessage()}")

    for name in ("", "lightning", "lightning.pytorch", "lightning.fabric"):  # some do not propagate
        logging.getLogger(name).addHandler(Collect(level=logging.WARNING))
    from clipl.cli import lightning_main
    rc = lightning_main(["run", "quickstart", *sys.argv[2:]])
    json.dump({"rc": rc, "caught": caught}, open(sys.argv[1], "w"))
''')


@pytest.mark.slow  # ~30-50 s: one short quickstart through the CLI entry point
def test_quickstart_is_quiet_bounded_and_summarised_on_the_default_install(tmp_path):
    report = tmp_path / "report.json"
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.pop("WANDB_SILENT", None)  # W&B's own warnings must show up, as for a user
    proc = subprocess.run([sys.executable, "-c", COLLECT, str(report), f"out_dir={tmp_path / 'run'}", *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and report.is_file(), proc.stderr[-5000:]
    got = json.loads(report.read_text())
    # Loader workers and W&B's service print to the streams, not through the hooks above.
    streams = [line for line in (proc.stdout + proc.stderr).splitlines()
               if re.search(r"\bWARNING\b|Warning:|\.py:\d+: ", line)]
    unexplained = [m for m in got["caught"] + streams if not any(re.search(p, m) for p in ALLOWED)]
    assert not unexplained, "\n".join(unexplained)
    # The run did what the quickstart does, and told the user so.
    assert got["rc"] == 0 and "clipl run summary" in proc.stdout and "final loss" in proc.stdout
    # Saves at steps 5, 10, the epoch end at 12 and the end of the run: the newest two (keep_last=2)
    # and last.ckpt remain, as in the full quickstart (at most 5 files).
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert len(files) <= 5 and "last.ckpt" in files and "step=000000010.ckpt" in files, files
    assert "eval zeroshot/shapes_shape" in proc.stdout and "last.ckpt ->" in proc.stdout
