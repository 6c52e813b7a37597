r"""Gaussian mixture: x is drawn around θ with a broad or a narrow scale (sbibm's definition).

θ ~ U([-10, 10]²) and

.. math::
    x \mid \theta \sim \tfrac12\, \mathcal N(\theta, I) + \tfrac12\, \mathcal N(\theta, 0.01 I),

one mixture component per simulation, shared by both coordinates.

References:
    Sisson, Fan & Tanaka, "Sequential Monte Carlo without likelihoods", PNAS 2007.
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> gaussian_mixture(torch.zeros(5, 2), g).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbitk.simulation.priors import BoxUniform
from sbitk.simulation.simulator import simulator

PRIOR_BOUND = 10.0
SCALES = (1.0, 0.1)
WEIGHT_NARROW = 0.5


@simulator(
    "gaussian_mixture",
    parameters={"theta": BoxUniform(-PRIOR_BOUND, PRIOR_BOUND, dim=2)},
    outputs={"x": (2,)},
    register=False,
)
def gaussian_mixture(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian mixture (sbibm): x ~ ½ N(θ, I) + ½ N(θ, 0.01 I), θ ~ U([-10, 10]²)."""
    theta = theta.double()
    n = theta.shape[0]
    narrow = torch.rand(n, generator=generator, dtype=torch.float64, device=theta.device)
    scale = torch.where(narrow < WEIGHT_NARROW, SCALES[1], SCALES[0])
    z = torch.randn(theta.shape, generator=generator, dtype=torch.float64, device=theta.device)
    return (theta + scale[:, None] * z).float()


__all__ = ["gaussian_mixture"]
