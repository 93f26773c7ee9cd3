"""Fail fast: ten newcomer mistakes each exit 2 before anything is built (no model, no Trainer, no
checkpoint read, no run directory), one line per problem, no traceback. A few go through the real
`lightning` script. (How fast that is, is a property of what is skipped, asserted here, not a timing.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipl import cli
from clipl.config import validate as validate_mod
from clipl.training.config import TrainerConfig

REPO = Path(__file__).resolve().parents[2]


def _mistakes(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments after `run`, the field(s) each error line must name)."""
    (tmp / "empty_shards").mkdir()
    (tmp / "a_file").write_text("not a folder")
    return {
        "misspelt key": (["quickstart", "trainer.max_stepz=3"], ["trainer.max_steps"]),
        "wrong type": (["quickstart", "trainer.max_steps=three"], ["trainer.max_steps"]),
        "missing data path": (["quickstart", f"data.train={tmp}/cc3m/00000.tar"], ["data.train"]),
        "empty brace pattern": (["quickstart", f"data.train={tmp}/empty_shards/{{00000..00331}}.tar"],
                                ["data.train"]),
        "unknown preset": (["quickstart", "model=vit_b33"], ["model=vit_b33"]),
        "missing recipe": (["recipes/quickstrat.py"], ["quickstrat"]),
        "missing eval folder": (["quickstart", f"eval.zeroshot=[{tmp}/my_classes]"], ["eval.zeroshot[0]"]),
        "gpu accelerator without a GPU": (["quickstart", "--accelerator", "gpu"], ["trainer.accelerator"]),
        "bf16 on a CPU without support": (["quickstart", "--precision", "bf16"], ["trainer.precision=bf16-mixed"]),
        "unwritable out_dir": (["quickstart", f"out_dir={tmp}/a_file/run"], ["out_dir"]),
    }


