"""CLIPModule.validation_step: data.val gets the training objective and in-batch retrieval, per rank."""

import csv

import lightning as L
import pytest
import torch

from clipl.module import CLIPModule
from clipl.step_stats import in_batch_accuracy
from tests.test_module import batches, loader, tiny_config
from tests.test_run import TINY, cli


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_validation_metrics_equal_a_manual_pass(objective):
    module = CLIPModule(tiny_config(f"objective={objective}"))
    module.configure_model()
    keys = set(module.state_dict())
    val = batches(3, b=8, seed=5) + batches(1, b=5, seed=6)  # a short last batch, as a val set ends
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    got = trainer.validate(module, loader(val), verbose=False)[0]

    module.eval()
    losses, i2t, t2i, sizes = [], [], [], []
    with torch.no_grad():
        for b in val:
            out = module.model(module._images(b), b["text"])
            losses.append(module.objective(out.image_features, out.text_features, out.logit_scale,
                                           out.logit_bias))
            a, c = in_batch_accuracy(out.image_features, out.text_features)
            i2t.append(a), t2i.append(c), sizes.append(len(b["text"]))
    w = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)  # Lightning weights epoch means by batch_size

    def mean(xs):
        return float((torch.stack(xs).double() * w).sum())

    assert got["val/loss"] == pytest.approx(mean(losses), rel=1e-5)
    assert got["val/acc_i2t"] == pytest.approx(mean(i2t), abs=1e-6)
    assert got["val/acc_t2i"] == pytest.approx(mean(t2i), abs=1e-6)
    # The per-rank validation objective adds no parameters: checkpoints keep the same keys.
    assert set(module.state_dict()) == keys


@pytest.mark.slow
def test_val_loss_goes_down_and_retrieval_beats_chance_on_shapes(tmp_path):
    # 16 steps an epoch, validation (256 shapes, 8 batches of 32) after each of 8 epochs.
    cli(["run", "quickstart", f"out_dir={tmp_path}", *TINY, "data.val=shapes",
         "trainer.micro_batch_size=32", "trainer.max_steps=128", "data.shapes.val_size=256", "trainer.max_epochs=null",
         f"data.shapes.cache_dir={tmp_path / 'shapes'}", "checkpoint.every_n_steps=1000"])
    with (tmp_path / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(rows) >= 2, "validation ran at most once"
    first, last = float(rows[0]["val/loss"]), float(rows[-1]["val/loss"])
    assert last < first - 0.1, (first, last)
    # Chance is 1/32 in a batch of 32 (less reachable still: shapes scenes share captions).
    late = [float(r[k]) for r in rows[-3:] for k in ("val/acc_i2t", "val/acc_t2i")]
    assert sum(late) / len(late) > 1.4 / 32, late
