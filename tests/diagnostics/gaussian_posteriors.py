"""A Gaussian problem with a closed-form posterior, and posteriors that are wrong in known ways.

θ ~ N(0, I_D), x = θ + σ ε: the posterior is N(x / (1 + σ²), σ² / (1 + σ²) I). A candidate
posterior N(m(x) + shift·s, (scale·s)² I), s the true posterior standard deviation, is

- ``exact``:  scale 1, shift 0;
- ``narrow``: scale 0.5 (overconfident);
- ``wide``:   scale 2 (underconfident / conservative);
- ``biased``: shift 1 posterior standard deviation;
- ``prior``:  the prior N(0, I), whatever x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CASES = ("exact", "narrow", "wide", "biased", "prior")
_SETTINGS = {
    "exact": (1.0, 0.0),
    "narrow": (0.5, 0.0),
    "wide": (2.0, 0.0),
    "biased": (1.0, 1.0),
}


@dataclass
class GaussianProblem:
    dim: int = 2
    noise: float = 1.0

    @property
    def posterior_std(self) -> float:
        return self.noise / math.sqrt(1.0 + self.noise**2)

    def simulate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = theta + self.noise * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return theta, x

    def loc_scale(self, x: torch.Tensor, case: str) -> tuple[torch.Tensor, float]:
        if case == "prior":
            return torch.zeros_like(x), 1.0
        scale, shift = _SETTINGS[case]
        s = self.posterior_std
        return x / (1.0 + self.noise**2) + shift * s, scale * s

    def sampler(self, case: str, generator: torch.Generator):
        """Batched sampler ``(x (B, D), n) -> (n, B, D)`` of the candidate posterior."""

        def sample(x: torch.Tensor, n: int) -> torch.Tensor:
            loc, scale = self.loc_scale(x, case)
            eps = torch.randn(n, *x.shape, generator=generator, dtype=x.dtype)
            return loc + scale * eps

        return sample

    def log_prob(self, case: str):
        """Candidate posterior log-density ``(θ (L, B, D), x (B, D)) -> (L, B)``."""

        def log_prob(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            loc, scale = self.loc_scale(x, case)
            z = (theta - loc) / scale
            return -0.5 * (z**2).sum(-1) - self.dim * math.log(scale * math.sqrt(2 * math.pi))

        return log_prob

    def log_likelihood(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x | θ), a data-dependent SBC test quantity."""
        return -0.5 * (((x - theta) / self.noise) ** 2).sum(-1)
