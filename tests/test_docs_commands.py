"""Every shell command in README.md and docs/*.md runs as written (a doc cannot drift from the code).

Commands are taken from fenced ``bash``/``sh`` blocks (and untagged blocks whose lines start with a
clipl command), continuation lines joined and comments dropped. Each runs in a fresh folder (with
``recipes/`` and ``benchmarks/`` linked in) in the order the docs give, so a walkthrough's later
commands see what its earlier ones wrote. ``DOC_COMMANDS`` below is the documented mapping for the
ones that cannot run here as written:

- a training command that would run for hours gets ``TINY_RUN`` appended (2 steps of the built-in
  shapes set on one CPU process; `key=value` after the flags wins over the flags), plus a tiny model
  where the recipe's model would not fit a CPU test (the recipe's other settings still load and run);
- a command that needs a GPU, a cluster, a network or a DeepSpeed checkpoint is skipped with the reason
  (and the test that covers it elsewhere, where there is one);
- paths to data that does not exist here (``/data/...``) are replaced by a small set made first.

A command found in the docs and not in the mapping runs as written (``lightning run``/``clipl run``
ones with ``TINY_RUN`` appended), so a new doc command is covered without editing this file; one that
names a GPU or a cluster (``NEEDS_HARDWARE``) is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

TINY_RUN = ("trainer.max_steps=2 trainer.accelerator=cpu trainer.devices=1 trainer.num_nodes=1 "
            "trainer.strategy=auto trainer.micro_batch_size=8 trainer.global_batch_size=null data=shapes "
            "data.shapes.train_size=256 data.shapes.val_size=32 data.shapes.eval_size=32 "
            "data.shapes.samples_per_shard=64 data.num_workers=0 eval.zeroshot=[] eval.linear_probe=[] "
            "eval.retrieval=[] logging.backend=csv trainer.enable_progress_bar=false "
            "trainer.enable_model_summary=false checkpoint.every_n_steps=1")
GPU = "needs a CUDA GPU"
SMALL_SHAPES = "--train-size 256 --val-size 32 --eval-size 32 --samples-per-shard 64"

# documented command (as extracted) -> ("skip", reason) or ("run", the command run instead)
DOC_COMMANDS: dict[str, tuple[str, str]] = {
    "pip install -c .ci/constraints.txt -e . && lightning run recipes/quickstart.py":
        ("run", f"lightning run recipes/quickstart.py {TINY_RUN} out_dir=runs/quickstart"),  # no reinstall here
    'pip install -c .ci/constraints.txt -e ".[dev]" && python -m pytest -q':
        ("skip", "the test suite itself (and a reinstall)"),
    "lightning run own_data data.train=my_data/shards eval.zeroshot=[my_data/labelled] "
    "eval.linear_probe=[my_data/labelled] trainer.max_steps=48":
        ("run", "lightning run own_data data.train=my_data/shards eval.zeroshot=[my_data/labelled] "
                "eval.linear_probe=[my_data/labelled] trainer.max_steps=2 trainer.enable_progress_bar=false"),
    "lightning run own_data data.train=my_data/shards eval.zeroshot=[my_data/labelled] "
    "eval.linear_probe=[my_data/labelled] out_dir=runs/own_data":
        ("skip", "the docs/data.md walkthrough: run in full by tests/data/test_own_data.py (48 steps, accuracy)"),
    "cat runs/own_data/eval/zeroshot_classification_labelled_step*.json":
        ("skip", "the docs/data.md walkthrough: run in full by tests/data/test_own_data.py"),
    "lightning run recipes/rn50x4.py --devices 8 data.train='/data/laion/{00000..41407}.tar'":
        ("run", f"lightning run recipes/rn50x4.py --devices 8 data.train='/data/laion/{{00000..41407}}.tar' "
                f"{TINY_RUN} model=tiny_rn out_dir=runs/rn50x4"),
    "lightning run recipes/rn50x4.py --devices 8 --num-nodes 4 --node-rank 0 --main-address node0 "
    "--main-port 29500 data.train='/data/laion/{00000..41407}.tar'":
        ("run", "lightning run recipes/rn50x4.py --devices 8 --num-nodes 4 --node-rank 0 --main-address 127.0.0.1 "
                f"--main-port 29500 data.train='/data/laion/{{00000..41407}}.tar' {TINY_RUN} model=tiny_rn "
                "out_dir=runs/rn50x4_nodes"),
    "python benchmarks/train_step.py":
        ("run", "python benchmarks/train_step.py --presets tiny_vit --batch 2 --steps 1 --warmup 0 --rounds 1 "
                "--trainer-rounds 0"),  # the same script, one tiny round instead of ~10 min
    "clipl data inspect '/data/cc3m/{00000..00331}.tar'":
        ("run", "clipl data inspect 'shapes_data/train/shard-{000000..000003}.tar'"),
    "clipl data inspect /data/pairs.parquet --json":
        ("run", "clipl data inspect pairs/pairs.parquet --json"),
    "clipl data shapes --out /data/shapes --train-size 50000":
        ("run", f"clipl data shapes --out shapes_data {SMALL_SHAPES}"),
    "clipl run recipes/vit_b32.py trainer.precision=bf16-mixed":
        ("run", f"clipl run recipes/vit_b32.py trainer.precision=bf16-mixed {TINY_RUN} model=tiny_vit "
                "out_dir=runs/vit_b32"),
    "clipl run recipes/vit_b16.py trainer.devices=8 trainer.num_nodes=4 trainer.strategy=ddp "
    "trainer.precision=bf16-mixed trainer.micro_batch_size=256 trainer.global_batch_size=32768":
        ("run", "clipl run recipes/vit_b16.py trainer.devices=8 trainer.num_nodes=4 trainer.strategy=ddp "
                "trainer.precision=bf16-mixed trainer.micro_batch_size=256 trainer.global_batch_size=32768 "
                f"{TINY_RUN} model=tiny_vit out_dir=runs/vit_b16"),  # 32 GPUs -> the tiny run's 1 CPU process
    "clipl run recipes/vit_l14.py trainer.strategy=deepspeed trainer.zero_stage=3 "
    "trainer.offload_optimizer=true trainer.precision=bf16-mixed trainer.gradient_clip_val=1.0":
        ("skip", GPU + " (DeepSpeed); tests/gpu/test_deepspeed_gpu.py"),
    "srun lightning run recipes/rn50x4.py --devices 8 --num-nodes 4 "
    "data.train='/data/laion/{00000..41407}.tar'":
        ("skip", "a SLURM cluster; tests/training/test_slurm.py simulates two srun ranks"),
    "clipl convert runs/vit_l14/checkpoints/last.ckpt vit_l14_fp32.ckpt --openai vit_l14_openai.pt":
        ("skip", "a DeepSpeed ZeRO checkpoint (GPU training); tests/distributed/test_convert.py converts CPU ones"),
    "lightning run recipes/rn50x4.py [--devices N --num-nodes M --node-rank R --main-address H --main-port P "
    "--accelerator A --strategy S --precision P] [key=value ...]":
        ("skip", "a synopsis (placeholders in brackets)"),
}


def extract(path: Path) -> list[str]:
    """The shell commands of one Markdown file, in order."""
    commands = []
    for lang, body in re.findall(r"```([\w-]*)\n(.*?)```", path.read_text(), re.S):
        if lang not in ("bash", "sh", "shell", ""):
            continue
        lines = body.replace("\\\n", " ").splitlines()
        if lang == "" and not all(l.startswith(("clipl ", "lightning ")) for l in lines if l.strip()):
            continue  # an untagged block of output or text, not commands
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#\s.*$", "", line)  # a trailing comment
            if line.startswith(("--", "[")) and commands:  # a synopsis wrapped without a backslash
                commands[-1] += " " + line
            else:
                commands.append(line)
    return [" ".join(c.split()) for c in commands]


def all_commands() -> list[tuple[str, str]]:
    return [(str(p.relative_to(REPO)), c) for p in DOCS for c in extract(p)]


# Unmapped commands that name a GPU or a cluster cannot run here either.
NEEDS_HARDWARE = {"--device cuda": GPU, "--accelerator gpu": GPU, "--accelerator cuda": GPU, "gpu.sh": GPU,
                  "strategy=deepspeed": GPU + " (DeepSpeed)", "srun ": "a SLURM cluster", "sbatch ": "a SLURM cluster"}


def plan(command: str) -> tuple[str, str]:
    if command in DOC_COMMANDS:
        return DOC_COMMANDS[command]
    for needle, why in NEEDS_HARDWARE.items():
        if needle in command:
            return "skip", why
    if command.startswith(("lightning run ", "clipl run ")):
        return "run", f"{command} {TINY_RUN} out_dir=runs/doc_{abs(hash(command)) % 10**8}"
    return "run", command


def test_the_mapping_names_only_commands_the_docs_hold():
    """An entry whose command left the docs is stale: the doc changed, so must this mapping."""
    found = {c for _, c in all_commands()}
    assert sorted(set(DOC_COMMANDS) - found) == []
    assert len(found) >= 15  # the extraction works (README and docs hold this many commands today)


def _prepare(cwd: Path) -> None:
    for name in ("recipes", "benchmarks"):
        (cwd / name).symlink_to(REPO / name)
    # The table `clipl data inspect /data/pairs.parquet` reads: pairs of real images and captions.
    from clipl.data.example import write_example

    paths = write_example(cwd / "pairs", n_pairs=16, n_per_class=1)
    import pandas as pd

    pd.read_csv(paths["table"]).to_parquet(cwd / "pairs" / "pairs.parquet")


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", CLIPL_CACHE=str(tmp_path / "cache"))
    ran, skipped = [], []
    for path in DOCS:  # each document in a fresh folder, as a reader following it would start
        cwd = tmp_path / path.stem
        cwd.mkdir()
        _prepare(cwd)
        commands = extract(path)
        # `clipl data shapes` writes what the inspect commands before it in docs/data.md read: writers first.
        commands.sort(key=lambda c: not c.startswith(("clipl data shapes", "clipl data example", "clipl data pack")))
        for command in commands:
            action, what = plan(command)
            if action == "skip":
                skipped.append((path.name, command, what))
                continue
            proc = subprocess.run(what, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, (f"{path.name}: {command}\nran: {what}\n{proc.stdout[-2000:]}\n"
                                          f"{proc.stderr[-4000:]}")
            ran.append(command)
    print(f"\nran {len(ran)} documented commands, skipped {len(skipped)}:")
    for doc, command, why in skipped:
        print(f"  {doc}: {command[:70]}  -- {why}")
    # what the commands left behind is what the docs say they leave
    assert (tmp_path / "README/runs/quickstart/checkpoints/last.ckpt").exists()
    assert list((tmp_path / "README/my_data/shards").glob("*_stats.json"))
    assert len(ran) >= 9


def test_extraction_joins_continuations_and_drops_comments(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```bash\n# a comment\nclipl run a.py \\\n    x=1   # trailing\n```\n"
                   "```\nclipl data inspect y\n```\n```\n$ not a command\n```\n```python\nprint(1)\n```\n")
    assert extract(doc) == ["clipl run a.py x=1", "clipl data inspect y"]
    assert shlex.split(plan("clipl run a.py x=1")[1])[-1].startswith("out_dir=runs/doc_")
