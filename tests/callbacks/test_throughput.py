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
