r"""Gaussian linear tasks: x ~ N(θ, 0.1 I) in ten dimensions, with a Gaussian or a uniform prior.

Both follow the sbibm definitions (Lueckmann et al. 2021). sbibm passes ``0.1`` as the
*variance* (it builds the precision matrix as ``inverse(0.1 * I)``), so every standard
deviation here is :math:`\sqrt{0.1}`.

``gaussian_linear`` has the prior :math:`\theta \sim \mathcal N(0, 0.1 I)` and the conjugate
posterior

.. math::
    \theta \mid x_o \sim \mathcal N\Big(\frac{\sigma_0^2}{\sigma_0^2 + \sigma^2} x_o,\;
    \frac{\sigma_0^2 \sigma^2}{\sigma_0^2 + \sigma^2} I\Big) = \mathcal N(x_o / 2, 0.05 I).

``gaussian_linear_uniform`` has the prior :math:`\mathcal U([-1, 1]^{10})`; its posterior is
:math:`\mathcal N(x_o, 0.1 I)` truncated to the box, which factorises over dimensions and is
sampled exactly by the inverse CDF of a truncated normal.

References:
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> theta = gaussian_linear.prior.sample(3, generator=g)
    >>> gaussian_linear(theta, g).shape
    torch.Size([3, 10])
    >>> gaussian_linear.reference_posterior(torch.zeros(10), 4, g).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbitk.errors import ObservationError
from sbitk.simulation.priors import BoxUniform, MultivariateNormal
from sbitk.simulation.simulator import simulator

DIM = 10
#: Prior variance of ``gaussian_linear`` and noise variance of both tasks (sbibm's "scale").
PRIOR_VARIANCE = 0.1
NOISE_VARIANCE = 0.1
PRIOR_BOUND = 1.0


def _check_observation(x_o: Tensor, name: str) -> Tensor:
    x_o = torch.as_tensor(x_o).detach().to("cpu", torch.float64).reshape(-1)
    if x_o.numel() != DIM:
        raise ObservationError(f"{name}: x_o must have {DIM} entries, got {x_o.numel()}")
    if not torch.isfinite(x_o).all():
        raise ObservationError(f"{name}: x_o must be finite, got {x_o.tolist()}")
    return x_o


def _simulate(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(theta.shape, generator=generator, dtype=torch.float64, device=theta.device)
    return (theta.double() + math.sqrt(NOISE_VARIANCE) * noise).float()


def gaussian_linear_posterior(x_o: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """Exact posterior samples (n, 10) of ``gaussian_linear`` at x_o (10,): N(x_o / 2, 0.05 I)."""
    x_o = _check_observation(x_o, "gaussian_linear")
    shrink = PRIOR_VARIANCE / (PRIOR_VARIANCE + NOISE_VARIANCE)
    var = PRIOR_VARIANCE * NOISE_VARIANCE / (PRIOR_VARIANCE + NOISE_VARIANCE)
    z = torch.randn((n, DIM), generator=generator, dtype=torch.float64)
    return (shrink * x_o + math.sqrt(var) * z).float()


def truncated_normal(
    loc: Tensor, scale: float, low: float, high: float, n: int, generator
) -> Tensor:
    r"""Exact draws (n, D) of independent normals N(loc, scale²) truncated to [low, high].

    The inverse CDF is evaluated on the side of the mean where the normal CDF keeps its relative
    precision: mirrored so that ``loc >= 0`` with a symmetric box, the lower tail probability
    :math:`\Phi(a)` never rounds to 1.
    """
    loc = loc.double()
    flip = loc < 0  # mirror onto loc >= 0; needs the box symmetric about 0
    mu = torch.where(flip, -loc, loc)
    a = (low - mu) / scale
    b = (high - mu) / scale
    pa, pb = torch.special.ndtr(a), torch.special.ndtr(b)
    u = torch.rand((n, loc.numel()), generator=generator, dtype=torch.float64)
    z = torch.special.ndtri(pa + u * (pb - pa))
    z = torch.minimum(torch.maximum(z, a), b)
    theta = mu + scale * z
    return torch.where(flip, -theta, theta)


def gaussian_linear_uniform_posterior(
    x_o: Tensor, n: int, generator: torch.Generator | None
) -> Tensor:
    """Exact posterior samples (n, 10) of ``gaussian_linear_uniform``: N(x_o, 0.1 I) on the box."""
    x_o = _check_observation(x_o, "gaussian_linear_uniform")
    theta = truncated_normal(
        x_o, math.sqrt(NOISE_VARIANCE), -PRIOR_BOUND, PRIOR_BOUND, n, generator
    )
    return theta.clamp(-PRIOR_BOUND, PRIOR_BOUND).float()


@simulator(
    "gaussian_linear",
    parameters={
        "theta": MultivariateNormal(
            torch.zeros(DIM, dtype=torch.float64),
            PRIOR_VARIANCE * torch.eye(DIM, dtype=torch.float64),
        )
    },
    outputs={"x": (DIM,)},
    reference_posterior=gaussian_linear_posterior,
    register=False,
)
def gaussian_linear(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian linear (sbibm): θ ~ N(0, 0.1 I₁₀), x | θ ~ N(θ, 0.1 I₁₀)."""
    return _simulate(theta, generator)


@simulator(
    "gaussian_linear_uniform",
    parameters={"theta": BoxUniform(-PRIOR_BOUND, PRIOR_BOUND, dim=DIM)},
    outputs={"x": (DIM,)},
    reference_posterior=gaussian_linear_uniform_posterior,
    register=False,
)
def gaussian_linear_uniform(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian linear uniform (sbibm): θ ~ U([-1, 1]¹⁰), x | θ ~ N(θ, 0.1 I₁₀)."""
    return _simulate(theta, generator)


__all__ = [
    "gaussian_linear",
    "gaussian_linear_posterior",
    "gaussian_linear_uniform",
    "gaussian_linear_uniform_posterior",
    "truncated_normal",
]
