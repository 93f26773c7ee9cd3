"""docs/config.md is the generator's current output, and every config field has a docstring."""

from pathlib import Path

from clipl.config.reference import COMMAND, reference, undocumented

REPO = Path(__file__).resolve().parents[2]


def test_docs_config_md_is_current():
    path = REPO / "docs" / "config.md"
    assert path.is_file(), f"docs/config.md is missing; generate it with `{COMMAND}`"
    assert path.read_text() == reference(), f"docs/config.md is stale; regenerate it with `{COMMAND}`"


def test_every_field_has_a_docstring_and_appears_with_its_default():
    assert undocumented() == [], "give these config fields a docstring (the string literal under the field)"
    text = reference()
    for line in ("| `checkpoint.keep_last` | `2` |", "| `data.table_rows_per_shard` | `1000` |",
                 "| `trainer.max_steps` | `-1` |", "| `model.{image,text}.arch` | `'vit'` |",
                 "## `objective` (name: siglip)", "## `data.shapes`", "## `trainer.deepspeed`"):
        assert line in text, line
