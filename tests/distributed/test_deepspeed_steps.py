"""DeepSpeed's optimizer step on CPU: non-finite steps are discarded exactly; offloaded AdamW trains alike."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

sys.path.insert(0, str(Path(__file__).parent))
import zero_worker  # noqa: E402

CASES = [f"{stage}/{precision}" for stage in (1, 2, 3) for precision in ("32-true", "bf16-mixed")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_steps") / "steps.pt"
    # The first run JIT-compiles DeepSpeed's cpu_adam extension (minutes on 2 cores, cached afterwards).
    zero_worker.run_script("step_worker.py", str(out), timeout=1500)
    return torch.load(out, weights_only=True)


def _max_diff(a: dict, b: dict, prefix: str) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith(prefix))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_nonfinite_step_is_discarded_exactly(results, case):
    r = results["nonfinite"][case]
    before, after_skip, after_zeros, after_finite = r["states"]
    assert r["drops"] is True, f"{case}: the installed DeepSpeed should discard non-finite steps itself"
    assert r["skip_loss"] != r["skip_loss"]  # the loss sent back is NaN ...
    assert r["skipped_steps"] == 1  # ... and the engine counted the step as skipped
    for key in before:  # weights and both Adam moments bit for bit
        torch.testing.assert_close(after_skip[key], before[key], rtol=0, atol=0, msg=f"{case} {key}")
    # The zeros fallback keeps the weights finite but is not a skip: Adam's second moments decay.
    assert all(torch.isfinite(v).all() for v in after_zeros.values())
    assert _max_diff(after_zeros, after_skip, "exp_avg_sq:") > 0
    # Training carries on normally afterwards.
    assert r["finite_loss"] == r["finite_loss"] and all(torch.isfinite(v).all() for v in after_finite.values())
    assert _max_diff(after_finite, after_zeros, "w:") > 0


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_offloaded_cpu_adam_trains_like_torch_adamw(results, stage):
    plain, offloaded = results["offload"][stage][False], results["offload"][stage][True]
    assert plain["optimizer"] == "AdamW" and offloaded["optimizer"] == "DeepSpeedCPUAdam"
    # Same weights, data and hyperparameters: only the AdamW kernel differs (fp32 rounding).
    torch.testing.assert_close(torch.tensor(offloaded["losses"]), torch.tensor(plain["losses"]), rtol=1e-5, atol=1e-6)
    assert offloaded["losses"][-1] < offloaded["losses"][0]
    # Each step moves a weight by up to lr = 1e-3; the two kernels' rounding stays ~1e-6 after four.
    for key, want in plain["state"].items():
        torch.testing.assert_close(offloaded["state"][key], want, rtol=1e-4, atol=3e-6, msg=key)


class _Engine:
    """Just the surface drops_nonfinite_steps reads."""

    def __init__(self, stage, fp16=False, bf16=False, **optimizer_attrs):
        self.optimizer = type("Opt", (), {"overflow": False, **optimizer_attrs})()
        self._stage, self._fp16, self._bf16 = stage, fp16, bf16

    def zero_optimization_stage(self):
        return self._stage

    def fp16_enabled(self):
        return self._fp16

    def bfloat16_enabled(self):
        return self._bf16


@pytest.mark.parametrize(
    "engine, drops",
    [
        (_Engine(2, fp16=True), True),
        (_Engine(2, compute_grad_norm=True), True),
        (_Engine(1, bf16=True, compute_grad_norm=True, check_grad_overflow=True), True),
        (_Engine(1, bf16=True, compute_grad_norm=True, check_grad_overflow=False), False),  # bf16 check off
        (_Engine(2, bf16=True, compute_grad_norm=True), False),  # a DeepSpeed before bf16 overflow checks
        (_Engine(2, compute_grad_norm=False), False),
        (_Engine(3, _loss_scale_update_and_overflow_cleanup=lambda: None), True),
        (_Engine(3), False),
        (_Engine(0, compute_grad_norm=True), False),
    ],
)
def test_drops_nonfinite_steps_detects_the_engine(engine, drops):
    from clipl.distributed.deepspeed import drops_nonfinite_steps

    assert drops_nonfinite_steps(engine) is drops


def test_skip_step_loss_gradients():
    from clipl.distributed.deepspeed import skip_step_loss

    w = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(5, 3)
    skip_step_loss((x @ w, (x @ w).tanh()), engine_drops=False).backward()
    assert torch.equal(w.grad, torch.zeros_like(w))  # the fallback: exact zeros
    w.grad = None
    # The exact path: every gradient NaN, so DeepSpeed's norm check discards the step; this holds
    # even when a tower already produced inf (zeros cannot help there: 0 x inf is NaN).
    feats = (x @ w, torch.tensor([[float("inf"), 1.0]]) * w.sum())
    loss = skip_step_loss(feats, engine_drops=True)
    loss.backward()
    assert torch.isnan(loss) and torch.isnan(w.grad).all()
