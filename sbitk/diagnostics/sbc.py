r"""Simulation-based calibration (SBC) with simultaneous ECDF bands.

For pairs :math:`(\theta_i, x_i)` drawn from the joint :math:`p(\theta)\,p(x \mid \theta)` and
:math:`L` draws :math:`\theta_{i,1..L} \sim q(\theta \mid x_i)`, the rank of a test quantity

.. math::

    r_i = \#\{\, l : f(\theta_{i,l}, x_i) < f(\theta_i, x_i) \,\}

is uniform on :math:`\{0, \dots, L\}` whenever :math:`q` is the true posterior (Talts et al.
2018). Marginals :math:`f(\theta, x) = \theta_d` are the classic choice; data-dependent
quantities such as a log-likelihood :math:`\log p(x \mid \theta)` also catch a posterior that
simply returns the prior, which passes every marginal check (Modrák et al. 2023).

Uniformity of each quantity's ranks is judged by whether their ECDF stays inside the
simultaneous :math:`1 - \alpha` band of Säilynoja et al. (2022), computed by ArviZ; the level is
split across quantities (Bonferroni) so that the overall false-alarm rate is at most
:math:`\alpha`. A chi-square statistic over equal-width rank bins is reported alongside.

References:
    Talts et al. (2018), "Validating Bayesian inference algorithms with simulation-based
    calibration", arXiv:1804.06788.
    Säilynoja, Bürkner & Vehtari (2022), "Graphical test for discrete uniformity and its
    applications in goodness-of-fit evaluation and multiple sample comparison",
    arXiv:2103.10522.
    Modrák et al. (2023), "Simulation-based calibration checking for Bayesian computation: the
    choice of test quantities shapes sensitivity", arXiv:2211.02383.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from sbitk.diagnostics._checks import DiagnosticInputError, check_level, check_min_count
from sbitk.diagnostics._sampling import (
    BatchedSampler,
    check_pairs,
    evaluate_quantity,
    posterior_chunks,
    randomized_ranks,
    stream,
)

__all__ = ["RankCalibration", "SBCResult", "ecdf_band", "rank_calibration", "sbc"]

TestQuantity = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RankCalibration:
    """Uniformity check of one test quantity's ranks.

    Attributes:
        name: the test quantity.
        ranks: integer ranks in ``{0, ..., L}``, shape ``(N,)``.
        n_posterior_samples: ``L``.
        eval_ranks: ranks ``k`` at which the ECDF is checked, shape ``(K,)``.
        ecdf: fraction of ranks ``<= k`` at each ``eval_ranks``.
        expected: the uniform CDF ``(k + 1) / (L + 1)`` there.
        band_lower: lower edge of the simultaneous band at each ``eval_ranks``.
        band_upper: upper edge.
        band_level: simultaneous coverage of the band (``1 - alpha / Q``).
        chi2: chi-square statistic over ``n_bins`` equal-width rank bins.
        chi2_p_value: its p-value.
        n_bins: number of bins of the chi-square summary.
        mean_rank_deviation: mean of ``(r + 1/2) / (L + 1) - 1/2``; positive when the truth sits
            above most posterior draws (posterior biased low).
        spread_ratio: variance of the fractional ranks over the uniform's; above 1 for a
            U-shaped histogram (posterior too narrow), below 1 for a hump (too wide).
        verdict: ``"calibrated"`` when the ECDF stays inside the band, else ``"miscalibrated"``.
        shape: what the deviation looks like: ``"none"``, ``"overconfident"``,
            ``"underconfident"``, ``"biased low"`` or ``"biased high"``.
    """

    name: str
    ranks: np.ndarray
    n_posterior_samples: int
    eval_ranks: np.ndarray
    ecdf: np.ndarray
    expected: np.ndarray
    band_lower: np.ndarray
    band_upper: np.ndarray
    band_level: float
    chi2: float
    chi2_p_value: float
    n_bins: int
    mean_rank_deviation: float
    spread_ratio: float
    verdict: str
    shape: str


@dataclass(frozen=True)
class SBCResult:
    """Outcome of simulation-based calibration over several test quantities.

    Attributes:
        quantities: one :class:`RankCalibration` per test quantity (marginals first).
        n_simulations: number of ``(θ, x)`` pairs ``N``.
        n_posterior_samples: posterior draws per pair ``L``.
        alpha: overall level; each quantity is tested at ``alpha / len(quantities)``.
        verdict: ``"calibrated"`` when every quantity passes, else ``"miscalibrated"``.
    """

    quantities: tuple[RankCalibration, ...]
    n_simulations: int
    n_posterior_samples: int
    alpha: float
    verdict: str

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the test quantities."""
        return tuple(q.name for q in self.quantities)

    @property
    def ranks(self) -> np.ndarray:
        """All ranks, shape ``(N, Q)``."""
        return np.stack([q.ranks for q in self.quantities], axis=1)

    def __getitem__(self, name: str) -> RankCalibration:
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(f"no test quantity {name!r}; have {list(self.names)}")


