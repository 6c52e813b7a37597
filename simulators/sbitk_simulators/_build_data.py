"""Rebuild the package data from an installed ``sbibm`` (a maintainer tool, not used at runtime).

Run ``python -m sbitk_simulators._build_data`` with sbibm installed (``--no-deps`` is enough:
only its data files are read, nothing of it is imported). It writes

- ``data/observations.npz``: for every task, ``<task>/observation`` (10, D_x) and
  ``<task>/true_parameters`` (10, D_θ), float32, rows in observation order 1…10;
- ``data/reference_posteriors.npz``: ``<task>`` (10, 10000, D_θ) float32 reference posterior
  samples for the tasks in :data:`REFERENCE_TASKS`, compressed.
"""

from __future__ import annotations

import bz2
import importlib.util
from pathlib import Path

import numpy as np

TASKS = (
    "gaussian_linear",
    "gaussian_linear_uniform",
    "two_moons",
    "slcp",
    "gaussian_mixture",
    "bernoulli_glm",
    "sir",
    "lotka_volterra",
)
REFERENCE_TASKS = ("two_moons", "slcp")
NUM_OBSERVATIONS = 10
DATA = Path(__file__).parent / "data"


def _read_csv(path: Path) -> np.ndarray:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)


def _sbibm_tasks() -> Path:
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sbibm is not installed: pip install --no-deps sbibm")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def build(out: Path = DATA) -> None:
    """Write the two ``.npz`` files under ``out``."""
    root = _sbibm_tasks()
    out.mkdir(parents=True, exist_ok=True)
    obs: dict[str, np.ndarray] = {}
    refs: dict[str, np.ndarray] = {}
    for task in TASKS:
        dirs = [root / task / "files" / f"num_observation_{k}" for k in range(1, 11)]
        obs[f"{task}/observation"] = np.concatenate(
            [_read_csv(d / "observation.csv") for d in dirs]
        ).astype(np.float32)
        obs[f"{task}/true_parameters"] = np.concatenate(
            [_read_csv(d / "true_parameters.csv") for d in dirs]
        ).astype(np.float32)
        if task in REFERENCE_TASKS:
            refs[task] = np.stack(
                [_read_csv(d / "reference_posterior_samples.csv.bz2") for d in dirs]
            ).astype(np.float32)
    np.savez_compressed(out / "observations.npz", **obs)
    np.savez_compressed(out / "reference_posteriors.npz", **refs)


if __name__ == "__main__":
    build()
