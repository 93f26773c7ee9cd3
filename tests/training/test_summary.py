"""RunSummary counts what the run did: steps, samples, the final loss, the checkpoints."""

import lightning as L
import torch

from clipl.training.checkpointing import checkpoint_callbacks
from clipl.training.config import CheckpointConfig
from clipl.training.summary import RunSummary


class Logs(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.last = None

    def training_step(self, batch, batch_idx):
        loss = (self.w - batch["text"].float()).pow(2).mean()
        self.log("train/loss", loss)
        self.last = float(loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_summary_rows(tmp_path):
    data = torch.utils.data.DataLoader([{"text": torch.full((3,), float(i))} for i in range(20)], batch_size=4)
    summary, model = RunSummary(tmp_path), Logs()
    callbacks = checkpoint_callbacks(CheckpointConfig(every_n_steps=4, save_on_epoch_end=False), tmp_path)
    L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[*callbacks, summary]).fit(model, data)
    rows = dict(summary.rows("finished"))
    assert rows["status"] == "finished" and rows["steps"] == "10"
    assert rows["samples"] == "40 this session"  # 10 steps of 4
    assert float(rows["final loss"]) == float(f"{model.last:.4g}")
    assert float(rows["samples/s"].split()[0].replace(",", "")) > 0
    assert rows["samples/s"].endswith("(mean after the first step)")  # 10% of 10 steps
    assert "(2 kept; newest: last.ckpt -> step=000000010.ckpt)" in rows["checkpoints"]
    assert "clipl run summary" in summary.render("finished")
