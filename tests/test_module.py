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


class SGDModule(CLIPModule):
    """Plain SGD (no fused kernel: the non-finite flag is read on the host), so an update is lr x gradient."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.5)


def test_gradients_are_clipped_to_trainer_gradient_clip_val():
    """Manual optimisation: the module clips to trainer.gradient_clip_val itself (Lightning's Trainer never does)."""
    from clipl.data.transforms import normalize

    cfg = tiny_config("trainer.gradient_clip_val=0.01")
    torch.manual_seed(0)
    module = SGDModule(cfg)
    module.configure_model()
    ref = CLIPModule(cfg)
    ref.configure_model()
    ref.model.load_state_dict(module.model.state_dict())
    data = batches(1)
    trainer(1).fit(module, loader(data))
    out = ref(normalize(data[0]["image"]), data[0]["text"])
    ref.compute_loss(out).backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 0.01)
    assert norm > 0.1  # the clip bites
    with torch.no_grad():
        for p in ref.model.parameters():
            p -= 0.5 * p.grad
    for (name, got), want in zip(module.model.state_dict().items(), ref.model.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _planned(config, global_batch, micro, contrastive=True):
    from clipl.distributed.plan import resolve_plan

    return CLIPModule(config, plan=resolve_plan(global_batch, micro, 1, contrastive))


class _SyncCounter:
    """Counts host reads of tensors (Tensor.item/tolist/cpu/numpy, bool/float/int of a tensor) and
    torch.cuda.synchronize, by the optimiser step they happen in (on a GPU each one waits for the device)."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        import traceback

        self.calls: list[tuple] = []
        self.step = None
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, _name=name, **kwargs):
                if self.step is not None:
                    where = [f.name for f in traceback.extract_stack(limit=12)]
                    self.calls.append((self.step, _name, t.device.type, where))
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: self.calls.append((self.step, "sync", "", [])))

    def callback(self):
        counter = self

        class Steps(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                counter.step = trainer.global_step  # the step about to run

            def on_train_batch_end(self, *args):
                counter.step = None  # Lightning's end-of-batch bookkeeping is counted separately below

        return Steps()


def test_no_host_sync_outside_logging_steps(monkeypatch):
    """Issue #11: between logging steps a training step (2 micro-batches, contrastive accumulation,
    the non-finite guard, clipping, the LR schedule) reads nothing from the device."""
    module = _planned(tiny_config("trainer.gradient_clip_val=1.0"), 8, 4)
    counter = _SyncCounter(monkeypatch)
    logged = []
    original_log = CLIPModule.log

    def log(self, name, value, *args, **kwargs):
        logged.append((self.global_step, name, value))
        return original_log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(CLIPModule, "log", log)
    trainer(8, [counter.callback()], log_every_n_steps=4).fit(module, loader(batches(8)))
    by_step = {}
    for step, *call in counter.calls:
        by_step.setdefault(step, []).append(call)
    logging_steps = {3, 7}  # steps 4 and 8 (log_every_n_steps=4; 8 is also the last)
    assert set(by_step) <= logging_steps, {s: c for s, c in by_step.items() if s not in logging_steps}
    assert all(len(by_step.get(s, [])) == 1 and by_step[s][0][0] == "tolist" for s in logging_steps)
    # What the module hands Lightning is host data: Lightning's .item() on progress-bar values after
    # every later batch (outside the counted window above) then waits for nothing.
    assert {s - 1 for s, _, _ in logged} == logging_steps  # logged once the step is taken
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.grad_fn is None for _, _, v in logged)
    assert {"train/loss", "train/loss_avg", "train/contrastive_batch", "train/acc_i2t"} <= {n for _, n, _ in logged}


def test_accumulated_training_equals_whole_batch_training():
    """Trainer.fit, 3 optimiser steps: global 16 as 4 micro-batches of 4 == one micro-batch of 16 (to 1e-5);
    plain accumulation (contrastive_accumulation=false) trains a different model."""

    def fit(global_batch, micro, contrastive=True):
        torch.manual_seed(0)
        # lr 1e-4: parameters whose true gradient is exactly 0 (attention key biases: a softmax ignores
        # a shift shared by a row) get float rounding noise as gradient, which Adam normalises into
        # steps of up to lr x noise / eps; at 1e-3 that noise alone moves them by ~1e-5 in 3 steps.
        module = _planned(tiny_config("optim.lr=1e-4"), global_batch, micro, contrastive)
        module.configure_model()
        initial = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        trainer(3).fit(module, loader(batches(3, b=16, seed=4)))
        return module, initial, {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    _, initial, whole = fit(16, 16)
    accumulated_module, _, accumulated = fit(16, 4)
    for name, want in whole.items():
        torch.testing.assert_close(accumulated[name], want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert accumulated_module.trainer.callback_metrics["train/contrastive_batch"] == 16
    _, _, plain = fit(16, 4, contrastive=False)
    moved = max(float((whole[k] - initial[k]).abs().max()) for k in whole)
    differ = max(float((plain[k] - whole[k]).abs().max()) for k in whole)
    assert moved > 1e-4 and differ > 1e-4, (moved, differ)


def test_bf16_mixed_accumulation_matches_within_bf16_tolerance():
    """bf16-mixed autocast on CPU through Trainer.fit: 2 micro-batches of 4 vs one of 8, 2 steps."""

    def losses(micro):
        torch.manual_seed(0)
        module = _planned(tiny_config(), 8, micro)
        got = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, *args):
                got.append(float(outputs["loss"]))

        trainer(2, [Record()], precision="bf16-mixed").fit(module, loader(batches(2, b=8, seed=6)))
        return got

    whole, accumulated = losses(8), losses(4)
    assert len(whole) == 2 and all(math.isfinite(v) for v in whole)
    torch.testing.assert_close(torch.tensor(accumulated), torch.tensor(whole), rtol=2e-2, atol=2e-2)
