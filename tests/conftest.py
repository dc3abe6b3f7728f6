from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

GOLDEN = Path(__file__).parent / "golden" / "clip_tiny.pt"


@pytest.fixture(scope="session")
def golden() -> dict:
    """Outputs of the official CrossGET code on a tiny random CLIP (SPEC §9)."""
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
