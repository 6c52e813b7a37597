r"""Divergences between two sets of samples, and a scoring rule, for models that offer samples
only.

The maximum mean discrepancy (MMD) between distributions :math:`P` and :math:`Q` with a kernel
:math:`k` is the distance between their mean embeddings in the kernel's feature space,

.. math::

    \mathrm{MMD}^2(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y') - 2\,\mathbb{E}\,k(x, y),
    \qquad x, x' \sim P,\; y, y' \sim Q,

zero if and only if :math:`P = Q` for a characteristic kernel such as the Gaussian
:math:`k(x, y) = \exp(-\lVert x - y \rVert^2 / 2\sigma^2)`. Its unbiased estimator (a
U-statistic) leaves the diagonal terms :math:`k(x_i, x_i)` out, so its mean is exactly zero
when both samples come from one distribution (it may then be negative).

The MMD compares two samples of one joint distribution; it sees a conditional model
:math:`q(a \mid c)` only through the pairs :math:`[a, c]`, where the spread of :math:`c` hides
errors of :math:`q` at each :math:`c`. The energy score (:func:`energy_score`) instead scores
draws of :math:`q(\cdot \mid c_i)` against the one observed :math:`a_i` at each :math:`c_i`: a
strictly proper scoring rule, so its expectation over the pairs is smallest exactly when
:math:`q(\cdot \mid c) = p(\cdot \mid c)` (for almost every :math:`c`).

References:
    Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), "A kernel two-sample test", JMLR 13
    (arXiv:0805.2368).
    Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation",
    JASA 102(477), 359-378.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    >>> abs(float(mmd(x, y))) < 0.01, float(mmd(x, y + 1.0)) > 0.1
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError

#: Kernels :func:`mmd` knows, by name.
KERNELS = ("gaussian",)


def median_bandwidth(x: Tensor, y: Tensor | None = None, max_rows: int = 2000) -> Tensor:
    r"""The median heuristic: the median Euclidean distance between distinct rows.

    Args:
        x: Samples (N, D).
        y: More samples (M, D), pooled with ``x``; or ``None``.
        max_rows: Use at most this many rows of the pool (its first ones), to bound the
            :math:`O(n^2)` cost.

    Returns:
        A positive scalar tensor :math:`\sigma` (1 where every distance is zero).

    Example:
        >>> median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]]))
        tensor(2.)
    """
    pool = x if y is None else torch.cat([x, y])
    pool = pool.reshape(pool.shape[0], -1)[:max_rows]
    n = pool.shape[0]
    if n < 2:
        raise SbitkError(f"median_bandwidth needs at least 2 rows, got {n}")
    dist = torch.cdist(pool, pool)
    rows, cols = torch.triu_indices(n, n, offset=1, device=pool.device)
    # The lower median, so that the bandwidth is one of the distances.
    sigma = dist[rows, cols].median()
    return torch.where(sigma > 0, sigma, torch.ones_like(sigma))


def _gaussian_gram(a: Tensor, b: Tensor, bandwidths: Tensor) -> Tensor:
    """The mean over bandwidths of the Gaussian kernel matrices between rows of a and b."""
    sq = torch.cdist(a, b).square().unsqueeze(0)
    return torch.exp(-sq / (2 * bandwidths.reshape(-1, 1, 1) ** 2)).mean(0)


def mmd(
    x: Tensor,
    y: Tensor,
    kernel: str = "gaussian",
    bandwidth: float | Tensor | Sequence[float] | None = None,
    unbiased: bool = True,
) -> Tensor:
    r"""The squared maximum mean discrepancy between the samples ``x`` and ``y``.

    .. math::

        \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)} \sum_{i \ne j} k(x_i, x_j)
            + \frac{1}{m(m-1)} \sum_{i \ne j} k(y_i, y_j)
            - \frac{2}{nm} \sum_{i, j} k(x_i, y_j),

    the biased (V-statistic) version keeping the terms :math:`i = j` and dividing by
    :math:`n^2` and :math:`m^2`. It is differentiable in ``x`` and ``y``.

    Args:
        x: Samples (N, D) of one distribution.
        y: Samples (M, D) of the other.
        kernel: ``"gaussian"``, :math:`k(x, y) = \exp(-\lVert x - y \rVert^2 / 2\sigma^2)`.
        bandwidth: :math:`\sigma`; several values average their kernels (a multi-scale kernel);
            ``None``: :func:`median_bandwidth` of the pooled samples (not differentiated).
        unbiased: The U-statistic (mean zero under :math:`P = Q`; may be negative) or the
            V-statistic (non-negative, biased upwards by about :math:`1/n + 1/m`).

    Returns:
        A scalar tensor, :math:`\widehat{\mathrm{MMD}}^2`.

    References:
        Gretton et al. (2012), "A kernel two-sample test", JMLR 13, arXiv:0805.2368.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> x = torch.randn(200, 3, generator=g)
        >>> float(mmd(x, x, unbiased=False))
        0.0
    """
    if kernel not in KERNELS:
        raise SbitkError(f"mmd: kernel must be one of {KERNELS}, got {kernel!r}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise SbitkError(
            f"mmd: expected samples (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise SbitkError(f"mmd: needs at least 2 rows on each side, got {n} and {m}")
    if bandwidth is None:
        bandwidth = median_bandwidth(x.detach(), y.detach())
    sigma = torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device)
    if not bool((sigma > 0).all()):
        raise SbitkError(f"mmd: bandwidths must be > 0, got {bandwidth!r}")
    kxx, kyy = _gaussian_gram(x, x, sigma), _gaussian_gram(y, y, sigma)
    kxy = _gaussian_gram(x, y, sigma)
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return xx + yy - 2 * kxy.mean()


def energy_score(samples: Tensor, observations: Tensor, beta: float = 1.0) -> Tensor:
    r"""The energy score of draws of a forecast against observations (lower is better).

    For a forecast distribution :math:`Q` and an observation :math:`y \in \mathbb{R}^D`,

    .. math::

        \mathrm{ES}_\beta(Q, y) = \mathbb{E}\,\lVert X - y \rVert^\beta
            - \tfrac{1}{2}\,\mathbb{E}\,\lVert X - X' \rVert^\beta,
        \qquad X, X' \sim Q \text{ independent},

    strictly proper for :math:`0 < \beta < 2` among distributions with a finite
    :math:`\beta`-th moment: :math:`\mathbb{E}_{y \sim P}\,\mathrm{ES}_\beta(Q, y)` is
    minimised by :math:`Q = P` alone (Gneiting & Raftery 2007, their eq. 22). In one dimension
    with :math:`\beta = 1` it is the CRPS. From :math:`M \ge 2` draws :math:`x_1, \dots, x_M`
    this returns the unbiased estimate

    .. math::

        \widehat{\mathrm{ES}}_\beta = \frac{1}{M} \sum_{j} \lVert x_j - y \rVert^\beta
            - \frac{1}{2M(M-1)} \sum_{j \ne k} \lVert x_j - x_k \rVert^\beta,

    differentiable in the draws (the reparameterised objective of Pacchiardi & Dutta 2022).

    Args:
        samples: Draws (M, *B, D) of the forecast at each of the *B observations.
        observations: Observations (*B, D).
        beta: The exponent :math:`\beta \in (0, 2)`.

    Returns:
        The scores (*B,).

    References:
        Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation",
        JASA 102(477), 359-378.
        Pacchiardi & Dutta (2022), "Likelihood-free inference with generative neural networks
        via scoring rule minimization", arXiv:2205.15784.

    Example:
        For a standard normal forecast the expected score over standard normal observations is
        the CRPS's :math:`1/\sqrt{\pi} \approx 0.564`; a shifted forecast scores worse:

        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randn(4000, 1, generator=g)
        >>> right = energy_score(torch.randn(50, 4000, 1, generator=g), y).mean()
        >>> wrong = energy_score(torch.randn(50, 4000, 1, generator=g) + 1.0, y).mean()
        >>> round(float(right), 2), bool(wrong > right + 0.1)
        (0.56, True)
    """
    if not 0 < beta < 2:
        raise SbitkError(f"energy_score: beta must be in (0, 2), got {beta!r}")
    m = samples.shape[0]
    if m < 2 or samples.dim() < 2 or samples.shape[1:] != observations.shape:
        raise SbitkError(
            "energy_score: expected draws (M >= 2, *B, D) and observations (*B, D), got "
            f"{tuple(samples.shape)} and {tuple(observations.shape)}"
        )
    to_obs = (samples - observations).norm(dim=-1).pow(beta)
    if m == 2:  # the usual training case, without the M x M differences
        pair_mean = (samples[0] - samples[1]).norm(dim=-1).pow(beta)
    else:
        diff = samples.unsqueeze(0) - samples.unsqueeze(1)  # (M, M, *B, D)
        eye = torch.eye(m, dtype=torch.bool, device=samples.device)
        eye = eye.reshape(m, m, *([1] * (samples.dim() - 2)))
        # The zero diagonal is left out; filling it first keeps its gradient finite.
        dist = diff.square().sum(-1).masked_fill(eye, 1.0).pow(beta / 2).masked_fill(eye, 0.0)
        pair_mean = dist.sum((0, 1)) / (m * (m - 1))
    return to_obs.mean(0) - 0.5 * pair_mean


__all__ = ["KERNELS", "energy_score", "median_bandwidth", "mmd"]
