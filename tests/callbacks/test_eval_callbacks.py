"""The evaluation callbacks in a real (CPU) Lightning fit on the shapes splits."""

import csv
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, WandbLogger

import clipl.eval.runner as runner
from clipl.callbacks import LinearProbeEval, RetrievalEval, ZeroShotEval, build_eval_callbacks
from clipl.data.config import ShapesConfig
from clipl.eval.config import EvalConfig
from clipl.eval.specs import resolve
from clipl.models import build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return ShapesConfig(train_size=16, val_size=24, eval_size=32, samples_per_shard=12,
                        cache_dir=str(tmp_path_factory.mktemp("shapes")), num_procs=1)


def tiny_model():
    return build_model("tiny_vit")


class TinySystem(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = tiny_model()

    def training_step(self, batch, batch_idx):
        images, tokens = batch
        out = self.model(images, tokens)
        logits = out.logit_scale.exp() * out.image_features @ out.text_features.T
        target = torch.arange(len(images))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _loader(n=4, b=4):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 64, 64, generator=g), torch.randint(1, 400, (32,), generator=g)) for _ in range(n * b)]
    return torch.utils.data.DataLoader(data, batch_size=b)


def _cfg(**kw):
    base = dict(batch_size=16, num_workers=0, linear_probe_max_iter=20, linear_probe_weight_decays=[1e-3, 1e-1])
    return EvalConfig(**{**base, **kw})


def test_callbacks_schedule_log_and_write_json(tmp_path, shapes):
    cfg = _cfg(zeroshot=["shapes:shape"], retrieval=["shapes"], linear_probe=["shapes:shape"], every_n_steps=2)
    cbs = build_eval_callbacks(cfg, str(tmp_path), shapes=shapes)
    assert [type(c) for c in cbs] == [ZeroShotEval, RetrievalEval, LinearProbeEval]
    system = TinySystem()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, limit_val_batches=1, num_sanity_val_steps=1,
                        logger=CSVLogger(tmp_path, name="logs"), callbacks=cbs, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, _loader(), _loader(1))
    files = sorted(p.name for p in (tmp_path / "eval").glob("*.json"))
    # Steps 2 and 4 (every_n_steps); validation end at step 4 and fit end reuse step 4; no sanity run.
    assert files == [
        "linear_probe_shapes_shape_step00000002.json", "linear_probe_shapes_shape_step00000004.json",
        "zeroshot_classification_shapes_shape_step00000002.json", "zeroshot_classification_shapes_shape_step00000004.json",
        "zeroshot_retrieval_shapes_step00000002.json", "zeroshot_retrieval_shapes_step00000004.json",
    ]
    rec = json.loads((tmp_path / "eval" / files[3]).read_text())
    assert rec["task"] == "zeroshot_classification" and rec["dataset"] == "shapes_shape" and rec["model"] == "tiny_vit"
    # The checkpoint column names the run and the step: one row per checkpoint in clip_benchmark tables.
    assert rec["pretrained"] == f"{tmp_path}@step4" and rec["step"] == 4
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and rec["language"] == "en"
    ret = json.loads((tmp_path / "eval" / files[5]).read_text())["metrics"]
    assert set(ret) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    lp = json.loads((tmp_path / "eval" / files[1]).read_text())["metrics"]
    assert {"lp_acc1", "lp_mean_per_class_recall", "weight_decay"} <= set(lp)

    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    keys = set().union(*[{k for k, v in r.items() if v} for r in rows])
    top1 = [(int(r["step"]), float(r["val/zeroshot/shapes_shape/top1"])) for r in rows if r.get("val/zeroshot/shapes_shape/top1")]
    assert [s for s, _ in top1] == [2, 4]  # every evaluation reaches the logger (log_every_n_steps=50)
    assert trainer.callback_metrics["val/zeroshot/shapes_shape/top1"].item() == pytest.approx(top1[-1][1])
    assert {"val/zeroshot/shapes_shape/top1", "val/zeroshot/shapes_shape/top5",
            "val/retrieval/shapes/image_retrieval_recall@5", "val/retrieval/shapes/text_retrieval_recall@1",
            "val/linear_probe/shapes_shape/top1"} <= keys

    # The logged step-4 numbers are what a direct evaluation of the final model gives.
    enc = runner.model_encoders(system.model, "cpu")
    with runner.eval_mode(system.model):
        direct = runner.run_zero_shot(enc, resolve("shapes:shape", "zeroshot", shapes)[0], cfg).metrics
    assert direct == rec["metrics"]
    assert cbs[0].last_metrics["val/zeroshot/shapes_shape/top1"] == direct["acc1"]


