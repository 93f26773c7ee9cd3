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
    common = [*TINY, "trainer.max_steps=8", "trainer.global_batch_size=64",
              "checkpoint.every_n_steps=1", "checkpoint.save_on_epoch_end=false", f"out_dir={out}"]
    first = cli(["run", str(recipe), *common, "trainer.devices=2", "trainer.strategy=ddp", "data.num_workers=1",
                 "trainer.micro_batch_size=32"],
                env={"CLIPL_TEST_KILL_AT": "5"}, check=False)
    assert first.returncode != 0
    # The checkpoint the resume starts from: the newest one written before the kill (checkpoints are
    # written in the background, so the kill may catch the newest one unfinished: it then does not exist).
    saved = [int(p.name[5:14]) for p in (out / "checkpoints").glob("step=*.ckpt")]
    assert saved, first.stderr[-3000:]
    resumed_at = max(saved)
    assert 1 <= resumed_at < 8
    segment1 = set(out.glob("keys-*.txt"))
    # 1 process, 2 loader workers, the same global batch of 64: the batch plan makes it 2 accumulated
    # micro-batches of 32 (the loader yields the step's 64 samples per batch).
    done = cli(["run", str(recipe), *common, "trainer.devices=1", "trainer.strategy=auto", "data.num_workers=2",
                "trainer.micro_batch_size=32"])
    assert "2 micro-batch" in done.stdout + done.stderr, done.stdout[-2000:]
    seen: Counter = Counter()
    steps: dict[bool, set] = {True: set(), False: set()}
    for path in out.glob("keys-*.txt"):
        for line in path.read_text().splitlines():
            step, key = line.split()  # global_step after the batch
            if path in segment1 and int(step) > resumed_at:
                continue  # trained after the checkpoint the resume starts from: lost with the kill
            seen[key] += 1
            steps[path in segment1].add(int(step))
    assert steps[True] == set(range(1, resumed_at + 1)) and steps[False] == set(range(resumed_at + 1, 9))
    train_keys = {f"train{i:07d}" for i in range(512)}
    assert set(seen) == train_keys, (len(seen), sorted(set(seen) ^ train_keys)[:5])
    assert max(seen.values()) == 1  # no sample twice
    assert sorted(losses(out)) == list(range(8))  # the planned 8 optimizer steps
    assert (out / "checkpoints" / "step=000000008.ckpt").is_file()
