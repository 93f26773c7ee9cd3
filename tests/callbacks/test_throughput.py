"""PerfMonitor through a real (tiny, CPU) run: perf/* metrics logged, MFU consistent with its inputs."""

import csv

import pytest

from clipl.flops import model_flops
from clipl.models import preset
from clipl.run import run

BATCH, PEAK_TFLOPS = 32, 0.2
OVERRIDES = [
    "data.shapes.train_size=512", "data.shapes.val_size=64", "data.shapes.eval_size=64",
    "data.shapes.samples_per_shard=64", f"trainer.micro_batch_size={BATCH}", "data.num_workers=0",
    "eval.zeroshot=[]", "eval.linear_probe=[]", "eval.retrieval=[]", "logging.backend=csv",
    "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "trainer.max_steps=7", "optim.warmup_steps=1", "checkpoint.every_n_steps=100",
]


def _perf_rows(out_dir):
    with (out_dir / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("perf/samples_per_sec")]


def test_cpu_run_logs_mfu_with_peak_tflops(tmp_path):
    assert run("quickstart", [*OVERRIDES, f"trainer.peak_tflops={PEAK_TFLOPS}", f"out_dir={tmp_path}"]) == 0
    rows = _perf_rows(tmp_path)
    # Windows end at the logging steps (1, 3, 5: every 2nd optimiser step); the first opens after step 0.
    assert [int(r["step"]) for r in rows] == [1, 3, 5]
    train_flops = model_flops(preset("tiny_rn")).train(BATCH)
    for r in rows:
        sps, mfu, tflops = (float(r[k]) for k in ("perf/samples_per_sec", "perf/mfu", "perf/tflops_per_device"))
        assert 0 < mfu <= 1
        assert tflops == pytest.approx(sps * train_flops / 1e12, rel=1e-5)
        assert mfu == pytest.approx(tflops / PEAK_TFLOPS, rel=1e-5)
        assert 0 <= float(r["perf/data_wait_fraction"]) < 1


def test_mfu_not_logged_without_a_known_peak(tmp_path):
    assert run("quickstart", [*OVERRIDES, "trainer.max_steps=4", f"out_dir={tmp_path}"]) == 0
    rows = _perf_rows(tmp_path)
    assert rows and all(not r.get("perf/mfu") and float(r["perf/tflops_per_device"]) > 0 for r in rows)



def test_windows_sync_only_at_logging_steps(monkeypatch):
    """A fake 2-rank CUDA run driven hook by hook: one synchronize per logging window, the window's
    samples/s, data wait, TFLOP/s and MFU from a controlled clock."""
    from types import SimpleNamespace

    import torch

    import clipl.callbacks.throughput as mod
    from clipl.flops import ModelFlops

    clock, syncs, logged = [0.0], [], {}
    monkeypatch.setattr(mod.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(clock[0]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    trainer = SimpleNamespace(
        world_size=2, precision="bf16-mixed", is_global_zero=True,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        _logger_connector=SimpleNamespace(should_update_logs=False),
        fit_loop=SimpleNamespace(_should_accumulate=lambda: False),
    )
    module = SimpleNamespace(device=torch.device("cuda"), log=lambda name, value, **kw: logged.__setitem__(name, value))
    flops = ModelFlops(image_forward=1e9, text_forward=1e9, image_train=3e9, text_train=3e9, embed_dim=512)
    monitor = mod.PerfMonitor(flops=flops, peak_tflops=1e-3)
    monitor.setup(trainer, module, "fit")
    batch = {"text": torch.zeros(8, 4)}

    def step(start, end, log):
        clock[0] = start
        monitor.on_train_batch_start(trainer, module, batch, 0)
        clock[0], trainer._logger_connector.should_update_logs = end, log
        monitor.on_train_batch_end(trainer, module, None, batch, 0)

    monitor.on_train_epoch_start(trainer, module)
    step(1.0, 2.0, False)  # the first step opens the window at t=2
    step(2.5, 4.0, False)  # 0.5 s waiting for data
    step(4.5, 6.0, True)  # logging step: window 2..6, 16 samples per rank, 1 s of waiting
    assert syncs == [6.0]
    assert logged["perf/samples_per_sec"] == 16 / 4 * 2
    assert logged["perf/data_wait_fraction"] == 1 / 4
    train = flops.train(8 * 2)  # contrastive batch: 8 per rank x 2 ranks
    assert logged["perf/tflops_per_device"] == pytest.approx(4 * train / 1e12)
    assert logged["perf/mfu"] == pytest.approx(4 * train / 1e9)
    assert logged["perf/max_memory_gib"] == 3
    # Validation between steps is left out of the next window; no sync until the next logging step.
    monitor.on_validation_start(trainer, module)
    logged.clear()
    step(100.0, 101.0, False)
    step(101.0, 103.0, True)
    assert syncs == [6.0, 103.0]
    assert logged["perf/samples_per_sec"] == 16 / 3 * 2  # 6..103 minus the 94 s from 6 to 100
