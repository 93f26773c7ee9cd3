"""Fixtures for the data tests (helpers live in datafixtures.py)."""

import pytest

from datafixtures import stand_in_tokenizer


@pytest.fixture
def tok():
    return stand_in_tokenizer
