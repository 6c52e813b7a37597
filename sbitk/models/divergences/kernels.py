r"""Kernels on :math:`\mathbb{R}^D` for the MMD, their Gram matrices, and the median heuristic.

With :math:`r = \lVert x - y \rVert` and a bandwidth :math:`\sigma > 0`:

.. math::

    k_\text{gaussian}(x, y) = e^{-r^2 / 2\sigma^2}, \qquad
    k_\text{imq}(x, y) = \bigl(1 + r^2 / \sigma^2\bigr)^{-1/2}, \qquad
    k_\text{laplace}(x, y) = e^{-r / \sigma}.

All three are characteristic, so the MMD they induce vanishes only between equal
distributions; the inverse multiquadric has heavy tails and keeps a gradient far from the data
(Gorham & Mackey 2017).

References:
    Gorham & Mackey (2017), "Measuring sample quality with kernels", ICML, arXiv:1703.01717.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError

#: Kernels :func:`kernel_matrix` and :func:`~sbitk.models.divergences.mmd` know, by name.
KERNELS = ("gaussian", "imq", "laplace")


def sq_dist(a: Tensor, b: Tensor) -> Tensor:
    r"""Squared Euclidean distances :math:`\lVert a_i - b_j \rVert^2` between rows, (N, M).

    Computed as :math:`|a|^2 + |b|^2 - 2 a b^\top` (one matrix product), clamped at 0.

    Example:
        >>> sq_dist(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([[25.,  1.]])
    """
    d = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
    return d.clamp_min_(0.0)


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


def check_kernel(kernel: str, bandwidth: float | Tensor | Sequence[float], like: Tensor) -> Tensor:
    """``bandwidth`` as a 1-D tensor of positive values, after checking the kernel's name."""
    if kernel not in KERNELS:
        raise SbitkError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    sigma = torch.as_tensor(bandwidth, dtype=like.dtype, device=like.device).reshape(-1)
    if sigma.numel() == 0 or not bool((sigma > 0).all()):
        raise SbitkError(f"kernel bandwidths must be > 0, got {bandwidth!r}")
    return sigma


def kernel_matrix(
    a: Tensor,
    b: Tensor,
    kernel: str = "gaussian",
    bandwidth: float | Tensor | Sequence[float] = 1.0,
) -> Tensor:
    r"""The Gram matrix :math:`k(a_i, b_j)`, (N, M); several bandwidths average their kernels.

    Args:
        a: Points (N, D).
        b: Points (M, D).
        kernel: One of :data:`KERNELS`.
        bandwidth: :math:`\sigma`, or several (a multi-scale kernel).

    Returns:
        The (N, M) matrix, differentiable in ``a``, ``b`` and ``bandwidth``.

    Example:
        >>> kernel_matrix(torch.zeros(1, 1), torch.ones(1, 1), "laplace", 0.5)
        tensor([[0.1353]])
    """
    sigma = check_kernel(kernel, bandwidth, a).reshape(-1, 1, 1)
    if kernel == "gaussian":
        sq = torch.cdist(a, b).square().unsqueeze(0)
        return torch.exp(-sq / (2 * sigma**2)).mean(0)
    if kernel == "imq":
        return torch.rsqrt(1.0 + sq_dist(a, b).unsqueeze(0) / sigma**2).mean(0)
    return torch.exp(-torch.cdist(a, b).unsqueeze(0) / sigma).mean(0)


def gaussian_kernel_means(a: Tensor, b: Tensor, bandwidth: float, chunk: int = 4096) -> Tensor:
    r"""Row means :math:`\frac1M \sum_j e^{-\lVert a_i - b_j \rVert^2 / 2\sigma^2}`, (N,).

    Computed ``chunk`` rows of ``a`` at a time, so memory stays :math:`O(\text{chunk} \cdot M)`.

    Example:
        >>> gaussian_kernel_means(torch.zeros(2, 1), torch.zeros(3, 1), 1.0)
        tensor([1., 1.])
    """
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    for s in range(0, a.shape[0], chunk):
        out[s : s + chunk] = torch.exp(-gamma * sq_dist(a[s : s + chunk], b)).mean(1)
    return out


__all__ = [
    "KERNELS",
    "check_kernel",
    "gaussian_kernel_means",
    "kernel_matrix",
    "median_bandwidth",
    "sq_dist",
]
