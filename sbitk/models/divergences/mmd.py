r"""The maximum mean discrepancy between two samples, and its permutation form.

.. math::

    \mathrm{MMD}^2(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y') - 2\,\mathbb{E}\,k(x, y),
    \qquad x, x' \sim P,\; y, y' \sim Q.

References:
    Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), "A kernel two-sample test", JMLR 13
    (arXiv:0805.2368).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.divergences.kernels import check_kernel, kernel_matrix, median_bandwidth


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
        kernel: ``"gaussian"`` :math:`e^{-r^2/2\sigma^2}`, ``"imq"``
            :math:`(1 + r^2/\sigma^2)^{-1/2}` or ``"laplace"`` :math:`e^{-r/\sigma}`, with
            :math:`r = \lVert x - y \rVert` (see :mod:`~sbitk.models.divergences.kernels`).
        bandwidth: :math:`\sigma`; several values average their kernels (a multi-scale kernel);
            ``None``: :func:`median_bandwidth` of the pooled samples (not differentiated).
        unbiased: The U-statistic (mean zero under :math:`P = Q`; may be negative) or the
            V-statistic (non-negative, biased upwards by about :math:`1/n + 1/m`).

    Returns:
        A scalar tensor, :math:`\widehat{\mathrm{MMD}}^2`.

    References:
        Gretton et al. (2012), "A kernel two-sample test", JMLR 13, arXiv:0805.2368.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> x = torch.randn(200, 3, generator=g)
        >>> float(mmd(x, x, unbiased=False))
        0.0
        >>> float(mmd(x, x + 1.0, kernel="imq")) > 0.05
        True
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise SbitkError(
            f"mmd: expected samples (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise SbitkError(f"mmd: needs at least 2 rows on each side, got {n} and {m}")
    if bandwidth is None:
        bandwidth = median_bandwidth(x.detach(), y.detach())
    try:
        sigma = check_kernel(kernel, bandwidth, x)
    except SbitkError as err:
        raise SbitkError(f"mmd: {err}") from None
    kxx, kyy = kernel_matrix(x, x, kernel, sigma), kernel_matrix(y, y, kernel, sigma)
    kxy = kernel_matrix(x, y, kernel, sigma)
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return xx + yy - 2 * kxy.mean()


def mmd_from_labels(k: Tensor, labels: Tensor, m: int) -> Tensor:
    r"""The unbiased :math:`\widehat{\mathrm{MMD}}^2` of many splits of one pooled sample.

    With the pooled Gram matrix :math:`K` (its diagonal set to zero) and a 0/1 labelling
    :math:`a` of the rows (group A: the :math:`m` ones; group B, :math:`b = 1 - a`: the other
    :math:`n`), the off-diagonal sums are quadratic forms, :math:`S_{AA} = a^\top K a`,
    :math:`S_{AB} = a^\top K b`, :math:`S_{BB} = b^\top K b`, so one matrix product scores
    every labelling of a permutation test at once.

    Args:
        k: Pooled Gram matrix (n + m, n + m) with a zero diagonal.
        labels: Labellings (P, n + m), each with exactly ``m`` ones.
        m: Size of group A.

    Returns:
        The (P,) statistics, one per labelling.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [3.0], [3.1]])
        >>> k = kernel_matrix(x, x).fill_diagonal_(0.0)
        >>> labels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
        >>> torch.allclose(mmd_from_labels(k, labels, 2)[0], mmd(x[:2], x[2:], bandwidth=1.0))
        True
    """
    n = k.shape[0] - m
    if m < 2 or n < 2 or labels.shape[-1] != k.shape[0]:
        raise SbitkError(
            f"mmd_from_labels: needs 2 or more rows per group and labels (P, {k.shape[0]}), "
            f"got m={m}, n={n}, labels {tuple(labels.shape)}"
        )
    a, b = labels, 1.0 - labels
    ka = a @ k
    s_aa = (ka * a).sum(1)
    s_ab = (ka * b).sum(1)
    s_bb = ((b @ k) * b).sum(1)
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2.0 * s_ab / (m * n)


__all__ = ["mmd", "mmd_from_labels"]
