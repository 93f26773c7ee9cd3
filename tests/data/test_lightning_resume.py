"""Through a real Lightning Trainer: batches counted at the right hook, checkpoint resume is exact."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from datafixtures import stand_in_tokenizer, write_shards


class KeyRecorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch, idx):
        assert "_loader" not in batch and batch["image"].dtype == torch.uint8
        self.seen += batch["key"]
        return (self.w - batch["image"].float().mean() / 255) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(pattern, root, ckpt=None, callbacks=()):
    cfg = DataConfig(train=pattern, num_workers=0, shuffle_buffer=8)
    dm = CLIPDataModule(cfg, image_size=16, context_length=8, seed=3, tokenizer=stand_in_tokenizer, batch_size=4)
    model = KeyRecorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks),
                        enable_checkpointing=bool(callbacks))
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model.seen, dm


def test_lightning_checkpoint_resume_mid_epoch_and_at_boundary(tmp_path):
    pattern = write_shards(tmp_path / "shards", [12] * 4)  # 48 samples: 12 batches per epoch
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=5, save_top_k=-1,
                                             filename="{step}")
    full, dm = _fit(pattern, tmp_path, callbacks=[ck])
    assert len(full) == 2 * 48 and dm.epoch == 1 and dm.consumed == 12
    assert sorted(full[:48]) == sorted(full[48:]) and full[:48] != full[48:]
    state = torch.load(tmp_path / "ck" / "step=5.ckpt", weights_only=True)["CLIPDataModule"]
    assert state["epoch"] == 0 and state["consumed"] == 5
    rest, _ = _fit(pattern, tmp_path, ckpt=str(tmp_path / "ck" / "step=5.ckpt"))
    assert rest == full[5 * 4:]
    rest, _ = _fit(pattern, tmp_path, ckpt=str(tmp_path / "ck" / "step=15.ckpt"))  # epoch 1, batch 3
    assert rest == full[15 * 4:]


@pytest.mark.slow
def test_lightning_resume_from_epoch_end_checkpoint(tmp_path):
    pattern = write_shards(tmp_path / "shards", [12] * 4)
    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, filename="{epoch}",
                                             save_on_train_epoch_end=True)
    full, _ = _fit(pattern, tmp_path, callbacks=[ck])
    state = torch.load(tmp_path / "ck" / "epoch=0.ckpt", weights_only=True)["CLIPDataModule"]
    assert state["epoch"] == 0 and state["consumed"] == 12
    rest, dm = _fit(pattern, tmp_path, ckpt=str(tmp_path / "ck" / "epoch=0.ckpt"))
    assert rest == full[48:] and dm.epoch == 1
