"""W&B across a resume (offline): one W&B run, the resumed segment's metrics continue the step axis
(trainer/global_step, the x-axis Lightning's WandbLogger defines), and the retrieval examples table holds
real images (the evaluation images' pixels), not placeholders."""

from __future__ import annotations

import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger

from clipl.run import run
from test_run import REPO, TINY


@pytest.mark.slow
def test_wandb_resume_continues_the_step_axis_and_tables_hold_real_images(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[int, dict, int]] = []
    tables: list[list] = []
    segment = [0]
    log_metrics, log_table = WandbLogger.log_metrics, WandbLogger.log_table

    def spy_metrics(self, metrics, step=None):
        logged.append((segment[0], dict(metrics), step))
        return log_metrics(self, metrics, step)

    def spy_table(self, key, columns=None, data=None, dataframe=None, step=None):
        tables.append(list(data))
        return log_table(self, key, columns=columns, data=data, dataframe=dataframe, step=step)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy_metrics)
    monkeypatch.setattr(WandbLogger, "log_table", spy_table)
    args = [a for a in TINY if not a.startswith(("logging.backend", "eval.retrieval", "data.num_workers"))]
    args += ["logging.backend=wandb", "logging.offline=true", "data.num_workers=0", "eval.retrieval=[shapes]",
             "eval.max_samples=16", "eval.wandb_examples=4", f"out_dir={tmp_path}"]
    assert run("quickstart", [*args, "trainer.max_steps=3"]) == 0
    import wandb

    wandb.finish()  # what the end of the first process does: the resume is a new W&B session
    segment[0] = 1
    assert run("quickstart", [*args, "trainer.max_steps=6"]) == 0  # resumes from step 3

    train_steps = {s: sorted({step for seg, m, step in logged if seg == s and "train/loss" in m}) for s in (0, 1)}
    assert train_steps == {0: [0, 1, 2], 1: [3, 4, 5]}  # the resumed segment continues, no restart at 0
    sessions = list((tmp_path / "wandb").glob("offline-run-*"))
    run_ids = {p.name.rsplit("-", 1)[1] for p in sessions}
    assert len(sessions) == 2 and len(run_ids) == 1 and (tmp_path / "wandb_run_id.txt").read_text().strip() in run_ids

    # Retrieval examples: real images, each the pixels of one of the evaluated images
    from clipl.data.config import ShapesConfig
    from clipl.eval.datasets import load_image
    from clipl.eval.specs import resolve

    shapes = ShapesConfig(train_size=512, val_size=64, eval_size=64, samples_per_shard=64)
    sample_pixels = [load_image(s.image, 64).permute(1, 2, 0).numpy() for s in resolve("shapes", "retrieval", shapes)[0].samples[:16]]
    assert len(tables) == 2 and all(len(rows) == 4 for rows in tables)
    for rows in tables:
        for image, text in rows:
            pixels = np.asarray(image.image.convert("RGB"))
            assert pixels.shape == (64, 64, 3) and pixels.std() > 5, pixels.shape  # a picture, not a flat fill
            assert any(np.array_equal(pixels, p) for p in sample_pixels)
            assert text.strip()
