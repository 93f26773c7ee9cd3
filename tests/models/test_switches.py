"""CLIPModel's run switches (trainer.channels_last, trainer.compile): in place, state-dict keys unchanged."""

import pytest
import torch

from clipl.models import build_model, preset


@pytest.mark.parametrize("name", ["tiny_rn", "tiny_vit"])  # both tiny presets hoist the text tower (OpenAI layout)
def test_switches_keep_keys_and_values(name):
    model = build_model(preset(name))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.apply_switches(channels_last=True, compile=True) is model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    convs = [p for p in model.visual.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert model.visual._compiled_call_impl is not None and model.text_tower._compiled_call_impl is not None


def test_no_switch_changes_nothing():
    model = build_model(preset("tiny_rn"))
    assert model.apply_switches() is model
    assert model.visual._compiled_call_impl is None and model.text_tower._compiled_call_impl is None
    assert all(p.is_contiguous() for p in model.visual.parameters())
    model.to_channels_last()  # each switch alone
    assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.text_tower._compiled_call_impl is None