def test_every_mistake_is_listed(tmp_path):
    assert sorted(_mistakes(tmp_path)) == sorted(MISTAKES)


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a model or a Trainer, or reading a checkpoint, fails the test: validation must come first."""
    import lightning
    import torch

    from clipl.models.clip import CLIPModel

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before the config was validated")
        return fail

    monkeypatch.setattr(CLIPModel, "from_config", classmethod(refuse("a model was built")))
    monkeypatch.setattr(lightning.Trainer, "__init__", refuse("a Trainer was built"))
    monkeypatch.setattr(torch, "load", refuse("a checkpoint was read"))


def _check(rc: int, err: str, fields: list[str], run_dir: Path) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == len(fields), err  # one line per problem, nothing else
    for line, field in zip(lines, fields):
        assert line.startswith("error: ") and field in line, err
    assert not run_dir.exists()  # nothing was built or written


MISTAKES = ["misspelt key", "wrong type", "missing data path", "empty brace pattern", "unknown preset",
            "missing recipe", "missing eval folder", "gpu accelerator without a GPU", "bf16 on a CPU without support",
            "unwritable out_dir"]


@pytest.mark.parametrize("name", MISTAKES)
def test_newcomer_mistake_exits_2_before_anything_is_built(name, tmp_path, capsys, monkeypatch, nothing_built):
    if name.startswith("gpu") and validate_mod.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(REPO)
    if name.startswith("bf16"):
        monkeypatch.setattr(validate_mod, "bf16_supported", lambda device: False)
    args, fields = _mistakes(tmp_path)[name]
    run_dir = tmp_path / "run"
    if not any(a.startswith("out_dir=") for a in args):
        args = args + [f"out_dir={run_dir}"]
    rc = cli.main(["run", *args])
    _check(rc, capsys.readouterr().err, fields, run_dir)


def _lightning_script() -> str:
    local = Path(sys.executable).with_name("lightning")
    return str(local) if local.exists() else shutil.which("lightning")


@pytest.mark.parametrize("name", ["missing data path", "gpu accelerator without a GPU", "unwritable out_dir"])
def test_mistakes_through_the_lightning_script(name, tmp_path):
    if name.startswith("gpu") and validate_mod.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    args, fields = _mistakes(tmp_path)[name]
    run_dir = tmp_path / "run"
    if not any(a.startswith("out_dir=") for a in args):
        args = args + [f"out_dir={run_dir}"]
    proc = subprocess.run([_lightning_script(), "run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    _check(proc.returncode, proc.stderr, fields, run_dir)


def test_all_problems_are_reported_together(tmp_path, capsys, monkeypatch, nothing_built):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(validate_mod, "cuda_device_count", lambda: 0)
    (tmp_path / "a_file").write_text("x")
    rc = cli.main(["run", "quickstart", f"data.train={tmp_path}/x/{{0..3}}.tar", "data.val=/nope/val.csv",
                   f"eval.linear_probe=[shapes,{tmp_path}/probe]", "eval.zeroshot=[shapes:size]",
                   "--accelerator", "cuda", "checkpoint.resume=/nope/step=1.ckpt", "model.init_from=/nope/w.pt",
                   f"out_dir={tmp_path}/a_file/r"])
    err = capsys.readouterr().err
    fields = ["data.train", "data.val", "eval.zeroshot[0]", "eval.linear_probe[1]", "trainer.accelerator",
              "checkpoint.resume", "model.init_from", "out_dir"]
    _check(rc, err, fields, tmp_path / "a_file" / "r")
    # and bad overrides are all reported, not only the first
    rc = cli.main(["config", "quickstart", "trainer.max_stepz=1", "optim.lr=fast", "model=nope", "oops"])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 4 and all(line.startswith("error: ") for line in lines)


def test_config_command_prints_and_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc = cli.main(["config", "quickstart", f"data.train={tmp_path}/none.tar"])
    out = capsys.readouterr()
    assert rc == 0 and "max_steps: 800" in out.out
    assert out.err.strip().startswith("warning: data.train:")


def test_good_sources_pass(tmp_path):
    from clipl.config.validate import check_data_source, check_eval_spec

    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "pairs.csv").write_text("filepath,title\n")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    assert check_data_source(f"{tmp_path}/{{00000..00002}}.tar::{tmp_path}/pairs.csv::shapes", "data.train") == []
    assert check_data_source(f"{tmp_path}/*.tar", "data.train") == []
    # remote sources are the loader's to open
    assert check_data_source("s3://bucket/{0..9}.tar::pipe:curl -s http://x/{0..3}.tar", "data.train") == []
    assert check_eval_spec(str(tmp_path / "classes"), "eval.zeroshot[0]") == []
    assert check_eval_spec(f"mine={tmp_path}/{{00000..00002}}.tar", "eval.zeroshot[0]") == []
    assert check_eval_spec("shapes:colour", "eval.zeroshot[0]") == []
    assert check_eval_spec(f"{tmp_path}/{{00000..00004}}.tar", "x")  # two of five shards missing
    assert check_data_source(str(tmp_path), "data.train") == []  # a folder of shards
    assert check_data_source(str(tmp_path / "classes"), "data.train")  # a folder without shards


def test_init_from_accepts_open_clips_local_dir_syntax(tmp_path):
    from clipl.config.validate import check_checkpoint

    assert check_checkpoint(f"local-dir:{tmp_path}", "model.init_from") == []
    assert check_checkpoint(f"local-dir:{tmp_path}/nope", "model.init_from") == [
        f"model.init_from={tmp_path}/nope: no such file or folder"]


@pytest.mark.parametrize("alias, canonical", [
    ("32", "32-true"), ("32-true", "32-true"), ("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"),
    ("bf16-true", "bf16-true"), ("16", "16-mixed"), ("16-mixed", "16-mixed"),
])
def test_lightning_precision_aliases_are_normalised(alias, canonical):
    from clipl.config import parse
    from clipl.run import load_recipe

    cfg = parse(load_recipe("quickstart").config(), [f"trainer.precision={alias}", "trainer.accelerator=auto"])
    assert cfg.trainer.precision == canonical
    assert TrainerConfig(precision=alias).precision == canonical


def test_unsupported_lightning_precision_names_the_field():
    with pytest.raises(ValueError, match=r"trainer\.precision.*'64-true'"):
        TrainerConfig(precision="64")


def test_clipl_eval_fails_fast_listing_every_problem(tmp_path, capsys, monkeypatch, nothing_built):
    monkeypatch.setattr(validate_mod, "cuda_device_count", lambda: 0)
    (tmp_path / "a_file").write_text("x")
    rc = cli.main(["eval", str(tmp_path / "nope.ckpt"), "--zeroshot", str(tmp_path / "classes"),
                   "--linear-probe", "shapes:size", "--out", str(tmp_path / "a_file" / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["checkpoint=" + str(tmp_path / "nope.ckpt"),
                                                                 "--zeroshot", "--linear-probe", "--out", "--device"]
