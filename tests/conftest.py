from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# Two cores on our machines: keep torch from oversubscribing when pytest runs.
torch.set_num_threads(2)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
