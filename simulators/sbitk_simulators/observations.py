"""The benchmark's observations and reference posterior samples, shipped with the package.

sbibm (Lueckmann et al. 2021) fixes ten observations per task, each simulated at a known true
θ. They ship here as package data: :func:`load_observation` and :func:`load_true_parameters`
for every task, :func:`load_reference_posterior` with sbibm's 10,000 reference samples for the
tasks that have no cheap exact sampler (``two_moons``, ``slcp``) and exact draws from the
simulator's own ``reference_posterior`` for those that do.

References:
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.

Example:
    >>> load_observation("two_moons", 1)
    tensor([-0.6397,  0.1623])
    >>> load_reference_posterior("slcp", 3).shape
    torch.Size([10000, 5])
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import numpy as np
import torch
from torch import Tensor

from sbitk.errors import ObservationError

NUM_OBSERVATIONS = 10
NUM_REFERENCE_SAMPLES = 10_000
#: Tasks whose reference posterior samples ship as data (the others have exact samplers).
SHIPPED_REFERENCE_TASKS = ("two_moons", "slcp")


@cache
def _archive(name: str) -> dict[str, np.ndarray]:
    with files("sbitk_simulators").joinpath("data", name).open("rb") as f, np.load(f) as npz:
        return {key: npz[key] for key in npz.files}


def tasks() -> list[str]:
    """Names of the tasks with shipped observations."""
    return sorted({key.split("/")[0] for key in _archive("observations.npz")})


def _check(task: str, k: int) -> None:
    if task not in tasks():
        raise ObservationError(
            f"no benchmark observations for task {task!r}; available: {', '.join(tasks())}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= NUM_OBSERVATIONS:
        raise ObservationError(
            f"observation number must be an integer in 1..{NUM_OBSERVATIONS}, got {k!r}"
        )


def load_observation(task: str, k: int) -> Tensor:
    """The benchmark's observation number ``k`` (1…10) of ``task``, a float32 tensor (D_x,)."""
    _check(task, k)
    return torch.from_numpy(_archive("observations.npz")[f"{task}/observation"][k - 1].copy())


def load_true_parameters(task: str, k: int) -> Tensor:
    """The θ (D_θ,) at which the benchmark simulated observation number ``k`` of ``task``."""
    _check(task, k)
    return torch.from_numpy(_archive("observations.npz")[f"{task}/true_parameters"][k - 1].copy())


def load_reference_posterior(task: str, k: int) -> Tensor:
    """Reference posterior samples (10000, D_θ), float32, for observation ``k`` of ``task``.

    ``two_moons`` and ``slcp`` return sbibm's shipped samples. Tasks whose simulator has an exact
    ``reference_posterior`` sampler return 10,000 draws from it with a seed fixed by ``k``, so
    repeated calls agree. Other tasks raise.

    Raises:
        ObservationError: unknown task, ``k`` outside 1…10, or no reference for the task.
    """
    _check(task, k)
    if task in SHIPPED_REFERENCE_TASKS:
        return torch.from_numpy(_archive("reference_posteriors.npz")[task][k - 1].copy())
    from sbitk.simulation.registry import get_simulator

    sim = get_simulator(task)
    if sim.reference_posterior is None:
        have = sorted(
            set(SHIPPED_REFERENCE_TASKS)
            | {t for t in tasks() if get_simulator(t).reference_posterior is not None}
        )
        raise ObservationError(
            f"no reference posterior for task {task!r}; available: {', '.join(have)}"
        )
    generator = torch.Generator().manual_seed(k)
    return sim.reference_posterior(load_observation(task, k), NUM_REFERENCE_SAMPLES, generator)


__all__ = [
    "NUM_OBSERVATIONS",
    "load_observation",
    "load_reference_posterior",
    "load_true_parameters",
    "tasks",
]
