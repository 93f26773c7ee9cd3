"""The batch plan: arithmetic, the contrastive batch, and errors that name the fields."""

import pytest

from clipl.distributed.plan import resolve_plan


@pytest.mark.parametrize(
    "global_bs, micro, world, accumulation",
    [(None, 16, 1, 1), (None, 256, 8, 1), (64, 16, 1, 4), (32768, 256, 8, 16), (32768, 128, 256, 1)],
)
def test_plan_arithmetic(global_bs, micro, world, accumulation):
    plan = resolve_plan(global_bs, micro, world)
    assert plan.accumulation == accumulation
    assert plan.micro_batch_size * plan.accumulation * plan.world_size == plan.global_batch_size
    assert plan.per_device_batch_size == micro * accumulation
    assert plan.contrastive_batch_size == plan.global_batch_size


def test_plain_accumulation_contrasts_one_micro_batch_per_rank():
    plan = resolve_plan(32768, 256, 8, contrastive_accumulation=False)
    assert plan.accumulation == 16
    assert plan.contrastive_batch_size == 2048
    assert "plain gradient accumulation" in plan.describe()
    assert "contrastive batch 2,048" in plan.describe()


def test_impossible_plan_names_fields_and_nearest_values():
    with pytest.raises(ValueError) as e:
        resolve_plan(1000, 64, 2)
    msg = str(e.value)
    assert "trainer.global_batch_size=1000" in msg and "trainer.micro_batch_size=64" in msg
    assert "896 or 1024" in msg  # the multiples of 64 x 2 around 1000
    assert "divides 500" in msg


@pytest.mark.parametrize("args", [(16, 0, 1), (16, 4, 0), (0, 4, 1)])
def test_nonpositive_sizes_refused(args):
    with pytest.raises(ValueError, match=">= 1"):
        resolve_plan(*args)
