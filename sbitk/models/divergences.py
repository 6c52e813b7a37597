r"""Divergences between two sets of samples, for models that offer samples only.

The maximum mean discrepancy (MMD) between distributions :math:`P` and :math:`Q` with a kernel
:math:`k` is the distance between their mean embeddings in the kernel's feature space,

.. math::

    \mathrm{MMD}^2(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y') - 2\,\mathbb{E}\,k(x, y),
    \qquad x, x' \sim P,\; y, y' \sim Q,

zero if and only if :math:`P = Q` for a characteristic kernel such as the Gaussian
:math:`k(x, y) = \exp(-\lVert x - y \rVert^2 / 2\sigma^2)`. Its unbiased estimator (a
U-statistic) leaves the diagonal terms :math:`k(x_i, x_i)` out, so its mean is exactly zero
when both samples come from one distribution (it may then be negative).

References:
    Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), "A kernel two-sample test", JMLR 13
    (arXiv:0805.2368).

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


__all__ = ["KERNELS", "median_bandwidth", "mmd"]
