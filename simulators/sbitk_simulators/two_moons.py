r"""Two moons: a bimodal, crescent-shaped posterior in two dimensions (sbibm's definition).

With θ ~ U([-1, 1]²), a ~ U(-π/2, π/2), r ~ N(0.1, 0.01²) and p = (r cos a + 0.25, r sin a),

.. math::
    x = p + \big(-|\theta_1 + \theta_2| / \sqrt 2,\; (\theta_2 - \theta_1) / \sqrt 2\big).

For fixed noise p the map θ ↦ x is a rotation by π/4 followed by a fold of the first
coordinate, so it has unit Jacobian on each side of the fold and two preimages. The reference
posterior inverts it, as sbibm does: draw p from the noise, pick one of the two preimages of
x_o - p with probability 1/2, and keep the draws inside the prior box. Unlike sbibm we also
drop the draws with p₁ < x_{o,1}, for which x_o - p has no preimage at all, so the samples are
exactly from the posterior.

References:
    Greenberg, Nonnenmacher & Macke, "Automatic Posterior Transformation for Likelihood-free
    Inference", ICML 2019, arXiv:1905.07488.
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> two_moons(torch.zeros(3, 2), g).shape
    torch.Size([3, 2])
    >>> x_o = torch.tensor([-0.6397, 0.1623])
    >>> samples = two_moons.reference_posterior(x_o, 1000, g)
    >>> samples.shape, bool(samples.abs().max() <= 1)
    (torch.Size([1000, 2]), True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbitk.errors import ObservationError
from sbitk.simulation.priors import BoxUniform
from sbitk.simulation.simulator import simulator

PRIOR_BOUND = 1.0
A_LOW, A_HIGH = -math.pi / 2, math.pi / 2
BASE_OFFSET = 0.25
R_LOC, R_SCALE = 0.1, 0.01
_SQRT_HALF = math.sqrt(0.5)


def _noise(n: int, generator, dtype=torch.float64, device=None) -> Tensor:
    """The noise point p (n, 2): a noisy half circle of radius 0.1 centred at (0.25, 0)."""
    a = A_LOW + (A_HIGH - A_LOW) * torch.rand(n, generator=generator, dtype=dtype, device=device)
    r = R_LOC + R_SCALE * torch.randn(n, generator=generator, dtype=dtype, device=device)
    return torch.stack((r * torch.cos(a) + BASE_OFFSET, r * torch.sin(a)), dim=-1)


def mean_function(theta: Tensor) -> Tensor:
    """The noise-free part of the simulator, (*, 2) → (*, 2): x = p + mean_function(θ)."""
    z0 = _SQRT_HALF * (theta[..., 0] + theta[..., 1])
    z1 = _SQRT_HALF * (theta[..., 1] - theta[..., 0])
    return torch.stack((-z0.abs(), z1), dim=-1)


def inverse_noise(theta: Tensor, x: Tensor) -> Tensor:
    """The noise point p (*, 2) that maps θ to x: p = x - mean_function(θ)."""
    return x - mean_function(theta)


def two_moons_posterior(
    x_o: Tensor, n: int, generator: torch.Generator | None, max_rounds: int = 1000
) -> Tensor:
    """Exact posterior samples (n, 2) at x_o (2,) by inverting the simulator.

    Args:
        x_o: The observation.
        n: Number of samples.
        generator: Source of randomness.
        max_rounds: Cap on the number of proposal batches; an observation the model can
            hardly produce raises instead of looping forever.

    Raises:
        ObservationError: x_o has the wrong size, or too few proposals were accepted.
    """
    x_o = torch.as_tensor(x_o).detach().to("cpu", torch.float64).reshape(-1)
    if x_o.numel() != 2 or not torch.isfinite(x_o).all():
        raise ObservationError(f"two_moons: x_o must be 2 finite numbers, got {x_o.tolist()}")
    kept: list[Tensor] = []
    count, batch = 0, max(2 * n, 1000)
    for _ in range(max_rounds):
        p = _noise(batch, generator)
        q0 = p[:, 0] - x_o[0]  # = |z0| >= 0 when a preimage exists
        q1 = x_o[1] - p[:, 1]
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        z0 = sign.double() * q0
        theta = torch.stack((_SQRT_HALF * (z0 - q1), _SQRT_HALF * (z0 + q1)), dim=-1)
        ok = (q0 >= 0) & (theta.abs() <= PRIOR_BOUND).all(-1)
        kept.append(theta[ok])
        count += int(ok.sum())
        if count >= n:
            return torch.cat(kept)[:n].float()
    raise ObservationError(
        f"two_moons: only {count} of {n} posterior samples accepted in {max_rounds} rounds of "
        f"{batch} proposals; x_o={x_o.tolist()} is (nearly) impossible under the model"
    )


@simulator(
    "two_moons",
    parameters={"theta": BoxUniform(-PRIOR_BOUND, PRIOR_BOUND, dim=2)},
    outputs={"x": (2,)},
    reference_posterior=two_moons_posterior,
    register=False,
)
def two_moons(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Two moons (sbibm): a noisy half circle shifted by a folded rotation of θ ∈ [-1, 1]²."""
    theta = theta.double()
    p = _noise(theta.shape[0], generator, device=theta.device)
    return (p + mean_function(theta)).float()


__all__ = ["inverse_noise", "mean_function", "two_moons", "two_moons_posterior"]
