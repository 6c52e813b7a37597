r"""Could the simulator have produced this observation? MMD and typicality tests.

**MMD test.** With a Gaussian kernel :math:`k` on standardised data (or on a learned summary
:math:`s(x)`), the squared maximum mean discrepancy between an observation set
:math:`X_o = \{x_{o,1..m}\}` and simulations :math:`R = \{r_{1..n}\}` is

.. math::

    \mathrm{MMD}^2(X_o, R) = \overline{k(X_o, X_o)} - 2\,\overline{k(X_o, R)}
        + \overline{k(R, R)} .

*Per observation* (:math:`m = 1`) the simulations are split once: a reference set :math:`R`
enters the statistic, and a disjoint calibration set :math:`H` gives the null draws
:math:`\mathrm{MMD}^2(\{h\}, R)`, :math:`h \in H`. A well-specified observation is exchangeable
with every :math:`h` given :math:`R`, so the p-value
:math:`(1 + \#\{h : \mathrm{MMD}^2(h) \ge \mathrm{MMD}^2(x_o)\}) / (1 + |H|)` is valid, and it
stays valid for every one of many observations tested against the same sets. The common
alternative, drawing null subsets from the reference set itself, compares points *inside*
:math:`R` with :math:`R` (each sees its own kernel peak), which makes the null too small and
the test anti-conservative, increasingly so when many observations are screened.

*As a set* (:math:`m > 1`, ``per_observation=False``) the test is a permutation test of the
unbiased statistic between :math:`X_o` and :math:`R`, exact under exchangeability.

**Typicality test.** Given a model of the data with a log-density (a flow fitted to the bank's
:math:`x` as a learned evidence :math:`p(x)`, or a surrogate likelihood at fixed θ) and samples
from that model, the p-value of :math:`\log p(x_o)` is two-sided against the distribution of
:math:`\log p(x)` for :math:`x` from the model: in high dimensions an observation whose density
is *too high* is as atypical as one whose density is too low (typical-set argument, Nalisnick
et al. 2019).

References:
    Gretton et al. (2012), "A kernel two-sample test", JMLR 13.
    Schmitt et al. (2023), "Detecting model misspecification in amortized Bayesian inference
    with neural networks", arXiv:2112.08866.
    Nalisnick et al. (2019), "Detecting out-of-distribution inputs to deep generative models
    using typicality", arXiv:1906.02994.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbitk.diagnostics._checks import DiagnosticInputError, check_level, check_min_count
from sbitk.diagnostics._sampling import as_tensor, check_finite_tensor, stream
from sbitk.models.divergences import (
    gaussian_kernel_means,
    median_bandwidth,
    mmd_from_labels,
    sq_dist,
)
from sbitk.nn.devices import module_device

__all__ = [
    "MMDResult",
    "ObservationVerdict",
    "TypicalityResult",
    "mmd_test",
    "typicality_test",
]


@dataclass(frozen=True)
class ObservationVerdict:
    """Whether one observation looks like something the simulator (or model) produces.

    Attributes:
        index: row of the observation in the input.
        test: ``"mmd"`` or ``"typicality"``.
        statistic: the test statistic of this observation.
        p_value: its p-value (small = atypical).
        alpha: level of the test.
        flagged: ``p_value < alpha``.
        verdict: ``"well-specified"`` or a short reason it was flagged.
    """

    index: int
    test: str
    statistic: float
    p_value: float
    alpha: float
    flagged: bool
    verdict: str


@dataclass(frozen=True)
class MMDResult:
    """MMD misspecification test.

    Attributes:
        observations: one :class:`ObservationVerdict` per observation (per-observation mode),
            or a single one for the whole set.
        mmd2: squared MMD of each tested unit, shape ``(K,)``.
        null: null draws of the squared MMD, shape ``(n_null,)``.
        bandwidth: the Gaussian kernel's bandwidth (median heuristic on the reference set).
        n_reference: size of the reference set in the statistic.
        n_null: number of null draws (calibration simulations or permutations).
        space: ``"standardised data"`` or ``"embedding"``.
        method: ``"held-out calibration"`` or ``"permutation"``.
        alpha: level of the test.
        flagged_fraction: fraction of tested units flagged.
    """

    observations: tuple[ObservationVerdict, ...]
    mmd2: np.ndarray
    null: np.ndarray
    bandwidth: float
    n_reference: int
    n_null: int
    space: str
    method: str
    alpha: float
    flagged_fraction: float

    @property
    def p_values(self) -> np.ndarray:
        """p-value of each tested unit."""
        return np.array([o.p_value for o in self.observations])


@dataclass(frozen=True)
class TypicalityResult:
    """Two-sided typicality test of observations under a model with a log-density.

    Attributes:
        observations: one :class:`ObservationVerdict` per observation.
        log_prob: ``log p(x_o)`` of each observation.
        reference_log_prob: ``log p(x)`` of the model's own samples.
        alpha: level of the test.
        flagged_fraction: fraction of observations flagged.
    """

    observations: tuple[ObservationVerdict, ...]
    log_prob: np.ndarray
    reference_log_prob: np.ndarray
    alpha: float
    flagged_fraction: float

    @property
    def p_values(self) -> np.ndarray:
        """p-value of each observation."""
        return np.array([o.p_value for o in self.observations])


def _rows(value: Any, name: str, absent: bool = False) -> Tensor:
    """``value`` as (n, D_x) float64 rows, finite; with ``absent``, NaN marks an absent value,
    each row keeping at least one."""
    t = as_tensor(value, name).to("cpu", torch.float64)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise DiagnosticInputError(f"{name} must have shape (n, D_x), found {tuple(t.shape)}")
    if absent and bool(torch.isnan(t).any()):
        if bool(torch.isinf(t).any()) or bool(torch.isnan(t).all(1).any()):
            raise DiagnosticInputError(
                f"{name} must be finite where present (NaN: an absent value), with at least "
                "one value present in each row"
            )
        return t
    check_finite_tensor(t, name)
    return t


def mmd_test(
    observations: Any,
    simulations: Any,
    *,
    embedding: Callable[[Tensor], Tensor] | None = None,
    per_observation: bool = True,
    n_reference: int | None = None,
    n_permutations: int = 1000,
    bandwidth: float | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> MMDResult:
    """MMD test of observations against simulations, with a null that keeps its level.

    Args:
        observations: observed data, shape ``(m, D_x)`` or ``(D_x,)``.
        simulations: data simulated from the prior predictive, shape ``(M, D_x)``.
        embedding: optional learned summary ``s(x (n, D_x)) -> (n, S)`` (for instance an
            estimator's embedding net), called on CPU tensors of the default dtype; the test
            runs on standardised summaries.
        per_observation: test each observation on its own against a held-out calibration
            set (default), or the whole set at once by permutation.
        n_reference: size of the reference set (default: half the simulations, at most
            2,000 in set mode); the rest calibrates the null in per-observation mode.
        n_permutations: permutations of the set test.
        bandwidth: Gaussian kernel bandwidth (default: median pairwise distance in the
            reference set).
        alpha: level of the test.
        seed: seeds the split and the permutations.

    Returns:
        An :class:`MMDResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> sims = torch.randn(2000, 3, generator=g)
        >>> obs = torch.stack([torch.zeros(3), torch.full((3,), 5.0)])
        >>> [o.flagged for o in mmd_test(obs, sims).observations]
        [False, True]
    """
    check_level(alpha)
    x_o = _rows(observations, "observations", absent=per_observation and embedding is None)
    sims = _rows(simulations, "simulations")
    if x_o.shape[1] != sims.shape[1]:
        raise DiagnosticInputError(
            f"observations and simulations must have the same dimension, found "
            f"{x_o.shape[1]} and {sims.shape[1]}"
        )
    space = "standardised data"
    if embedding is not None:
        if not callable(embedding):
            raise DiagnosticInputError(
                f"embedding must be callable, found {type(embedding).__name__}"
            )
        with torch.no_grad():
            on = (module_device(embedding), torch.get_default_dtype())
            x_o = _rows(embedding(x_o.to(*on)), "embedding(observations)")
            sims = _rows(embedding(sims.to(*on)), "embedding(simulations)")
        space = "embedding"

    generator = stream(seed, "split")
    order = torch.randperm(sims.shape[0], generator=generator)
    m = x_o.shape[0]
    if per_observation:
        check_min_count(sims.shape[0], 20, "mmd_test simulations")
        n_ref = int(n_reference) if n_reference is not None else sims.shape[0] // 2
        if not 2 <= n_ref <= sims.shape[0] - 1 / alpha:
            raise DiagnosticInputError(
                f"n_reference must leave at least 1/alpha = {math.ceil(1 / alpha)} "
                f"calibration simulations, found n_reference={n_ref} of {sims.shape[0]}"
            )
    else:
        check_min_count(m, 2, "mmd_test observations (set mode)")
        n_ref = int(n_reference) if n_reference is not None else min(sims.shape[0], 2000)
        if not 2 <= n_ref <= sims.shape[0]:
            raise DiagnosticInputError(
                f"n_reference must lie in [2, {sims.shape[0]}], found {n_ref}"
            )
    ref = sims[order[:n_ref]]
    mean, std = ref.mean(0), ref.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    ref = (ref - mean) / std
    x_o = (x_o - mean) / std

    if bandwidth is None:
        bw = float(median_bandwidth(ref, max_rows=1000))
    else:
        if not bandwidth > 0:
            raise DiagnosticInputError(f"bandwidth must be positive, found {bandwidth}")
        bw = float(bandwidth)

    if per_observation:
        cal = (sims[order[n_ref:]] - mean) / std
        stat, null, p = _held_out_test(x_o, ref, cal, bw)
        method = "held-out calibration"
        stat_np = stat.numpy()
    else:
        pooled = torch.cat([x_o, ref])
        k = torch.exp(-sq_dist(pooled, pooled) * (1.0 / (2.0 * bw * bw)))
        k.fill_diagonal_(0.0)
        n_tot = pooled.shape[0]
        labels = torch.zeros(int(n_permutations) + 1, n_tot, dtype=torch.float64)
        labels[0, :m] = 1.0
        for i in range(1, int(n_permutations) + 1):
            labels[i, torch.randperm(n_tot, generator=generator)[:m]] = 1.0
        stats_all = mmd_from_labels(k, labels, m)
        stat_np = stats_all[:1].numpy()
        null = stats_all[1:]
        p = np.array([float((1 + (null >= stats_all[0]).sum()) / (1 + null.shape[0]))])
        method = "permutation"

    verdicts = tuple(
        ObservationVerdict(
            index=i,
            test="mmd",
            statistic=float(stat_np[i]),
            p_value=float(p[i]),
            alpha=float(alpha),
            flagged=bool(p[i] < alpha),
            verdict="misspecified" if p[i] < alpha else "well-specified",
        )
        for i in range(len(p))
    )
    return MMDResult(
        observations=verdicts,
        mmd2=np.asarray(stat_np),
        null=null.numpy(),
        bandwidth=bw,
        n_reference=n_ref,
        n_null=int(null.shape[0]),
        space=space,
        method=method,
        alpha=float(alpha),
        flagged_fraction=float(np.mean(p < alpha)),
    )


def _held_out_test(
    x_o: Tensor, ref: Tensor, cal: Tensor, bw: float
) -> tuple[Tensor, Tensor, np.ndarray]:
    """Each observation's squared MMD to the reference set, the null of the same statistic
    over the calibration rows, and the p-values.

    An observation with absent values (NaN: trials left out) is tested on the columns it has,
    its reference and calibration rows cut to the same columns, which keeps the level: the
    statistic and its null are then one function of those columns. The null returned is the
    one of the complete rows (of the first rows' columns when no row is complete).
    """
    stat = torch.empty(x_o.shape[0], dtype=torch.float64)
    p = np.empty(x_o.shape[0])
    present = ~torch.isnan(x_o)
    nulls: dict[tuple[bool, ...], Tensor] = {}
    for cols in torch.unique(present, dim=0):
        rows = (present == cols).all(1)
        r = ref[:, cols]
        # k(x, x) = 1 and the R-R term are shared by every unit, so they cancel in the
        # p-value; they are kept so that the reported values are the actual MMD^2.
        k_rr = gaussian_kernel_means(r, r, bw).mean()
        stat[rows] = 1.0 + k_rr - 2.0 * gaussian_kernel_means(x_o[rows][:, cols], r, bw)
        null = 1.0 + k_rr - 2.0 * gaussian_kernel_means(cal[:, cols], r, bw)
        n_ge = null.shape[0] - torch.searchsorted(torch.sort(null).values, stat[rows])
        p[rows.numpy()] = ((1.0 + n_ge.to(torch.float64)) / (1.0 + null.shape[0])).numpy()
        nulls[tuple(cols.tolist())] = null
    complete = (True,) * x_o.shape[1]
    return stat, nulls.get(complete, nulls[tuple(present[0].tolist())]), p


def typicality_test(
    observations: Any,
    log_prob: Callable[[Tensor], Tensor],
    model_samples: Any,
    *,
    alpha: float = 0.05,
    batch_size: int = 10_000,
) -> TypicalityResult:
    """Two-sided typicality test of observations under a model's log-density.

    Args:
        observations: observed data, shape ``(m, D_x)`` or ``(D_x,)``.
        log_prob: the model's log-density ``log p(x (n, D_x)) -> (n,)``: a learned evidence
            (a flow fitted to the bank's x) or a surrogate likelihood at fixed θ.
        model_samples: samples from the same model, shape ``(M, D_x)``; they give the
            distribution of ``log p(x)`` under the model.
        alpha: level of the test.
        batch_size: rows per call of ``log_prob``.

    Returns:
        A :class:`TypicalityResult`; the p-value is
        ``min(1, 2 min(P(L <= l_o), P(L >= l_o)))`` with ``L = log p(x)``, ``x`` from the
        model, each tail counted with one added so that a p-value is never zero.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> model = torch.distributions.MultivariateNormal(torch.zeros(50), torch.eye(50))
        >>> samples = model.sample((2000,))
        >>> obs = torch.stack([samples[0] * 0 + 0.1, torch.randn(50, generator=g)])
        >>> [o.verdict for o in typicality_test(obs, model.log_prob, samples).observations]
        ['too typical (density too high)', 'well-specified']
    """
    check_level(alpha)
    x_o = _rows(observations, "observations")
    ref = _rows(model_samples, "model_samples")
    if x_o.shape[1] != ref.shape[1]:
        raise DiagnosticInputError(
            f"observations and model_samples must have the same dimension, found "
            f"{x_o.shape[1]} and {ref.shape[1]}"
        )
    check_min_count(ref.shape[0], math.ceil(2 / alpha), "typicality_test model_samples")
    if not callable(log_prob):
        raise DiagnosticInputError(f"log_prob must be callable, found {type(log_prob).__name__}")

    def evaluate(x: Tensor, name: str) -> Tensor:
        parts = []
        on = (module_device(log_prob), torch.get_default_dtype())
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                out = as_tensor(log_prob(x[s : s + batch_size].to(*on)), name)
                parts.append(out.reshape(-1).to("cpu", torch.float64))
        lp = torch.cat(parts)
        if lp.shape[0] != x.shape[0]:
            raise DiagnosticInputError(
                f"log_prob must return one value per row, found {lp.shape[0]} for "
                f"{x.shape[0]} rows"
            )
        return lp

    lp_ref = evaluate(ref, "log_prob(model_samples)")
    check_finite_tensor(lp_ref, "log_prob(model_samples)")
    lp_o = evaluate(x_o, "log_prob(observations)")
    ref_sorted = torch.sort(lp_ref).values
    n = ref_sorted.shape[0]
    n_le = torch.searchsorted(ref_sorted, lp_o, right=True).to(torch.float64)
    n_ge = n - torch.searchsorted(ref_sorted, lp_o, right=False).to(torch.float64)
    low = (1.0 + n_le) / (1.0 + n)
    high = (1.0 + n_ge) / (1.0 + n)
    p = torch.clamp(2.0 * torch.minimum(low, high), max=1.0)
    # -inf log-density (outside the model's support) is as atypical as it gets.
    p = torch.where(torch.isfinite(lp_o), p, torch.full_like(p, 1.0 / (1.0 + n)))
    verdicts = []
    for i in range(x_o.shape[0]):
        flagged = bool(p[i] < alpha)
        if not flagged:
            reason = "well-specified"
        elif low[i] <= high[i]:
            reason = "atypical (density too low)"
        else:
            reason = "too typical (density too high)"
        verdicts.append(
            ObservationVerdict(
                index=i,
                test="typicality",
                statistic=float(lp_o[i]),
                p_value=float(p[i]),
                alpha=float(alpha),
                flagged=flagged,
                verdict=reason,
            )
        )
    return TypicalityResult(
        observations=tuple(verdicts),
        log_prob=lp_o.numpy(),
        reference_log_prob=lp_ref.numpy(),
        alpha=float(alpha),
        flagged_fraction=float((p < alpha).to(torch.float64).mean()),
    )
