"""CLIPModule: the non-finite guard, checkpoint hygiene and parity with an open_clip training loop."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from clipl.config import parse
from clipl.config.schema import RunConfig
from clipl.models import preset
from clipl.module import CLIPModule, NonFiniteLossError


def tiny_config(*overrides):
    base = RunConfig(model=preset("tiny_vit"))
    return parse(base, ["trainer.accelerator=cpu", "optim.warmup_steps=0", "optim.schedule=constant",
                        "optim.lr=1e-3", *overrides])


def batches(n, b=8, seed=0, ctx=32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({"image": torch.randint(0, 256, (b, 3, 64, 64), dtype=torch.uint8, generator=g),
                    "text": torch.randint(1, 49000, (b, ctx), generator=g)})
    return out


def loader(data):
    return DataLoader(data, batch_size=None)


def trainer(max_steps, callbacks=(), **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=list(callbacks), **kw)


class NaNAt(CLIPModule):
    """Injects a NaN loss at the given optimiser steps."""

    nan_steps: tuple = ()

    def compute_loss(self, out):
        loss = super().compute_loss(out)
        return loss * math.nan if self.global_step in self.nan_steps else loss


class Snapshot(L.Callback):
    def __init__(self):
        self.params = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.params[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_nan_step_is_skipped_and_counted():
    module = NaNAt(tiny_config())
    module.nan_steps = (3,)
    snap = Snapshot()
    t = trainer(6, [snap])
    t.fit(module, loader(batches(6)))
    assert module.nonfinite_steps == 1
    assert t.callback_metrics["train/nonfinite_steps"] == 1
    # Lightning still counts the skipped step; the weights after it equal the weights before it.
    before, after = snap.params[3], snap.params[4]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ...while the neighbouring steps did move the weights.
    assert not all(torch.equal(snap.params[4][k], snap.params[5][k]) for k in before)
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_consecutive_nonfinite_losses_abort_with_a_clear_message():
    module = NaNAt(tiny_config("loop.max_nonfinite_steps=3"))
    module.nan_steps = tuple(range(100))
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=3"):
        trainer(10).fit(module, loader(batches(10)))


def test_hyperparameters_are_plain_and_the_checkpoint_loads_weights_only(tmp_path):
    module = CLIPModule(tiny_config())
    t = trainer(2)
    t.fit(module, loader(batches(2)))
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["model"]["image"]["arch"] == "vit"
    restored = CLIPModule.load_from_checkpoint(path)
    assert restored.config == module.config
    x = batches(1)[0]
    with torch.no_grad():
        a = module(module._images(x), x["text"])
        b = restored(restored._images(x), x["text"])
    assert torch.equal(a.image_features, b.image_features)
    assert restored.samples_seen == module.samples_seen == 16


def test_siglip_objective_gives_the_model_a_bias():
    module = CLIPModule(tiny_config("objective=siglip"))
    module.configure_model()
    assert module.model.logit_bias is not None
    assert module.model.logit_bias.item() == pytest.approx(-10.0)
    assert module.model.logit_scale.item() == pytest.approx(math.log(10.0))


def test_ten_steps_match_open_clip():
    """clipl (Trainer.fit) vs open_clip's CLIP + ClipLoss + AdamW, same weights, data and settings."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.loss import ClipLoss as OCClipLoss

    torch.manual_seed(0)
    ref = open_clip.model.CLIP(
        embed_dim=128,
        vision_cfg=dict(image_size=64, patch_size=8, width=128, layers=2, head_width=64),
        text_cfg=dict(context_length=32, vocab_size=49408, width=128, heads=2, layers=2),
        quick_gelu=True,
    )
    cfg = tiny_config("optim.weight_decay=0.2")
    module = CLIPModule(cfg)
    module.configure_model()
    module.model.load_state_dict(ref.state_dict(), strict=True)

    # the same parameter groups as clipl's optimiser (decay decided by name, identical names)
    from clipl.optim import build_optimizer

    ours = build_optimizer(module.model, cfg.optim)
    names = {id(p): n for n, p in module.model.named_parameters()}
    ref_params = dict(ref.named_parameters())
    groups = [dict(g, params=[ref_params[names[id(p)]] for p in g["params"]]) for g in ours.param_groups]
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    loss_fn = OCClipLoss()
    data = batches(10, b=16, seed=1)

    from clipl.data.transforms import normalize

    ref_losses = []
    for b in data:
        img, txt, scale = ref(normalize(b["image"]), b["text"])
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())

    class Record(L.Callback):
        losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            self.losses.append(outputs["loss"].item())

    rec = Record()
    trainer(10, [rec]).fit(module, loader(data))
    assert len(rec.losses) == 10
    for a, b in zip(rec.losses, ref_losses):
        assert a == pytest.approx(b, rel=1e-4)
    assert ref_losses[-1] < ref_losses[0]


class Noisy(CLIPModule):
    """A loss with random noise in it: resuming must replay the same draws."""

    draws: list

    def compute_loss(self, out):
        noise = torch.rand(())
        self.draws.append((self.global_step, noise.item()))
        return super().compute_loss(out) + noise


def test_resume_restores_the_random_generators(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = batches(4)
    ref = Noisy(tiny_config())
    ref.draws = []
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[ckpt]).fit(ref, loader(data))
    torch.rand(5)  # a different generator position than at the checkpoint
    resumed = Noisy(tiny_config())
    resumed.draws = []
    trainer(4).fit(resumed, loader(data), ckpt_path=str(tmp_path / "step=2.ckpt"))
    assert resumed.draws == ref.draws[2:]
    assert torch.load(tmp_path / "step=2.ckpt", weights_only=True)["clipl"]["rng"][0]["torch"].dtype == torch.uint8
