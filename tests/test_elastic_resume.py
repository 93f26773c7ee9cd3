"""Elastic resume through the real CLI: a 2-process DDP run (gloo, CPU, 1 loader worker each) is killed
with kill -9 mid-epoch and resumed on 1 process with 2 workers, keeping the global batch. Every training
sample of the epoch is seen exactly once across the two segments, and the run ends at its planned step."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from test_run import TINY, cli, losses

RECIPE = textwrap.dedent(
    '''
    """The quickstart, logging every training batch's sample keys, and kill -9 at a given step."""
    import os, signal
    from pathlib import Path
    import lightning as L
    from clipl.run import load_recipe

    quickstart = load_recipe("quickstart")

    class KeysAndKill(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == int(os.environ.get("CLIPL_TEST_KILL_AT", "-1")):
                os.killpg(os.getpgid(0), signal.SIGKILL)  # every rank at once, as a node failure would

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            out = Path(trainer.default_root_dir) / f"keys-rank{trainer.global_rank}-{os.getpid()}.txt"
            with out.open("a") as f:  # flushed on close: survives the kill -9 of a later batch
                f.write("".join(f"{trainer.global_step} {k}\\n" for k in batch["key"]))

    def config():
        return quickstart.config()

    def callbacks(cfg):
        return [KeysAndKill()]
    '''
)


@pytest.mark.slow
def test_ddp_two_ranks_killed_resume_on_one_rank_two_workers(tmp_path):
    recipe = tmp_path / "keys.py"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    # 512 samples in 8 shards; global batch 64: 8 steps per epoch, the whole run is one epoch.
    common = [*TINY, "trainer.max_steps=8", "trainer.global_batch_size=64", "data.batch_size=32",
              "checkpoint.every_n_steps=1", "checkpoint.save_on_epoch_end=false", f"out_dir={out}"]
    first = cli(["run", str(recipe), *common, "trainer.devices=2", "trainer.strategy=ddp", "data.num_workers=1"],
                env={"CLIPL_TEST_KILL_AT": "5"}, check=False)
    assert first.returncode != 0
    assert (out / "checkpoints" / "step=000000005.ckpt").is_file(), first.stderr[-3000:]
    segment1 = set((out).glob("keys-*.txt"))
    # 1 process, 2 loader workers: the batch plan keeps the global batch (32 x 2 accumulation steps).
    cli(["run", str(recipe), *common, "trainer.devices=1", "trainer.strategy=auto", "data.num_workers=2"])
    seen: Counter = Counter()
    steps = {}
    for path in out.glob("keys-*.txt"):
        for line in path.read_text().splitlines():
            step, key = line.split()
            seen[key] += 1
            steps.setdefault(path in segment1, set()).add(int(step))
    # global_step after each batch: 1..5 before the kill (at step 5's start), then up to 8
    assert steps[True] == {1, 2, 3, 4, 5} and min(steps[False]) >= 5 and max(steps[False]) == 8
    train_keys = {f"train{i:07d}" for i in range(512)}
    assert set(seen) == train_keys, (len(seen), sorted(set(seen) ^ train_keys)[:5])
    assert max(seen.values()) == 1  # no sample twice
    assert sorted(losses(out)) == list(range(8))  # the planned 8 optimizer steps, logged once each
    assert (out / "checkpoints" / "step=000000008.ckpt").is_file()
