"""Shared test set-up: one torch thread per test process (pytest-xdist runs one process a core)."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: The longest test files (each 1.5 to 5 minutes on one core), collected first. `make test` runs
#: each file on one worker in collection order (`--dist loadfile --no-loadscope-reorder`); ordered
#: by their number of tests, as xdist would, these few long files came last, and one worker ran
#: them while the other idled.
LONGEST_FIRST = (
    "test_docs_examples.py",
    "test_workflow.py",
    "test_cli_workflow.py",
    "test_dependencies.py",
    "inference/test_accuracy.py",
    "models/test_adversarial.py",
)
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Move the items of :data:`LONGEST_FIRST` to the front, in its order (a stable sort)."""
    missing = [name for name in LONGEST_FIRST if not (TESTS / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: LONGEST_FIRST names no such file: {missing}")
    rank = {TESTS / name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))


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
