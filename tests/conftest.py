"""Shared test set-up: one torch thread per test process (pytest-xdist runs one process a core)."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_default_dtype():
    """Every test starts from float32 and leaves the default dtype as it found it."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global torch RNG state.

    Without it, whatever draws from the global generator (a model's initial weights, say) would
    depend on which tests the same worker process ran before, and so on the scheduling.
    """
    torch.manual_seed(0)
    yield


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


os.environ.setdefault("TQDM_DISABLE", "1")
