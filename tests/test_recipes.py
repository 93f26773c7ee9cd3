"""Every shipped recipe states the batch plan it gets on 8, 64 and 256 GPUs, and the numbers are the plan's."""

import re

import pytest

from clipl.run import load_recipe, resolve, resolve_batch_plan, shipped_recipes

RECIPES = sorted(shipped_recipes())
# What a recipe leaves for the command line: data.train, and the checkpoint a fine-tuning recipe starts
# from (resolving does not open it).
REQUIRED = ["data=shapes"]
REQUIRED_BY_RECIPE = {"vit_l14_336": ["model.init_from=runs/vit_l14/checkpoints/last.ckpt"]}
PLAN_LINE = re.compile(
    r"^\s*(?P<gpus>\d+) GPUs:\s+contrastive batch (?P<contrastive>[\d,]+) = (?P<accumulation>\d+) "
    r"micro-batch(?:es)? of (?P<micro>\d+) per GPU x (?P<world>\d+)(?: \(with (?P<extra>[^)]*)\))?\s*$"
)


def _stated_plans(name: str) -> dict[int, re.Match]:
    doc = load_recipe(name).__doc__ or ""
    found = [m for m in map(PLAN_LINE.match, doc.splitlines()) if m]
    return {int(m["gpus"]): m for m in found}


def _required(name: str) -> list[str]:
    return REQUIRED + REQUIRED_BY_RECIPE.get(name, [])


@pytest.mark.parametrize("name", RECIPES)
def test_docstring_states_the_plan_on_8_64_and_256_gpus(name):
    stated = _stated_plans(name)
    assert sorted(stated) == [8, 64, 256], f"recipes/{name}.py: its docstring must state the plan on 8, 64, 256 GPUs"
    for gpus, line in stated.items():
        overrides = [*_required(name), "trainer.devices=8", f"trainer.num_nodes={gpus // 8}"]
        overrides += (line["extra"] or "").split()
        _, cfg = resolve(name, overrides)
        plan = resolve_batch_plan(cfg.trainer)
        assert int(line["world"]) == gpus == plan.world_size
        assert int(line["contrastive"].replace(",", "")) == plan.contrastive_batch_size, line.string
        assert int(line["accumulation"]) == plan.accumulation, line.string
        assert int(line["micro"]) == plan.micro_batch_size, line.string


def test_rn50x4_on_one_node_contrasts_the_papers_batch():
    line = _stated_plans("rn50x4")[8]
    assert (line["contrastive"], line["accumulation"], line["micro"]) == ("32,768", "16", "256")
