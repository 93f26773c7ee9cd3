"""End to end through the real CLI: exit codes, the run directory, kill -9 / SIGTERM and exact resume."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipl.training.checkpointing import find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipl.cli"]

# A tiny run on a small shapes set: 8 steps per epoch (512 samples / batch 64), 3 epochs at most.
TINY = [
    "data.shapes.train_size=512", "data.shapes.val_size=64", "data.shapes.eval_size=64",
    "data.shapes.samples_per_shard=64", "trainer.micro_batch_size=64", "data.num_workers=1",
    "eval.zeroshot=[]", "eval.linear_probe=[]", "eval.retrieval=[]",
    "logging.backend=csv", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "checkpoint.every_n_steps=3", "checkpoint.keep_last=-1",
    "optim.warmup_steps=5",
]

KILLER_RECIPE = textwrap.dedent(
    '''
    """The quickstart plus a callback that signals itself at a given step (set by the test)."""
    import os, signal
    import lightning as L
    from clipl.run import load_recipe

    quickstart = load_recipe("quickstart")

    class SignalAt(L.Callback):
        # At the start of a batch, so the checkpoints of the step before it are already written.
        def on_train_batch_start(self, trainer, *args):
            step = int(os.environ.get("CLIPL_TEST_SIGNAL_AT", "-1"))
            if trainer.global_step == step:
                sig = getattr(signal, os.environ["CLIPL_TEST_SIGNAL"])
                if sig == signal.SIGKILL:
                    os.killpg(os.getpgid(0), sig)  # every rank, as a node failure would
                os.kill(os.getpid(), sig)

    def config():
        return quickstart.config()

    def callbacks(cfg):
        return [SignalAt()]
    '''
)


def cli(args, env=None, check=True, timeout=600):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(CLI + args, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def losses(out_dir: Path) -> dict[int, float]:
    """step -> train/loss, the last row per step (a resumed run re-logs the steps after its checkpoint)."""
    result = {}
    with (out_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                result[int(row["step"])] = float(row["train/loss"])
    return result


@pytest.mark.parametrize(
    "args, needle",
    [
        (["config", "quickstart", "trainer.max_stepz=3"], "trainer.max_steps"),
        (["config", "quickstart", "trainer.max_steps=three"], "trainer.max_steps"),
        (["run", "rn50"], "data=shapes"),  # `clipl config` only warns: see test_config_of_a_paper_recipe_without_data_prints_the_plan
        (["run", "quickstart", "--devcies", "2"], "--devcies"),
        (["config", "quickstart", "data.batch_size=32"], "trainer.micro_batch_size"),
        (["config", "rn50x4", "data=shapes", "--devices", "256"], "trainer.micro_batch_size that divides 128"),
    ],
)
def test_bad_configuration_exits_2_without_traceback(args, needle):
    proc = cli(args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_config_recipes_and_cp(tmp_path):
    out = cli(["config", "rn50x4", "data=shapes"]).stdout
    assert "global_batch_size: 32768" in out and "arch: modified_resnet" in out


@pytest.mark.parametrize(
    "flags, plan",
    [
        (["--devices", "8"], "global 32,768 = 16 micro-batch(es) of 256 per device x 8 rank(s) "
                             "(contrastive accumulation); contrastive batch 32,768"),
        (["--devices", "8", "--num-nodes", "8"], "global 32,768 = 2 micro-batch(es) of 256 per device x 64 rank(s)"),
        (["--devices", "8", "trainer.contrastive_accumulation=false"],
         "(plain gradient accumulation); contrastive batch 2,048"),
    ],
)
def test_config_prints_the_batch_plan(flags, plan, capsys):
    from clipl.cli import main

    assert main(["config", "recipes/rn50x4.py", "data=shapes", *flags]) == 0  # in-process: no start-up cost
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("# batch plan: global ") and plan in out.splitlines()[-1]
    assert "micro_batch_size: 256" in out and "global_batch_size: 32768" in out


def test_config_of_a_paper_recipe_without_data_prints_the_plan(capsys):
    # The command as written: the paper recipes leave data.train for the launch, so `clipl
    # config` shows `???` there, the plan, and a warning naming the field (a run would refuse it).
    from clipl.cli import main

    assert main(["config", "recipes/rn50x4.py", "--devices", "8"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "  train: ???" in lines
    assert lines[-1].startswith("# batch plan: global 32,768") and "contrastive batch 32,768" in lines[-1]
    assert captured.err.startswith("warning: data.train: missing; ")
    assert main(["run", "recipes/rn50x4.py", "--devices", "8"]) == 2  # the run itself still refuses
    assert "error: data.train: missing" in capsys.readouterr().err


def test_impossible_plan_stops_the_run_before_anything_is_built(tmp_path):
    # 100 is no multiple of micro 64 x 1 rank: exit 2 naming both fields and the nearest valid values,
    # before the data set is generated, a model is built or the run directory is made.
    proc = cli(["run", "quickstart", *TINY, "trainer.global_batch_size=100", f"out_dir={tmp_path / 'run'}",
                f"data.shapes.cache_dir={tmp_path / 'shapes'}"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer.global_batch_size=100" in proc.stderr and "trainer.micro_batch_size=64" in proc.stderr
    assert "trainer.global_batch_size=64 or 128" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "shapes").exists()
    listing = cli(["recipes"]).stdout
    for name in ("quickstart", "rn50", "rn50x4", "vit_b32", "vit_l14"):
        assert name in listing
    dst = tmp_path / "mine.py"
    cli(["cp", "rn50x4", str(dst)])
    assert dst.read_text() == (REPO / "recipes" / "rn50x4.py").read_text()
    again = cli(["cp", "rn50x4", str(dst)], check=False)
    assert again.returncode == 2 and "never overwrites" in again.stderr


def test_datamodule_yields_the_plans_per_device_batch(tmp_path):
    from clipl.run import build_datamodule, resolve, resolve_batch_plan

    # 512 training samples, global 128 = 4 micro-batches of 32: one loader batch per optimiser step
    # holds all 128 (the module splits it); validation batches are one micro-batch.
    module, cfg = resolve("quickstart", [*TINY, "trainer.global_batch_size=128", "trainer.micro_batch_size=32",
                                         "data.num_workers=0", "data.val=shapes", f"data.shapes.cache_dir={tmp_path}"])
    plan = resolve_batch_plan(cfg.trainer)
    assert (plan.accumulation, plan.per_device_batch_size) == (4, 128)
    data = build_datamodule(module, cfg, plan)
    data.prepare_data()
    assert [len(b["key"]) for b in data.train_dataloader()] == [128] * 4
    assert [len(b["key"]) for b in data.val_dataloader()] == [32, 32]
    # A recipe's own datamodule(cfg, plan) gets the same plan.
    module, cfg = resolve("custom", ["trainer.global_batch_size=24", "trainer.micro_batch_size=8", "data.num_workers=0"])
    plan = resolve_batch_plan(cfg.trainer)
    assert next(iter(build_datamodule(module, cfg, plan).train_dataloader()))["image"].shape[0] == 24


@pytest.mark.slow
def test_rn50x4_recipe_runs_two_steps_on_cpu(tmp_path):
    # The global batch of 4 as 2 micro-batches of 2: the loss still contrasts all 4 pairs.
    proc = cli(["run", "rn50x4", "--accelerator", "cpu", "--strategy", "auto", "--precision", "32-true",
         "data=shapes", "trainer.global_batch_size=4", "trainer.micro_batch_size=2", "trainer.max_steps=2",
         "trainer.max_epochs=null", f"out_dir={tmp_path}", "data.num_workers=0", *TINY[:4],
         "logging.backend=csv", "trainer.log_every_n_steps=1", "eval.zeroshot=[]", "eval.linear_probe=[]"])
    assert "batch plan: global 4 = 2 micro-batch(es) of 2 per device x 1 rank(s)" in proc.stdout
    got = losses(tmp_path)
    assert sorted(got) == [0, 1] and all(v > 0 for v in got.values())
    with (tmp_path / "metrics.csv").open() as f:
        logged = {float(r["train/contrastive_batch"]) for r in csv.DictReader(f) if r.get("train/contrastive_batch")}
    assert logged == {4.0}


def _recipe(tmp_path) -> Path:
    path = tmp_path / "killer.py"
    path.write_text(KILLER_RECIPE)
    return path


def _resume_case(tmp_path, sig, at_step, extra=(), corrupt_newest=False):
    recipe = _recipe(tmp_path)
    common = [*TINY, "trainer.max_steps=14", *extra]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    cli(["run", str(recipe), f"out_dir={ref_dir}", *common])
    first = cli(["run", str(recipe), f"out_dir={run_dir}", *common],
                env={"CLIPL_TEST_SIGNAL_AT": str(at_step), "CLIPL_TEST_SIGNAL": sig}, check=False)
    assert first.returncode != 0, "the signalled run must not exit 0"
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts, first.stderr[-3000:]
    if corrupt_newest:
        newest = max(ckpts, key=lambda p: p.stat().st_mtime)
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    cli(["run", str(recipe), f"out_dir={run_dir}", *common])  # the same command again
    ref, got = losses(ref_dir), losses(run_dir)
    assert sorted(got) == sorted(ref) == list(range(14))
    assert got == ref  # bit-exact on CPU: every step's loss, before and after the interruption
    return first


@pytest.mark.slow
def test_kill9_mid_epoch_resumes_bit_exact(tmp_path):
    _resume_case(tmp_path, "SIGKILL", at_step=7)


@pytest.mark.slow
def test_kill9_at_epoch_boundary_resumes_bit_exact(tmp_path):
    # 8 steps per epoch; checkpoints at 4 and 8 (and the epoch-end one), killed right after step 8
    _resume_case(tmp_path, "SIGKILL", at_step=8, extra=["checkpoint.every_n_steps=4"])


@pytest.mark.slow
def test_sigterm_saves_exits_nonzero_and_resumes_bit_exact(tmp_path):
    first = _resume_case(tmp_path, "SIGTERM", at_step=5)
    assert first.returncode == 143
    assert "clipl run summary" in first.stdout and "stopped by SIGTERM" in first.stdout
    assert list((tmp_path / "run" / "checkpoints").glob("preempt-step=*.ckpt"))


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    _resume_case(tmp_path, "SIGKILL", at_step=7, corrupt_newest=True)


@pytest.mark.slow
def test_ddp_two_processes_kill9_resumes_bit_exact(tmp_path):
    _resume_case(tmp_path, "SIGKILL", at_step=5,
                 extra=["trainer.devices=2", "trainer.strategy=ddp", "trainer.micro_batch_size=32"])


def test_wandb_key_never_reaches_the_run_directory(tmp_path):
    sentinel = "sentinel0123456789abcdef0123456789abcdef01"
    args = [*TINY, "logging.backend=wandb", "logging.offline=true", "trainer.max_steps=2",
            "data.num_workers=0", f"out_dir={tmp_path}"]
    proc = cli(["run", "quickstart", *args], env={"WANDB_API_KEY": sentinel, "WANDB_MODE": "offline"})
    assert "batch plan: global 64 = 1 micro-batch(es) of 64 per device x 1 rank(s)" in proc.stdout  # start-up
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files)  # W&B did write its offline run
    # The plan is among the run's logged hyperparameters (W&B's offline run file holds them).
    assert any(b"contrastive_batch_size" in p.read_bytes() for p in files if p.suffix == ".wandb")
    for p in files:
        assert sentinel.encode() not in p.read_bytes(), p
    assert (tmp_path / "wandb_run_id.txt").is_file() and (tmp_path / "config.yaml").is_file()


def test_resume_refuses_a_different_model_config(tmp_path):
    args = [*TINY, "trainer.max_steps=3", "data.num_workers=0", f"out_dir={tmp_path}"]
    cli(["run", "quickstart", *args])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))  # nothing is left behind
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # atomic writes leave no temp file
    again = cli(["run", "quickstart", *args, "model.embed_dim=64"], check=False)
    assert again.returncode == 2
    assert "different model config" in again.stderr and "allow_config_change" in again.stderr
    # Other sections may change: continuing for more steps resumes and keeps the old config aside.
    cli(["run", "quickstart", *args[:-2], "trainer.max_steps=4", "data.num_workers=0", f"out_dir={tmp_path}"])
    assert len(list(tmp_path.glob("config.*.yaml"))) == 1


@pytest.mark.slow
def test_ctrl_c_prints_the_summary_with_complete_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(["run", str(_recipe(tmp_path)), f"out_dir={run_dir}", *TINY, "trainer.max_steps=14"],
               env={"CLIPL_TEST_SIGNAL_AT": "4", "CLIPL_TEST_SIGNAL": "SIGINT"}, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]  # Lightning's graceful Ctrl-C shutdown exits 1
    assert "clipl run summary" in proc.stdout and "interrupted (Ctrl-C)" in proc.stdout, proc.stdout[-3000:]
    # The step-3 checkpoint written in the background is complete, and last.ckpt names it.
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.resolve().name == "step=000000003.ckpt"
    assert find_resume_checkpoint(run_dir) == run_dir / "checkpoints" / "step=000000003.ckpt"