def test_results_never_overwritten(tmp_path, shapes):
    cb = ZeroShotEval(["shapes:colour"], _cfg(), str(tmp_path), shapes=shapes)
    system = TinySystem()
    trainer = SimpleNamespace(global_step=7, is_global_zero=True, loggers=[], precision_plugin=None)
    system.log = lambda *a, **k: None
    cb._run(trainer, system, log_with_module=False)
    cb._run(trainer, system, log_with_module=False)
    names = sorted(p.name for p in (tmp_path / "eval").glob("*.json"))
    assert names == ["zeroshot_classification_shapes_colour_step00000007.json",
                     "zeroshot_classification_shapes_colour_step00000007_1.json"]
    assert "acc5" in json.loads((tmp_path / "eval" / names[0]).read_text())["metrics"]  # 10 colours


def test_class_embeddings_cached_only_while_text_tower_frozen(tmp_path, shapes, monkeypatch):
    calls = []
    real = runner.classifier_weights
    monkeypatch.setattr(runner, "classifier_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    cb = ZeroShotEval(["shapes:shape"], _cfg(max_samples=8), None, shapes=shapes)
    system = TinySystem()
    trainer = SimpleNamespace(global_step=1, is_global_zero=True, loggers=[], precision_plugin=None)
    cb._run(trainer, system, log_with_module=False)
    cb._run(trainer, system, log_with_module=False)
    assert len(calls) == 2  # text tower trainable: recomputed every time
    system.model.lock_text_tower()
    first = None
    for _ in range(3):
        cb._run(trainer, system, log_with_module=False)
        first = first or dict(cb.last_metrics)
    assert len(calls) == 3 and cb.last_metrics == first


class _FakeWandb(WandbLogger):
    def __init__(self):  # no run: only records what the callbacks send
        self.tables = {}

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables[key] = (columns, data)

    def log_metrics(self, metrics, step=None):
        pass


def test_wandb_tables_only_for_wandb(tmp_path, shapes):
    fake = _FakeWandb()
    trainer = SimpleNamespace(global_step=3, is_global_zero=True, loggers=[fake], precision_plugin=None)
    system = TinySystem()
    ZeroShotEval(["shapes:shape"], _cfg(), None, shapes=shapes)._run(trainer, system, log_with_module=False)
    RetrievalEval(["shapes"], _cfg(wandb_examples=2), None, shapes=shapes)._run(trainer, system, log_with_module=False)
    cols, rows = fake.tables["val/zeroshot/shapes_shape/per_class"]
    assert cols == ["class", "top1_recall"] and [r[0] for r in rows][:2] == ["circle", "square"]
    cols, rows = fake.tables["val/retrieval/shapes/examples"]
    assert cols == ["image", "top captions"] and len(rows) == 2 and rows[0][1].count("\n") == 2
    # Any other logger: no tables, no errors.
    plain = SimpleNamespace(global_step=3, is_global_zero=True, loggers=[CSVLogger(tmp_path)], precision_plugin=None)
    RetrievalEval(["shapes"], _cfg(wandb_examples=2), None, shapes=shapes)._run(plain, system, log_with_module=False)


def test_end_of_training_evaluation(tmp_path, shapes):
    cfg = _cfg(zeroshot=["shapes:shape"], every_n_steps=3, on_validation_end=False, max_samples=8)
    cb = ZeroShotEval(cfg.zeroshot, cfg, str(tmp_path), shapes=shapes)
    seen = []
    real_run = cb._run
    cb._run = lambda trainer, pl_module, log_with_module: (seen.append((trainer.global_step, log_with_module)),
                                                           real_run(trainer, pl_module, log_with_module))
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=CSVLogger(tmp_path, name="logs"), callbacks=[cb],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinySystem(), _loader())
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.json")) == [
        "zeroshot_classification_shapes_shape_step00000003.json", "zeroshot_classification_shapes_shape_step00000004.json"]
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    assert [int(r["step"]) for r in rows if r.get("val/zeroshot/shapes_shape/top1")] == [3, 4]
    assert seen == [(3, True), (4, False)]  # the last one from on_train_end (self.log not allowed there)


@pytest.mark.slow
def test_callbacks_under_two_process_ddp_match_one_process(tmp_path, shapes):
    """Lightning DDP (2 CPU processes, gloo): sharded callback results equal a 1-process evaluation."""
    cfg = _cfg(zeroshot=["shapes:colour"], retrieval=["shapes"], linear_probe=["shapes:shape"], max_captions=3)
    system = TinySystem()
    cbs = build_eval_callbacks(cfg, str(tmp_path / "ddp"), shapes=shapes)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, callbacks=cbs,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.validate(system, _loader(1))
    single = build_eval_callbacks(cfg, str(tmp_path / "one"), shapes=shapes)
    one = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[], precision_plugin=None)
    for cb in single:
        cb._run(one, system, log_with_module=False)
    names = sorted(p.name for p in (tmp_path / "one" / "eval").glob("*.json"))
    assert len(names) == 3
    assert names == sorted(p.name for p in (tmp_path / "ddp" / "eval").glob("*.json"))
    for n in names:
        a = json.loads((tmp_path / "ddp" / "eval" / n).read_text())["metrics"]
        b = json.loads((tmp_path / "one" / "eval" / n).read_text())["metrics"]
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a), (n, a, b)
