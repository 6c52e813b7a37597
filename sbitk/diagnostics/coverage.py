r"""Expected coverage of highest-posterior-density regions, and TARP.

**HPD coverage** (Hermans et al. 2022). The true parameter lies in the level-:math:`\gamma`
highest-density region of :math:`q(\theta \mid x)` exactly when fewer than a fraction
:math:`\gamma` of posterior draws are more probable than it. With the randomised rank

.. math::

    u_i = \frac{\#\{l : \log q(\theta_{i,l} \mid x_i) < \log q(\theta_i \mid x_i)\} + V_i}{L + 1},
    \qquad V_i \sim \mathcal{U}(0, 1),

which is exactly uniform when :math:`q` is the true posterior, the expected coverage is
:math:`\widehat{c}(\gamma) = \frac1N \sum_i \mathbb{1}[u_i > 1 - \gamma]`. Its Monte Carlo
standard error under calibration is :math:`\sqrt{\gamma (1 - \gamma) / N}`; a coverage
significantly below the level means *overconfident* (regions too small), above means
*conservative*.

**TARP** (Lemos et al. 2023). With a reference point :math:`\theta^{\mathrm{ref}}_i` per
observation, the fraction of draws closer to it than the truth,
:math:`f_i = \frac1L \#\{l : \lVert \theta_{i,l} - \theta^{\mathrm{ref}}_i \rVert <
\lVert \theta_i - \theta^{\mathrm{ref}}_i \rVert\}`, is uniform when :math:`q` is the true
posterior, so the expected coverage probability :math:`\mathrm{ECP}(\alpha) = \frac1N \sum_i
\mathbb{1}[f_i < \alpha]` follows the diagonal on the fixed grid :math:`\alpha \in [0, 1]`.

References:
    Hermans et al. (2022), "A trust crisis in simulation-based inference? Your posterior
    approximations can be unfaithful", arXiv:2110.06581.
    Lemos et al. (2023), "Sampling-based accuracy testing of posterior estimators for general
    inference", arXiv:2302.03026.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbitk.diagnostics._checks import DiagnosticInputError, check_level, check_min_count
from sbitk.diagnostics._sampling import (
    BatchedSampler,
    as_tensor,
    check_finite_tensor,
    check_pairs,
    evaluate_quantity,
    posterior_chunks,
    randomized_ranks,
    stream,
)

__all__ = [
    "CoverageResult",
    "TARPResult",
    "coverage_from_ranks",
    "expected_coverage",
    "tarp",
]


@dataclass(frozen=True)
class CoverageResult:
    """Expected coverage of HPD regions at a grid of credibility levels.

    Attributes:
        levels: credibility levels ``γ``, shape ``(K,)``.
        coverage: fraction of true parameters inside their level-``γ`` HPD region.
        standard_error: Monte Carlo error under calibration, ``sqrt(γ (1 - γ) / N)``.
        lower: coverage below this at some level means overconfident.
        upper: coverage above this at some level means conservative.
        fractional_ranks: the uniform-under-calibration ranks ``u_i``, shape ``(N,)``.
        n_simulations: ``N``.
        n_posterior_samples: ``L``.
        alpha: overall level; the bounds are Bonferroni-corrected two-sided over the grid.
        verdict: ``"calibrated"``, ``"conservative"``, ``"overconfident"``, or
            ``"miscalibrated"`` (significant on both sides).
    """

    levels: np.ndarray
    coverage: np.ndarray
    standard_error: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    fractional_ranks: np.ndarray
    n_simulations: int
    n_posterior_samples: int
    alpha: float
    verdict: str


@dataclass(frozen=True)
class TARPResult:
    """Expected coverage probability (ECP) of TARP on the fixed grid ``[0, 1]``.

    Attributes:
        credibility: the grid ``α``, shape ``(K,)``, from 0 to 1.
        ecp: expected coverage probability at each ``α``.
        fractions: per-observation fraction ``f_i`` of draws closer to the reference than the
            truth (randomised within ties), shape ``(N,)``.
        atc: signed area between ECP and the diagonal, ``∫ (ECP(α) - α) dα``.
        ks_statistic: ``max |ECP(α) - α|`` on the grid.
        threshold: the Kolmogorov-Smirnov critical value for ``N`` at level ``alpha``.
        p_value: Kolmogorov-Smirnov p-value of ``f`` against the uniform.
        n_simulations: ``N``.
        n_posterior_samples: ``L``.
        alpha: level of the test.
        verdict: ``"calibrated"`` or ``"miscalibrated"``.
    """

    credibility: np.ndarray
    ecp: np.ndarray
    fractions: np.ndarray
    atc: float
    ks_statistic: float
    threshold: float
    p_value: float
    n_simulations: int
    n_posterior_samples: int
    alpha: float
    verdict: str


def coverage_from_ranks(
    fractional_ranks: Any,
    *,
    levels: Sequence[float] | None = None,
    alpha: float = 0.05,
    n_posterior_samples: int = 0,
) -> CoverageResult:
    """Expected HPD coverage from uniform-under-calibration fractional ranks.

    Args:
        fractional_ranks: ``u_i`` in ``[0, 1]``, shape ``(N,)``: the probability mass of the
            posterior that is *less* dense than the truth.
        levels: credibility levels in ``(0, 1)`` (default ``0.05, 0.10, ..., 0.95``).
        alpha: overall level of the verdict.
        n_posterior_samples: ``L``, recorded in the result.

    Returns:
        A :class:`CoverageResult`.

    Example:
        >>> import numpy as np
        >>> u = np.random.default_rng(0).uniform(size=2000)
        >>> coverage_from_ranks(u).verdict
        'calibrated'
        >>> coverage_from_ranks(u**3).verdict  # truth mostly in the low-density tail
        'overconfident'
    """
    u = np.asarray(fractional_ranks, dtype=float)
    if u.ndim != 1:
        raise DiagnosticInputError(f"fractional_ranks must be 1-D, found shape {u.shape}")
    check_min_count(len(u), 2, "coverage")
    check_level(alpha)
    grid = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, dtype=float)
    if grid.ndim != 1 or len(grid) == 0 or np.any((grid <= 0) | (grid >= 1)):
        raise DiagnosticInputError(f"levels must be a 1-D grid inside (0, 1), found {levels}")
    n = len(u)
    coverage = (u[None, :] > 1.0 - grid[:, None]).mean(axis=1)
    se = np.sqrt(grid * (1 - grid) / n)
    z = float(stats.norm.ppf(1 - alpha / (2 * len(grid))))
    lower, upper = grid - z * se, grid + z * se
    below, above = bool(np.any(coverage < lower)), bool(np.any(coverage > upper))
    if below and above:
        verdict = "miscalibrated"
    elif below:
        verdict = "overconfident"
    elif above:
        verdict = "conservative"
    else:
        verdict = "calibrated"
    return CoverageResult(
        levels=grid,
        coverage=coverage,
        standard_error=se,
        lower=lower,
        upper=upper,
        fractional_ranks=u,
        n_simulations=n,
        n_posterior_samples=int(n_posterior_samples),
        alpha=float(alpha),
        verdict=verdict,
    )


def expected_coverage(
    theta: Any,
    x: Any,
    posterior: BatchedSampler | Any,
    log_prob: Callable[[Tensor, Tensor], Tensor],
    *,
    n_posterior_samples: int = 1000,
    levels: Sequence[float] | None = None,
    alpha: float = 0.05,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
) -> CoverageResult:
    r"""Expected coverage of the posterior's highest-density regions (Hermans et al. 2022).

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)``.
        posterior: a batched sampler ``sample(x (B, D_x), n) -> (n, B, D)``, or precomputed
            draws of shape ``(L, N, D)``.
        log_prob: the posterior's log-density ``log q(θ (L, B, D) | x (B, D_x)) -> (L, B)``
            (any function increasing in it will do: only its order matters).
        n_posterior_samples: ``L`` when ``posterior`` is a sampler.
        levels: credibility levels in ``(0, 1)`` (default ``0.05, 0.10, ..., 0.95``).
        alpha: overall level of the verdict.
        batch_size: observations per sampler call.
        seed: seeds the randomised ranks.
        progress: show a progress bar (``None``: on a TTY unless ``TQDM_DISABLE`` is set).

    Returns:
        A :class:`CoverageResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.randn(500, 1, generator=g)
        >>> x = theta + torch.randn(500, 1, generator=g)
        >>> def narrow(x, n):  # half the true posterior scale 1/√2
        ...     return x / 2 + 0.35 * torch.randn(n, *x.shape, generator=g)
        >>> log_q = lambda th, x: -(((th - x / 2) / 0.35) ** 2).sum(-1)
        >>> expected_coverage(theta, x, narrow, log_q, n_posterior_samples=100).verdict
        'overconfident'
    """
    theta_t, x_t = check_pairs(theta, x, what="coverage")
    if not callable(log_prob):
        raise DiagnosticInputError(f"log_prob must be callable, found {type(log_prob).__name__}")
    n, dim = theta_t.shape
    generator = stream(seed, "ranks")
    u = np.empty(n)
    n_draws = 0
    for start, stop, draws in posterior_chunks(
        posterior, x_t, n_posterior_samples, batch_size, dim, progress, "coverage"
    ):
        n_draws = draws.shape[0]
        xb = x_t[start:stop].to(draws.device)
        with torch.no_grad():
            lp_draws = evaluate_quantity(log_prob, draws, xb, "log_prob")
            lp_true = evaluate_quantity(
                log_prob, theta_t[start:stop].to(draws.device, draws.dtype)[None], xb, "log_prob"
            )[0]
        u[start:stop] = _fractional(lp_draws, lp_true.to(lp_draws.dtype), generator)
    return coverage_from_ranks(u, levels=levels, alpha=alpha, n_posterior_samples=n_draws)


@functools.lru_cache(maxsize=256)
def _ks_critical(n: int, alpha: float) -> float:
    return float(stats.kstwo.ppf(1 - alpha, n))


def _fractional(stat_draws: Tensor, stat_true: Tensor, generator: torch.Generator) -> np.ndarray:
    """Continuous rank ``(r + V) / (L + 1)``: exactly uniform under exchangeability."""
    if not bool(torch.isfinite(stat_true).all()):
        raise DiagnosticInputError(
            "log_prob of a true parameter is not finite: is the posterior's support too small?"
        )
    r = randomized_ranks(stat_draws, stat_true, generator).cpu().to(torch.float64)
    v = torch.rand(r.shape, generator=generator, dtype=torch.float64)
    return ((r + v) / (stat_draws.shape[0] + 1)).cpu().numpy()


def tarp(
    theta: Any,
    x: Any,
    posterior: BatchedSampler | Any,
    *,
    n_posterior_samples: int = 1000,
    references: Any | Callable[[Tensor], Tensor] | None = None,
    z_score: bool = True,
    n_grid: int = 101,
    alpha: float = 0.05,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
) -> TARPResult:
    r"""Tests of Accuracy with Random Points (Lemos et al. 2023) on the grid ``[0, 1]``.

    Reference points: by default one per observation, drawn uniformly (with ``seed``) from the
    bounding box of the true parameters, after z-scoring. Such references do not depend on
    ``x``, and then TARP's test is necessary but not sufficient: a posterior equal to the prior
    passes it, as it passes any marginal check. Pass a callable ``references(x (B, D_x)) ->
    (B, D)`` (for instance a point near a cheap regression estimate of θ) for the sufficient,
    data-dependent version, or an array ``(N, D)`` of fixed references.

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)``.
        posterior: a batched sampler ``sample(x (B, D_x), n) -> (n, B, D)``, or precomputed
            draws of shape ``(L, N, D)``.
        n_posterior_samples: ``L`` when ``posterior`` is a sampler.
        references: reference points ``(N, D)`` in parameter space, or a callable of ``x``,
            or ``None`` for the default above.
        z_score: measure distances after standardising θ by the true parameters' mean and
            standard deviation (references given by the caller are in the original units).
        n_grid: number of points of the credibility grid ``linspace(0, 1, n_grid)``.
        alpha: level of the Kolmogorov-Smirnov verdict.
        batch_size: observations per sampler call.
        seed: seeds the default references and the tie-breaking.
        progress: show a progress bar (``None``: on a TTY unless ``TQDM_DISABLE`` is set).

    Returns:
        A :class:`TARPResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> theta = torch.randn(300, 2, generator=g)
        >>> x = theta + torch.randn(300, 2, generator=g)
        >>> def exact(x, n):
        ...     return x / 2 + 0.5**0.5 * torch.randn(n, *x.shape, generator=g)
        >>> tarp(theta, x, exact, n_posterior_samples=100).verdict
        'calibrated'
    """
    theta_t, x_t = check_pairs(theta, x, what="TARP")
    check_level(alpha)
    if int(n_grid) < 2:
        raise DiagnosticInputError(f"n_grid must be at least 2, found {n_grid}")
    n, dim = theta_t.shape
    generator = stream(seed, "ranks")
    theta64 = theta_t.to(torch.float64)
    if z_score:
        mean = theta64.mean(0)
        std = theta64.std(0) if n > 1 else torch.ones_like(mean)
        std = torch.where(std > 1e-14, std, torch.ones_like(std))
    else:
        mean = theta64.new_zeros(dim)
        std = theta64.new_ones(dim)
    ref_fixed: Tensor | None = None
    if references is None:
        z = (theta64 - mean) / std
        lo, hi = z.min(0).values, z.max(0).values
        u = torch.rand(n, dim, generator=stream(seed, "references"), dtype=torch.float64)
        u = u.to(z.device)
        ref_fixed = lo + (hi - lo) * u  # already standardised
    elif not callable(references):
        ref = as_tensor(references, "references", ndim=2).to(torch.float64)
        if tuple(ref.shape) != (n, dim):
            raise DiagnosticInputError(
                f"references must have shape ({n}, {dim}), found {tuple(ref.shape)}"
            )
        check_finite_tensor(ref, "references")
        ref_fixed = (ref.to(mean.device) - mean) / std

    f = np.empty(n)
    n_draws = 0
    for start, stop, draws in posterior_chunks(
        posterior, x_t, n_posterior_samples, batch_size, dim, progress, "TARP"
    ):
        n_draws = draws.shape[0]
        if ref_fixed is not None:
            ref_b = ref_fixed[start:stop]
        else:
            with torch.no_grad():
                ref_b = as_tensor(references(x_t[start:stop]), "references(x)", ndim=2)
            if tuple(ref_b.shape) != (stop - start, dim):
                raise DiagnosticInputError(
                    f"references(x) must return shape ({stop - start}, {dim}), found "
                    f"{tuple(ref_b.shape)}"
                )
            ref_b = (ref_b.to(mean.device, torch.float64) - mean) / std
        dev = draws.device
        mean_d, std_d, ref_b = mean.to(dev), std.to(dev), ref_b.to(dev)
        dz = (draws.to(torch.float64) - mean_d) / std_d
        tz = (theta64[start:stop].to(dev) - mean_d) / std_d
        d_draws = torch.linalg.vector_norm(dz - ref_b, dim=-1)
        d_true = torch.linalg.vector_norm(tz - ref_b, dim=-1)
        f[start:stop] = _fractional(d_draws, d_true, generator)

    grid = np.linspace(0.0, 1.0, int(n_grid))
    ecp = (f[None, :] < grid[:, None]).mean(axis=1)
    ks = stats.kstest(f, "uniform")
    threshold = _ks_critical(n, float(alpha))
    verdict = "calibrated" if ks.pvalue >= alpha else "miscalibrated"
    return TARPResult(
        credibility=grid,
        ecp=ecp,
        fractions=f,
        atc=float(np.trapezoid(ecp - grid, grid)),
        ks_statistic=float(np.max(np.abs(ecp - grid))),
        threshold=threshold,
        p_value=float(ks.pvalue),
        n_simulations=n,
        n_posterior_samples=int(n_draws),
        alpha=float(alpha),
        verdict=verdict,
    )
