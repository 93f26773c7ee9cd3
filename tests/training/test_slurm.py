"""SLURM pre-emption on 2 CPU processes started as srun would (SLURM_* environment, no launcher):
SIGUSR1 mid-step -> checkpoint at the step boundary, `scontrol requeue $SLURM_JOB_ID`, exit 143; then
SIGTERM mid-step -> pre-emption checkpoint, exit 143; the relaunched job finishes, and every step's
loss equals the uninterrupted run's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_run import CLI, REPO, TINY, losses

RECIPE = textwrap.dedent(
    '''
    """The quickstart, signalling itself mid-step (after the forward pass, before the backward)."""
    import os, signal
    import lightning as L
    from clipl.run import load_recipe

    quickstart = load_recipe("quickstart")

    class SignalMidStep(L.Callback):
        def on_before_backward(self, trainer, module, loss):
            if trainer.global_step == int(os.environ.get("CLIPL_TEST_USR1_AT", "-1")) and trainer.global_rank == 0:
                os.kill(os.getpid(), signal.SIGUSR1)  # one rank only: the ranks must agree by themselves
            if trainer.global_step == int(os.environ.get("CLIPL_TEST_TERM_AT", "-1")):
                os.kill(os.getpid(), signal.SIGTERM)  # SLURM signals every task

    def config():
        return quickstart.config()

    def callbacks(cfg):
        return [SignalMidStep()]
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun(args: list[str], tmp: Path, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Two ranks of one SLURM job step on this machine, as `srun --ntasks=2` would start them."""
    base = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
                SLURM_NNODES="1", SLURM_NODEID="0", SLURM_JOB_ID="4242", SLURM_JOB_NAME="clipl-test",
                SLURM_NODELIST="127.0.0.1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    procs = [subprocess.Popen(CLI + args, cwd=REPO, env=dict(base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_sigusr1_requeues_at_a_step_boundary_and_sigterm_saves_then_resume_is_exact(tmp_path):
    (tmp_path / "bin").mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = tmp_path / "bin" / "scontrol"  # records the call as SLURM's scontrol would receive it
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    scontrol.chmod(0o755)
    recipe = tmp_path / "signals.py"
    recipe.write_text(RECIPE)
    common = [str(recipe), *TINY, "trainer.max_steps=8", "trainer.devices=2", "trainer.strategy=ddp",
              "trainer.accelerator=cpu", "trainer.micro_batch_size=32", "checkpoint.every_n_steps=100"]
    ref = srun(["run", *common, f"out_dir={tmp_path / 'ref'}"], tmp_path)
    assert [p.returncode for p in ref] == [0, 0], ref[0].stderr[-3000:] + ref[1].stderr[-3000:]
    run = tmp_path / "run"

    usr1 = srun(["run", *common, f"out_dir={run}"], tmp_path, {"CLIPL_TEST_USR1_AT": "3"})
    assert [p.returncode for p in usr1] == [143, 143], usr1[0].stderr[-3000:] + usr1[1].stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]  # rank 0 only, Lightning's job-id rule
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1
    state = torch.load(hpc[0], map_location="cpu", weights_only=False)
    # signalled during step 3's backward: saved once that step had finished, at the step boundary
    assert state["global_step"] == 4 and state["CLIPDataModule"]["consumed"] == 4
    assert "requeue signal" in usr1[0].stdout + usr1[0].stderr

    term = srun(["run", *common, f"out_dir={run}"], tmp_path, {"CLIPL_TEST_TERM_AT": "6"})
    assert [p.returncode for p in term] == [143, 143], term[0].stderr[-3000:] + term[1].stderr[-3000:]
    pre = list((run / "checkpoints").glob("preempt-step=*.ckpt"))
    assert [p.name for p in pre] == ["preempt-step=000000007.ckpt"]

    done = srun(["run", *common, f"out_dir={run}"], tmp_path)
    assert [p.returncode for p in done] == [0, 0], done[0].stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]  # requeued once, by the SIGUSR1 segment only
    got, want = losses(run), losses(tmp_path / "ref")
    assert sorted(got) == sorted(want) == list(range(8))
    assert got == want  # bit-exact on CPU across both interruptions
