r"""SLCP: simple likelihood, complex posterior (sbibm's definition, without distractors).

θ ~ U([-3, 3]⁵) and x holds four i.i.d. draws of a two-dimensional Gaussian,

.. math::
    x_j \sim \mathcal N\Big(\begin{pmatrix}\theta_1\\ \theta_2\end{pmatrix},
    \begin{pmatrix} s_1^2 + \epsilon & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 + \epsilon
    \end{pmatrix}\Big), \quad s_1 = \theta_3^2,\; s_2 = \theta_4^2,\;
    \rho = \tanh \theta_5,\; \epsilon = 10^{-6},

for j = 1…4. The likelihood is simple; the posterior has four symmetric modes (the signs of θ₃
and θ₄) and hard edges. Its reference samples ship with the package
(:func:`sbitk_simulators.observations.load_reference_posterior`).

References:
    Papamakarios, Sterratt & Murray, "Sequential Neural Likelihood", AISTATS 2019,
    arXiv:1805.07226.
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> slcp(slcp.prior.sample(3, generator=g), g).shape
    torch.Size([3, 8])
    >>> slcp.output_names[:3]
    ['x[0,0]', 'x[0,1]', 'x[1,0]']
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbitk.simulation.priors import BoxUniform
from sbitk.simulation.simulator import simulator

PRIOR_BOUND = 3.0
NUM_POINTS = 4
EPS = 1e-6


def mean_and_covariance(theta: Tensor) -> tuple[Tensor, Tensor]:
    """The mean (*, 2) and covariance (*, 2, 2) of each of the four points given θ (*, 5)."""
    m = theta[..., :2]
    s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
    rho = torch.tanh(theta[..., 4])
    off = rho * s1 * s2
    cov = torch.stack(
        (torch.stack((s1**2 + EPS, off), -1), torch.stack((off, s2**2 + EPS), -1)), -2
    )
    return m, cov


@simulator(
    "slcp",
    parameters={"theta": BoxUniform(-PRIOR_BOUND, PRIOR_BOUND, dim=5)},
    outputs={"x": (NUM_POINTS, 2)},
    trials=("x",),
    register=False,
)
def slcp(theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """SLCP (sbibm): four draws of a 2-D Gaussian whose mean, scales and correlation are θ."""
    theta = theta.double()
    m, cov = mean_and_covariance(theta)
    # The 2x2 Cholesky factor written out: cheaper than batched linalg and exact in float64.
    l00 = cov[:, 0, 0].sqrt()
    l10 = cov[:, 1, 0] / l00
    l11 = (cov[:, 1, 1] - l10**2).clamp_min(0).sqrt()
    z = torch.randn(
        (theta.shape[0], NUM_POINTS, 2),
        generator=generator,
        dtype=torch.float64,
        device=theta.device,
    )
    x0 = m[:, None, 0] + l00[:, None] * z[..., 0]
    x1 = m[:, None, 1] + l10[:, None] * z[..., 0] + l11[:, None] * z[..., 1]
    return torch.stack((x0, x1), dim=-1).float()


__all__ = ["mean_and_covariance", "slcp"]
