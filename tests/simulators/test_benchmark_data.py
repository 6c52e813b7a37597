"""The shipped benchmark data: loaders, errors, identity with sbibm's files, packaging."""

import bz2
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from sbitk_simulators import observations
from simulator_stats import sbibm_tasks_dir

from sbitk.errors import ObservationError

TASKS = [
    "bernoulli_glm",
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "lotka_volterra",
    "sir",
    "slcp",
    "two_moons",
]
PACKAGE = Path(observations.__file__).parent


def _csv(path: Path) -> np.ndarray:
    with (bz2.open if path.suffix == ".bz2" else open)(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", skiprows=1, ndmin=2)


def test_every_task_has_ten_observations():
    assert observations.tasks() == TASKS
    for task in TASKS:
        xs = torch.stack([observations.load_observation(task, k) for k in range(1, 11)])
        assert len({tuple(x.tolist()) for x in xs}) == 10  # ten different observations


@pytest.mark.parametrize("task", TASKS)
def test_observations_are_sbibms(task):
    root = sbibm_tasks_dir() / task / "files"
    for k in (1, 7, 10):
        folder = root / f"num_observation_{k}"
        expected_x = _csv(folder / "observation.csv")[0].astype(np.float32)
        expected_theta = _csv(folder / "true_parameters.csv")[0].astype(np.float32)
        np.testing.assert_array_equal(observations.load_observation(task, k).numpy(), expected_x)
        np.testing.assert_array_equal(
            observations.load_true_parameters(task, k).numpy(), expected_theta
        )


@pytest.mark.parametrize("task", ["two_moons", "slcp"])
def test_reference_posteriors_are_sbibms(task):
    folder = sbibm_tasks_dir() / task / "files" / "num_observation_4"
    expected = _csv(folder / "reference_posterior_samples.csv.bz2").astype(np.float32)
    got = observations.load_reference_posterior(task, 4)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


def test_exact_references_are_drawn_reproducibly():
    a = observations.load_reference_posterior("gaussian_linear", 2)
    b = observations.load_reference_posterior("gaussian_linear", 2)
    assert a.shape == (10_000, 10) and torch.equal(a, b)
    assert not torch.equal(a, observations.load_reference_posterior("gaussian_linear", 3))


def test_bad_requests_raise_clear_errors():
    with pytest.raises(ObservationError, match=r"'nope'.*available: bernoulli_glm"):
        observations.load_observation("nope", 1)
    for k in (0, 11, True, "1", 1.0):
        with pytest.raises(ObservationError, match=r"1\.\.10"):
            observations.load_observation("two_moons", k)
    with pytest.raises(ObservationError, match=r"no reference posterior for task 'sir'"):
        observations.load_reference_posterior("sir", 1)


def test_data_files_are_declared_package_data_and_small():
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["sbitk_simulators"]
    shipped = sorted(p.name for p in (PACKAGE / "data").iterdir() if p.is_file())
    assert shipped == ["observations.npz", "reference_posteriors.npz"]
    assert all(any((PACKAGE / "data" / f).match(pat) for pat in patterns) for f in shipped)
    assert sum((PACKAGE / "data" / f).stat().st_size for f in shipped) < 5_000_000
