"""DeepSpeed ZeRO-1/2/3 through deepspeed.initialize on CPU: contrastive accumulation under the engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

sys.path.insert(0, str(Path(__file__).parent))
import zero_worker  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_accum") / "accum.pt"
    zero_worker.run_script("accum_worker.py", str(out), timeout=1200)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_accumulated_step_equals_full_batch_step(results, stage):
    whole, accumulated = results[stage][1], results[stage][4]
    torch.testing.assert_close(torch.tensor(accumulated["losses"]), torch.tensor(whole["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert whole["losses"][1] != whole["losses"][0]  # the second step saw updated weights
    for name, want in whole["weights"].items():  # fp32 master weights after two optimiser steps
        torch.testing.assert_close(accumulated["weights"][name], want, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"ZeRO-{stage} {name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_nonfinite_accumulated_step_is_discarded_by_the_engine(results, stage):
    r = results[stage][4]
    assert r["mask"] == "nan" and r["nan_loss"] != r["nan_loss"]
    assert r["skipped_steps"] == 1
    for name, want in r["weights"].items():
        torch.testing.assert_close(r["after_nan"][name], want, rtol=0, atol=0, msg=lambda m: f"ZeRO-{stage} {name}: {m}")
