"""The progress bar shows short metric names and no "Epoch 0/-2"."""

from types import SimpleNamespace

import pytest
import torch

from clipl.training.progress import RichBar, readable


def test_metric_names_are_short_and_readable():
    shown = readable({"train/loss": torch.tensor(1.5), "perf/samples_per_sec": 123.456, "v_num": "ab12",
                      "train/lr/decay": 0.1})
    assert shown == {"loss": 1.5, "samples/s": 123.5, "decay": 0.1}


@pytest.mark.parametrize("max_epochs, text", [(-1, "Epoch 3"), (None, "Epoch 3"), (5, "Epoch 3/4")])
def test_epoch_description_without_a_negative_total(max_epochs, text):
    pytest.importorskip("rich")
    bar = RichBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)
    assert bar._get_train_description(3).strip() == text
