r"""Bernoulli GLM: a spiking neuron with a linear-nonlinear receptive field (sbibm's definition).

A white-noise stimulus :math:`I_t` (t = 1…100, fixed by seed 42 as in sbibm) drives spikes

.. math::
    y_t \sim \mathrm{Bernoulli}\big(\sigma(\beta_0 + \textstyle\sum_{j=0}^{8} h_j I_{t-j})\big),

with σ the logistic function, offset β₀ and filter h (9,). The data are the sufficient
statistics :math:`x = V^\top y` (10,) of the design matrix V (100, 10) whose columns are 1 and
the lagged stimulus: the spike count and the spike-triggered sums
:math:`\mathrm{sta}_j = \sum_t y_t I_{t-j}`. The prior is
:math:`\beta_0 \sim \mathcal N(0, 2)`, :math:`h \sim \mathcal N(0, (F^\top F)^{-1})` with
:math:`F = D^2 + \mathrm{diag}(\sqrt{i / 9})` and D the first-difference matrix, which favours
smooth filters.

References:
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.
    Gonçalves et al., "Training deep neural density estimators to identify mechanistic models of
    neural dynamics", eLife 2020.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = bernoulli_glm(bernoulli_glm.prior.sample(3, generator=g), g)
    >>> x.shape, bernoulli_glm.output_names[:2]
    (torch.Size([3, 10]), ['num_spikes', 'sta[0]'])
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import Tensor

from sbitk.simulation.priors import MultivariateNormal, Normal
from sbitk.simulation.simulator import simulator

NUM_BINS = 100
FILTER_LENGTH = 9
STIMULUS_SEED = 42


@cache
def stimulus() -> Tensor:
    """The frozen white-noise stimulus (100,), float32, as sbibm draws it (numpy seed 42)."""
    # numpy keeps the legacy RandomState stream frozen, so this is sbibm's stimulus bit for bit.
    rng = np.random.RandomState(STIMULUS_SEED)
    return torch.from_numpy(rng.randn(NUM_BINS).astype(np.float32))


@cache
def design_matrix() -> Tensor:
    """The design matrix V (100, 10): a column of ones, then the stimulus lagged by 0…8 bins."""
    stim = stimulus().double()
    v = torch.zeros(NUM_BINS, 1 + FILTER_LENGTH, dtype=torch.float64)
    v[:, 0] = 1.0
    for lag in range(FILTER_LENGTH):
        v[lag:, 1 + lag] = stim[: NUM_BINS - lag]
    return v


def filter_covariance() -> Tensor:
    """The prior covariance (9, 9) of the filter: the inverse of FᵀF (see the module doc)."""
    m = FILTER_LENGTH
    d = torch.eye(m, dtype=torch.float64) - torch.diag(torch.ones(m - 1, dtype=torch.float64), -1)
    f = d @ d + torch.diag(torch.sqrt(torch.arange(m, dtype=torch.float64) / m))
    cov = torch.linalg.inv(f.T @ f)
    return (cov + cov.T) / 2


@simulator(
    "bernoulli_glm",
    parameters={
        "offset": Normal(0.0, 2.0**0.5),
        "filter": MultivariateNormal(
            torch.zeros(FILTER_LENGTH, dtype=torch.float64), filter_covariance()
        ),
    },
    outputs={"num_spikes": (), "sta": (FILTER_LENGTH,)},
    register=False,
)
def bernoulli_glm(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Bernoulli GLM (sbibm, sufficient statistics): spike count and spike-triggered sums."""
    v = design_matrix().to(theta.device)
    rate = torch.sigmoid(theta.double() @ v.T)
    u = torch.rand(rate.shape, generator=generator, dtype=torch.float64, device=theta.device)
    # Columns: num_spikes, then sta[0..8], in the order the outputs are declared.
    return ((u < rate).double() @ v).float()


__all__ = ["bernoulli_glm", "design_matrix", "filter_covariance", "stimulus"]
