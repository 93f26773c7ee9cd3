"""Own data in minutes: `clipl data pack` (folder pairs and tables) and the docs/data.md walkthrough,
run command for command in a fresh folder, reaching zero-shot accuracy far above chance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clipl.data.config import DataConfig
from clipl.data.datamodule import CLIPDataModule
from clipl.data.example import write_example
from clipl.data.pack import pack
from datafixtures import jpeg, stand_in_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _members(shard: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, set()).add(ext)
    return out


def test_pack_folder_pairs_skips_bad_ones_with_reasons(tmp_path):
    src = tmp_path / "photos" / "nested"
    src.mkdir(parents=True)
    for i in range(7):
        (src / f"p{i}.jpg").write_bytes(jpeg())
        (src / f"p{i}.txt").write_text(f"a photo number {i}")
    (src / "nocap.jpg").write_bytes(jpeg())                     # missing_caption
    (src / "blank.jpg").write_bytes(jpeg())
    (src / "blank.txt").write_text("   ")                       # empty_caption
    (src / "html.jpg").write_bytes(b"<html>not an image</html>")
    (src / "html.txt").write_text("a web page")                 # not_an_image
    (src / "cut.jpg").write_bytes(jpeg()[:200])
    (src / "cut.txt").write_text("a truncated file")            # corrupt_image
    st = pack(tmp_path / "photos", tmp_path / "shards", samples_per_shard=3)
    assert st.samples == 7 and st.shards == ["00000.tar", "00001.tar", "00002.tar"]
    assert st.failed == {"missing_caption": 1, "empty_caption": 1, "not_an_image": 1, "corrupt_image": 1}
    keys = {}
    for name in st.shards:
        keys.update(_members(tmp_path / "shards" / name))
    assert len(keys) == 7 and all(exts == {"jpg", "txt", "json"} for exts in keys.values())
    stats = [json.loads((tmp_path / "shards" / f"{i:05d}_stats.json").read_text()) for i in range(3)]
    assert [s["successes"] for s in stats] == [3, 3, 1] and sum(s["count"] for s in stats) == 11
    # the loader reads the shards' size from the stats files and the folder as "all its shards"
    dm = CLIPDataModule(DataConfig(train=str(tmp_path / "shards"), num_workers=0),
                        image_size=16, context_length=8, tokenizer=stand_in_tokenizer, batch_size=2)
    dm.setup()
    assert dm._train.epoch_size == 7 and len(dm._train.shards) == 3
    captions = {json.loads(tarfile.open(tmp_path / "shards" / "00000.tar").extractfile(f"{k}.json").read())["caption"]
                for k in _members(tmp_path / "shards" / "00000.tar")}
    assert all(c.startswith("a photo number") for c in captions)
    with pytest.raises(FileExistsError, match="never overwrites"):
        pack(tmp_path / "photos", tmp_path / "shards")


def test_pack_table_equals_folder(tmp_path):
    paths = write_example(tmp_path / "ex", n_pairs=40, n_per_class=1)
    a = pack(paths["images"], tmp_path / "a", samples_per_shard=16)
    b = pack(paths["table"], tmp_path / "b", samples_per_shard=16)
    assert a.samples == b.samples == 40 and len(a.shards) == len(b.shards) == 3
    for name in a.shards:  # same order (same seed), same bytes per member
        ta, tb = tarfile.open(tmp_path / "a" / name), tarfile.open(tmp_path / "b" / name)
        for ma, mb in zip(ta.getmembers(), tb.getmembers()):
            assert ma.name == mb.name
            if not ma.name.endswith(".json"):  # the json names the source path, which differs
                assert ta.extractfile(ma).read() == tb.extractfile(mb).read()


def _walkthrough() -> list[str]:
    """The bash block of docs/data.md's "Your own data" section, one command per entry."""
    text = (REPO / "docs" / "data.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


@pytest.mark.slow
def test_docs_own_data_walkthrough_learns_the_classes(tmp_path):
    commands = _walkthrough()
    assert [c.split()[:3] for c in commands[:3]] == [["clipl", "data", "example"], ["clipl", "data", "pack"],
                                                      ["lightning", "run", "own_data"]]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1")
    for command in commands:
        if command.startswith("lightning run"):  # the one change: a few dozen steps instead of 30 epochs
            command += " trainer.max_steps=48 trainer.enable_progress_bar=false trainer.enable_model_summary=false"
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    zs = json.loads(proc.stdout)  # the last command prints the zero-shot result
    lp = json.loads(next((tmp_path / "runs/own_data/eval").glob("linear_probe_labelled_step*.json")).read_text())
    assert zs["step"] == 48 and zs["dataset"] == "labelled"
    print(f"own data: zero-shot top-1 {zs['metrics']['acc1']:.3f}, linear probe {lp['metrics']['lp_acc1']:.3f}")
    assert zs["metrics"]["acc1"] > 0.3  # 10 colour classes: chance is 0.1 (measured 0.84)
    assert lp["metrics"]["lp_acc1"] > 0.3
