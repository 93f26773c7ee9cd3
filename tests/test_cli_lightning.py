"""The `lightning` console script: clipl's commands, coexisting with other packages' `lightning` CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clipl import cli
from clipl.cli import lightning as cli_lightning

REPO = Path(__file__).resolve().parents[1]


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_lightning_help_exits_0_with_clipl_usage():
    proc = subprocess.run([_script("lightning"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lightning run RECIPE.py" in proc.stdout and "clipl config RECIPE.py" in proc.stdout


def test_lightning_run_and_clipl_run_are_the_same_command(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr("clipl.run.run", lambda recipe, overrides: calls.append((recipe, overrides)) or 0)
    argv = ["quickstart", "--devices", "1", "--precision", "bf16", "trainer.max_steps=2"]
    assert cli.lightning_main(["run", *argv]) == 0
    assert cli.lightning_main(["run", "model", *argv]) == 0  # the former `lightning run model` form
    assert cli.main(["run", *argv]) == 0
    assert calls[0] == calls[1] == calls[2] == (
        "quickstart", ["trainer.devices=1", "trainer.precision=bf16", "trainer.max_steps=2"])


class _FakeEntryPoint:
    """Another package's `lightning` console script (what lightning-sdk declares)."""

    value = "lightning_sdk.cli.entrypoint:main_cli"
    dist = None

    def __init__(self):
        self.argv = None

    def load(self):
        def main():
            self.argv = list(sys.argv)
            return 0

        return main


def test_other_lightning_cli_keeps_its_commands(monkeypatch, capsys):
    other = _FakeEntryPoint()
    monkeypatch.setattr(cli_lightning, "other_lightning_commands", lambda: [other])
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.lightning_main(["login"]) == 0 and other.argv == ["lightning", "login"]
    assert cli.lightning_main(["run", "app", "app.py"]) == 0 and other.argv == ["lightning", "run", "app", "app.py"]
    # a recipe still reaches clipl, and --help is clipl's (naming where the rest goes)
    calls = []
    monkeypatch.setattr("clipl.run.run", lambda recipe, overrides: calls.append(recipe) or 0)
    assert cli.lightning_main(["run", "quickstart"]) == 0 and cli.lightning_main(["run", "mine.py"]) == 0
    assert calls == ["quickstart", "mine.py"]
    assert cli.lightning_main(["--help"]) == 0
    assert "lightning_sdk.cli.entrypoint:main_cli" in capsys.readouterr().out


def test_clipl_says_what_to_do_when_lightning_is_not_its_script(tmp_path, monkeypatch):
    fake = tmp_path / "lightning"
    fake.write_text("#!/bin/sh\necho lightning-sdk\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([_script("clipl"), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0
    assert f"`lightning` on PATH ({fake})" in proc.stdout and "use `clipl run RECIPE`" in proc.stdout
    # with clipl's own script first on PATH there is nothing to say
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert cli_lightning.lightning_on_path() is None


def test_lightning_itself_installs_no_lightning_script():
    """The decision in docs/recipes.md rests on this: Lightning 2.5+ installs only `fabric`, so the
    `lightning` name is free unless lightning-sdk (its platform CLI) is installed too."""
    from importlib.metadata import distribution

    scripts = {ep.name for ep in distribution("lightning").entry_points if ep.group == "console_scripts"}
    assert "lightning" not in scripts