@functools.lru_cache(maxsize=64)
def _band(n: int, cdf: tuple[float, ...], level: float) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz's import-time notice
        from arviz.stats.ecdf_utils import ecdf_confidence_band
    points = np.asarray(cdf)
    lower, upper = ecdf_confidence_band(n, points, points, prob=level, method="optimized")
    return np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)


def ecdf_band(
    n: int, n_posterior_samples: int, level: float = 0.95, n_eval: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ECDF band for ``n`` ranks uniform on ``{0, ..., L}``.

    Args:
        n: number of ranks.
        n_posterior_samples: ``L``.
        level: probability that the ECDF of uniform ranks stays inside the whole band.
        n_eval: at most this many evaluation points (fewer when ``L + 1`` is smaller).

    Returns:
        ``(eval_ranks, cdf, lower, upper)``: the ranks ``k`` at which the band is given, the
        uniform CDF ``(k + 1) / (L + 1)`` there, and the band's edges (as ECDF fractions).

    Example:
        >>> k, cdf, lo, hi = ecdf_band(100, 99, level=0.95, n_eval=10)
        >>> k.tolist()
        [9, 19, 29, 39, 49, 59, 69, 79, 89]
        >>> bool((lo < cdf).all() and (cdf < hi).all())
        True
    """
    n_levels = n_posterior_samples + 1
    k_points = min(int(n_eval), n_levels)
    edges = np.floor(np.arange(1, k_points) * n_levels / k_points).astype(int)
    eval_ranks = np.unique(edges) - 1
    cdf = (eval_ranks + 1) / n_levels
    lower, upper = _band(int(n), tuple(float(c) for c in cdf), float(level))
    return eval_ranks, cdf, lower, upper


def rank_calibration(
    ranks: Any, n_posterior_samples: int, *, name: str = "rank", level: float = 0.95
) -> RankCalibration:
    """Judge the uniformity of integer ranks on ``{0, ..., L}``.

    Args:
        ranks: integer ranks, shape ``(N,)``.
        n_posterior_samples: ``L``.
        name: label of the test quantity.
        level: simultaneous coverage of the ECDF band.

    Returns:
        A :class:`RankCalibration`.

    Example:
        >>> import numpy as np
        >>> ranks = np.random.default_rng(0).integers(0, 100, size=500)
        >>> rank_calibration(ranks, 99).verdict
        'calibrated'
    """
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise DiagnosticInputError(f"ranks must be 1-D, found shape {r.shape}")
    check_min_count(len(r), 2, name)
    L = int(n_posterior_samples)
    if r.min() < 0 or r.max() > L:
        raise DiagnosticInputError(
            f"ranks of {name!r} must lie in [0, {L}], found [{r.min()}, {r.max()}]"
        )
    n = len(r)
    eval_ranks, cdf, lower, upper = ecdf_band(n, L, level)
    sorted_r = np.sort(r)
    ecdf = np.searchsorted(sorted_r, eval_ranks, side="right") / n
    inside = bool(np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)))

    n_bins = int(max(2, min(20, L + 1, n // 5)))
    bin_edges = np.floor(np.linspace(0, L + 1, n_bins + 1)).astype(int)
    observed = np.histogram(r, bins=bin_edges)[0]
    expected_counts = n * np.diff(bin_edges) / (L + 1)
    chi2, chi2_p = stats.chisquare(observed, expected_counts)

    u = (r + 0.5) / (L + 1)
    var_u = ((L + 1) ** 2 - 1) / (12 * (L + 1) ** 2)
    mean_dev = float(u.mean() - 0.5)
    spread_ratio = float(np.mean((u - 0.5) ** 2) / var_u)
    z_mean = mean_dev / np.sqrt(var_u / n)
    # Var((U - 1/2)^2) = 1/80 - 1/144 = 1/180 for a continuous uniform U.
    z_spread = (np.mean((u - 0.5) ** 2) - var_u) / np.sqrt(1 / 180 / n)
    if inside:
        shape = "none"
    elif abs(z_mean) >= abs(z_spread):
        shape = "biased low" if z_mean > 0 else "biased high"
    else:
        shape = "overconfident" if z_spread > 0 else "underconfident"
    return RankCalibration(
        name=name,
        ranks=r.astype(np.int64),
        n_posterior_samples=L,
        eval_ranks=eval_ranks,
        ecdf=ecdf,
        expected=cdf,
        band_lower=lower,
        band_upper=upper,
        band_level=float(level),
        chi2=float(chi2),
        chi2_p_value=float(chi2_p),
        n_bins=n_bins,
        mean_rank_deviation=mean_dev,
        spread_ratio=spread_ratio,
        verdict="calibrated" if inside else "miscalibrated",
        shape=shape,
    )


def sbc(
    theta: Any,
    x: Any,
    posterior: BatchedSampler | Any,
    *,
    n_posterior_samples: int = 1000,
    test_quantities: Mapping[str, TestQuantity] | None = None,
    marginals: bool = True,
    parameter_names: Sequence[str] | None = None,
    alpha: float = 0.05,
    batch_size: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
) -> SBCResult:
    r"""Simulation-based calibration of a posterior over many simulated observations.

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)``.
        posterior: a batched sampler ``sample(x (B, D_x), n) -> (n, B, D)``, or precomputed
            posterior draws of shape ``(L, N, D)``.
        n_posterior_samples: ``L`` when ``posterior`` is a sampler.
        test_quantities: extra named quantities ``f(θ (L, B, D), x (B, D_x)) -> (L, B)``, for
            example ``lambda th, x: posterior_log_prob(th, x)`` or a (surrogate)
            log-likelihood; they must broadcast over the leading dimension.
        marginals: include one quantity per parameter.
        parameter_names: names of the marginals (default ``theta[0]``, ``theta[1]``, ...).
        alpha: overall level of the uniformity checks.
        batch_size: observations per call of the sampler.
        seed: seeds the randomised tie-breaking of the ranks.
        progress: show a progress bar (``None``: on a TTY unless ``TQDM_DISABLE`` is set).

    Returns:
        An :class:`SBCResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.randn(200, 1, generator=g)
        >>> x = theta + torch.randn(200, 1, generator=g)
        >>> def exact(x, n):  # posterior N(x / 2, 1 / 2)
        ...     return x / 2 + 0.5**0.5 * torch.randn(n, *x.shape, generator=g)
        >>> sbc(theta, x, exact, n_posterior_samples=99).verdict
        'calibrated'
    """
    theta_t, x_t = check_pairs(theta, x, what="sbc")
    check_level(alpha)
    n, dim = theta_t.shape
    names = list(parameter_names) if parameter_names is not None else None
    if names is not None and len(names) != dim:
        raise DiagnosticInputError(f"parameter_names must have {dim} entries, found {len(names)}")
    marginal_names = (
        [names[d] if names else f"theta[{d}]" for d in range(dim)] if marginals else []
    )
    quantities: dict[str, TestQuantity] = {}
    for key, fn in (test_quantities or {}).items():
        if key in quantities or key in marginal_names:
            raise DiagnosticInputError(f"test quantity name {key!r} is used twice")
        if not callable(fn):
            raise DiagnosticInputError(
                f"test quantity {key!r} must be callable, found {type(fn).__name__}"
            )
        quantities[key] = fn
    if not quantities and not marginal_names:
        raise DiagnosticInputError("sbc needs at least one test quantity, found none")

    generator = stream(seed, "ranks")
    ranks = {key: np.empty(n, dtype=np.int64) for key in [*marginal_names, *quantities]}
    n_draws = None
    for start, stop, draws in posterior_chunks(
        posterior, x_t, n_posterior_samples, batch_size, dim, progress, "SBC"
    ):
        n_draws = draws.shape[0]
        # Work where the draws live (a CUDA posterior stays on the GPU); results come back.
        th_true = theta_t[start:stop].to(draws.device, draws.dtype).unsqueeze(0)
        xb = x_t[start:stop].to(draws.device)
        with torch.no_grad():
            if marginal_names:
                # All marginals in one pass over the (L, B, D) draws.
                r = randomized_ranks(draws, th_true[0], generator).cpu().numpy()
                for d, key in enumerate(marginal_names):
                    ranks[key][start:stop] = r[:, d]
            for key, fn in quantities.items():
                f_draws = evaluate_quantity(fn, draws, xb, key)
                f_true = evaluate_quantity(fn, th_true, xb, key)[0]
                r = randomized_ranks(f_draws, f_true.to(f_draws.dtype), generator)
                ranks[key][start:stop] = r.cpu().numpy()
    level = 1.0 - alpha / len(ranks)
    results = tuple(
        rank_calibration(values, n_draws, name=key, level=level) for key, values in ranks.items()
    )
    ok = all(q.verdict == "calibrated" for q in results)
    return SBCResult(
        quantities=results,
        n_simulations=n,
        n_posterior_samples=int(n_draws),
        alpha=float(alpha),
        verdict="calibrated" if ok else "miscalibrated",
    )
