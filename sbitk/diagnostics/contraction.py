r"""Posterior z-scores against posterior contraction, per parameter.

For each simulated pair :math:`(\theta_i, x_i)` and parameter :math:`d`,

.. math::

    z_{i,d} = \frac{\bar\theta_{i,d} - \theta_{i,d}}{s_{i,d}\sqrt{1 + 1/L}},
    \qquad
    c_{i,d} = 1 - \frac{s_{i,d}^2}{\sigma_{d}^2},

where :math:`\bar\theta` and :math:`s` are the mean and standard deviation of :math:`L`
posterior draws and :math:`\sigma^2` the prior variance (Schad, Betancourt & Vasishth 2021).
The factor :math:`\sqrt{1 + 1/L}` accounts for the Monte Carlo error of :math:`\bar\theta`. For
a calibrated, roughly Gaussian posterior the z-scores are standard normal; a spread above 1
means overconfident, below 1 underconfident, a non-zero mean biased. A contraction near 0 means
the data say little about the parameter (a posterior equal to the prior has :math:`c \approx 0`
and unit z-spread: calibrated but uninformative).

References:
    Betancourt (2018), "Calibrating model-based inferences and decisions", arXiv:1803.08393.
    Schad, Betancourt & Vasishth (2021), "Toward a principled Bayesian workflow in cognitive
    science", arXiv:1904.12765.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from sbitk.diagnostics._checks import DiagnosticInputError, check_level
from sbitk.diagnostics._sampling import (
    BatchedSampler,
    as_tensor,
    check_pairs,
    posterior_chunks,
)

__all__ = ["ContractionResult", "ParameterContraction", "zscore_contraction"]


@dataclass(frozen=True)
class ParameterContraction:
    """Summary of one parameter's z-scores and contraction.

    Attributes:
        name: the parameter.
        mean_z: mean z-score (0 when unbiased).
        std_z: standard deviation of the z-scores (1 when calibrated).
        mean_contraction: mean posterior contraction (1 = the data pin it down, 0 = none).
        bias_statistic: ``sqrt(N)`` times the mean of the normalised z-scores (``z`` mapped
            through the Student-t CDF with ``L - 1`` degrees of freedom, then the normal
            quantile); standard normal under a calibrated Gaussian posterior.
        spread_statistic: the normal quantile of the chi-square (``N - 1`` degrees of freedom)
            CDF of ``(N - 1)`` times their variance; standard normal under calibration,
            positive when the z-scores spread too much.
        critical_value: two-sided normal quantile both statistics are compared with.
        verdict: ``"calibrated"``, ``"overconfident"``, ``"underconfident"`` or ``"biased"``.
        informative: ``mean_contraction >= min_contraction``.
    """

    name: str
    mean_z: float
    std_z: float
    mean_contraction: float
    bias_statistic: float
    spread_statistic: float
    critical_value: float
    verdict: str
    informative: bool


@dataclass(frozen=True)
class ContractionResult:
    """z-scores and contractions of every pair and parameter.

    Attributes:
        z: z-scores, shape ``(N, D)``.
        contraction: contractions, shape ``(N, D)``.
        parameters: one :class:`ParameterContraction` per parameter.
        prior_variance: the prior variances used, shape ``(D,)``.
        alpha: overall level (Bonferroni over parameters and the two statistics).
        min_contraction: below this mean contraction a parameter is called uninformative.
        verdict: ``"calibrated"`` when every parameter is, else ``"miscalibrated"``.
    """

    z: np.ndarray
    contraction: np.ndarray
    parameters: tuple[ParameterContraction, ...]
    prior_variance: np.ndarray
    alpha: float
    min_contraction: float
    verdict: str


def zscore_contraction(
    theta: Any,
    x: Any,
    posterior: BatchedSampler | Any,
    *,
    n_posterior_samples: int = 1000,
    prior_variance: Any | None = None,
    parameter_names: Sequence[str] | None = None,
    alpha: float = 0.05,
    min_contraction: float = 0.1,
    batch_size: int = 1000,
    progress: bool | None = None,
) -> ContractionResult:
    """Posterior z-scores and contractions, with a per-parameter verdict.

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)``.
        posterior: a batched sampler ``sample(x (B, D_x), n) -> (n, B, D)``, or precomputed
            draws of shape ``(L, N, D)``.
        n_posterior_samples: ``L`` when ``posterior`` is a sampler.
        prior_variance: prior variance per parameter ``(D,)`` (default: the variance of
            ``theta``, which is drawn from the prior).
        parameter_names: names of the parameters.
        alpha: overall level of the verdicts.
        min_contraction: mean contraction below which a parameter is uninformative.
        batch_size: observations per sampler call.
        progress: show a progress bar (``None``: on a TTY unless ``TQDM_DISABLE`` is set).

    Returns:
        A :class:`ContractionResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.randn(500, 1, generator=g)
        >>> x = theta + 0.1 * torch.randn(500, 1, generator=g)
        >>> def exact(x, n):  # posterior N(x / 1.01, 0.01 / 1.01)
        ...     return x / 1.01 + (0.01 / 1.01) ** 0.5 * torch.randn(n, *x.shape, generator=g)
        >>> r = zscore_contraction(theta, x, exact, n_posterior_samples=200)
        >>> r.verdict, round(r.parameters[0].mean_contraction, 2)
        ('calibrated', 0.99)
    """
    theta_t, x_t = check_pairs(theta, x, what="zscore_contraction", minimum=3)
    theta_t = theta_t.to("cpu", torch.float64)
    check_level(alpha)
    n, dim = theta_t.shape
    names = list(parameter_names) if parameter_names is not None else None
    if names is not None and len(names) != dim:
        raise DiagnosticInputError(f"parameter_names must have {dim} entries, found {len(names)}")
    if prior_variance is None:
        var0 = theta_t.var(0)
    else:
        var0 = as_tensor(prior_variance, "prior_variance", ndim=1).to("cpu", torch.float64)
        if var0.shape[0] != dim or bool((var0 <= 0).any()):
            raise DiagnosticInputError(
                f"prior_variance must hold {dim} positive values, found {var0.tolist()}"
            )
    z = np.empty((n, dim))
    n_draws = 0
    c = np.empty((n, dim))
    for start, stop, draws in posterior_chunks(
        posterior, x_t, n_posterior_samples, batch_size, dim, progress, "z-scores"
    ):
        L = n_draws = draws.shape[0]
        if L < 2:
            raise DiagnosticInputError(f"z-scores need at least 2 posterior draws, found {L}")
        d64 = draws.to(torch.float64)
        mean, var = d64.mean(0).cpu(), d64.var(0).cpu()
        sd = var.clamp_min(1e-300).sqrt() * (1.0 + 1.0 / L) ** 0.5
        z[start:stop] = ((mean - theta_t[start:stop]) / sd).numpy()
        c[start:stop] = (1.0 - var / var0).numpy()

    crit = float(stats.norm.ppf(1 - alpha / (4 * dim)))
    # With L draws from a Gaussian posterior, z is Student-t with L - 1 degrees of freedom;
    # mapping it through the t and normal CDFs makes the tests exact at any L.
    zn = stats.norm.ppf(stats.t.cdf(z, df=n_draws - 1))
    params = []
    for d in range(dim):
        zd = z[:, d]
        mean_z, std_z = float(zd.mean()), float(zd.std(ddof=1))
        bias = float(zn[:, d].mean() * np.sqrt(n))
        chi2 = (n - 1) * zn[:, d].var(ddof=1)
        spread = float(stats.norm.ppf(stats.chi2.cdf(chi2, n - 1)))
        if max(abs(bias), abs(spread)) <= crit:
            verdict = "calibrated"
        elif abs(bias) >= abs(spread):
            verdict = "biased"
        else:
            verdict = "overconfident" if spread > 0 else "underconfident"
        mean_c = float(c[:, d].mean())
        params.append(
            ParameterContraction(
                name=names[d] if names else f"theta[{d}]",
                mean_z=mean_z,
                std_z=std_z,
                mean_contraction=mean_c,
                bias_statistic=float(bias),
                spread_statistic=float(spread),
                critical_value=crit,
                verdict=verdict,
                informative=mean_c >= min_contraction,
            )
        )
    ok = all(p.verdict == "calibrated" for p in params)
    return ContractionResult(
        z=z,
        contraction=c,
        parameters=tuple(params),
        prior_variance=var0.numpy(),
        alpha=float(alpha),
        min_contraction=float(min_contraction),
        verdict="calibrated" if ok else "miscalibrated",
    )
