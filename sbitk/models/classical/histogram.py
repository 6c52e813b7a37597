r"""Histogram densities: regular bins in 1-D, a density tree in several dimensions.

**Histogram.** With bins of width :math:`h` starting at :math:`x_\min` and :math:`N_l` of the
:math:`N` points in bin :math:`l`, the density is constant on each bin,

.. math::

    \hat p(x) = \frac{N_l}{N h} \quad \text{for } x \in [x_\min + (l-1)h,\; x_\min + lh).

The Freedman–Diaconis rule :math:`h = 2\,\mathrm{IQR} / N^{1/3}` balances the bias of wide bins
(:math:`\propto h`) against the noise of sparsely filled ones (:math:`\propto 1/\sqrt{Nh}`);
the interquartile range makes it robust to outliers. The :math:`L_1` error then falls as
:math:`N^{-1/3}`.

**Density tree.** A regular grid with :math:`k` bins per axis has :math:`k^D` cells: it does not
scale with the dimension. A density tree subdivides instead: the bounding box of the data is
split recursively, each time along one axis at the median of the points inside, until a cell
holds at most ``leaf_size`` points (or the depth reaches :math:`\lceil\log_2 N\rceil`). Each leaf
:math:`l` with :math:`N_l` points and volume :math:`V_l` gets density :math:`N_l / (N V_l)`, and
sampling picks a leaf with probability :math:`N_l / N`, then a uniform point in it. The
default leaf size :math:`N^{2/(2+D)}` is the occupancy of a MISE-optimal regular histogram
(bin width :math:`\propto N^{-1/(2+D)}`), which in 1-D is Freedman–Diaconis's.

References:
    Freedman & Diaconis (1981), "On the histogram as a density estimator: L2 theory",
    Z. Wahrscheinlichkeitstheorie verw. Gebiete 57, 453-476.
    Ram & Gray (2011), "Density estimation trees", KDD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.classical._checks import (
    categories,
    check_fitted,
    check_points,
    check_rows,
    sample_size,
)
from sbitk.nn.devices import random_like


def freedman_diaconis_width(x: Tensor) -> Tensor:
    r"""The Freedman–Diaconis bin width :math:`2\,\mathrm{IQR}(x) / N^{1/3}` of samples (N,).

    Example:
        >>> freedman_diaconis_width(torch.arange(8.0))
        tensor(3.5000)
    """
    q = torch.quantile(x, torch.tensor([0.25, 0.75], dtype=x.dtype, device=x.device))
    return 2.0 * (q[1] - q[0]) / x.shape[0] ** (1.0 / 3.0)


class Histogram:
    """A 1-D histogram density with Freedman–Diaconis bins.

    Args:
        bin_width: The width :math:`h`; ``None``: :func:`freedman_diaconis_width`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> hist = Histogram().fit(torch.randn(10000, 1, generator=g))
        >>> round(float(hist.log_prob(torch.zeros(1, 1)).exp()), 1)  # 1 / sqrt(2 pi) = 0.40
        0.4
    """

    def __init__(self, bin_width: float | None = None) -> None:
        if bin_width is not None and not bin_width > 0:
            raise SbitkError(f"Histogram: bin_width must be > 0, got {bin_width!r}")
        self.bin_width = bin_width
        self.edges: Tensor | None = None
        self.counts: Tensor | None = None

    def fit(self, x: Tensor) -> Histogram:
        """Bin the samples ``x`` (N, 1)."""
        x = check_rows(x, "Histogram.fit", dim=1)[:, 0]
        h = torch.as_tensor(self.bin_width) if self.bin_width else freedman_diaconis_width(x)
        lo, hi = x.min(), x.max()
        if not float(h) > 0:
            raise SbitkError("Histogram.fit: the interquartile range is 0; pass bin_width")
        n_bins = max(1, math.ceil(float((hi - lo) / h)))
        self.edges = lo + h.to(x) * torch.arange(n_bins + 1, dtype=x.dtype, device=x.device)
        idx = ((x - lo) / h).floor().long().clamp(0, n_bins - 1)
        self.counts = torch.bincount(idx, minlength=n_bins).to(x)
        return self

    @property
    def width(self) -> Tensor:
        """The bin width."""
        check_fitted(self.edges, "Histogram")
        return self.edges[1] - self.edges[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at points (..., 1); ``-inf`` outside the bins."""
        check_fitted(self.edges, "Histogram")
        x = check_points(x, "Histogram.log_prob", 1, self.edges)[..., 0]
        n_bins = self.counts.numel()
        idx = ((x - self.edges[0]) / self.width).floor().long()
        idx = torch.where(x == self.edges[-1], n_bins - 1, idx)  # the last edge is inside
        inside = (idx >= 0) & (idx < n_bins)
        dens = self.counts[idx.clamp(0, n_bins - 1)] / (self.counts.sum() * self.width)
        return torch.where(inside, dens.log(), -math.inf)

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws (*shape, 1): a bin by its count, then a uniform point in it."""
        check_fitted(self.edges, "Histogram")
        shape, n = sample_size(shape)
        bins = categories(self.counts, n, generator)
        u = random_like(torch.rand, (n,), self.edges, generator)
        return (self.edges[bins] + u * self.width).reshape(*shape, 1)


class DensityTree:
    """A density tree: recursive median splits of the data's bounding box.

    Args:
        leaf_size: Most points per leaf; ``None``: :math:`\\lceil N^{2/(2+D)} \\rceil`.
        max_depth: Deepest split; ``None``: :math:`\\lceil \\log_2 N \\rceil`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> tree = DensityTree().fit(torch.rand(4000, 2, generator=g))
        >>> round(float(tree.log_prob(torch.full((1, 2), 0.5)).exp()), 0)  # uniform: 1
        1.0
    """

    def __init__(self, leaf_size: int | None = None, max_depth: int | None = None) -> None:
        if (leaf_size is not None and leaf_size < 1) or (max_depth is not None and max_depth < 0):
            raise SbitkError(
                f"DensityTree: needs leaf_size >= 1 and max_depth >= 0, got {leaf_size!r} and "
                f"{max_depth!r}"
            )
        self.leaf_size, self.max_depth = leaf_size, max_depth
        self.leaf_lo: Tensor | None = None

    def fit(self, x: Tensor) -> DensityTree:
        """Grow the tree on samples ``x`` (N, D)."""
        x = check_rows(x, "DensityTree.fit")
        n, d = x.shape
        leaf_size = self.leaf_size or math.ceil(n ** (2.0 / (2.0 + d)))
        max_depth = self.max_depth if self.max_depth is not None else math.ceil(math.log2(n))
        lo, hi = x.min(0).values, x.max(0).values
        if not bool((hi > lo).all()):
            raise SbitkError("DensityTree.fit: every dimension needs spread, one has none")
        nodes, leaves = self._grow(x, lo, hi, leaf_size, max_depth)
        as_long = dict(dtype=torch.long, device=x.device)
        self.dims, self.left, self.right, self.leaf_of = (
            torch.tensor([node[i] for node in nodes], **as_long) for i in (0, 2, 3, 4)
        )
        self.thresholds = torch.tensor([node[1] for node in nodes], dtype=x.dtype, device=x.device)
        self.leaf_lo = torch.stack([leaf[0] for leaf in leaves])
        self.leaf_hi = torch.stack([leaf[1] for leaf in leaves])
        self.counts = torch.tensor([leaf[2] for leaf in leaves], dtype=x.dtype, device=x.device)
        self.depth = max_depth
        return self

    def _grow(
        self, x: Tensor, lo: Tensor, hi: Tensor, leaf_size: int, max_depth: int
    ) -> tuple[list[list], list[tuple]]:
        """Nodes ``[split dim (-1: leaf), threshold, left, right, leaf index (-1: inner)]`` and
        leaves ``(box low, box high, count)``, depth first."""
        nodes: list[list] = []
        leaves: list[tuple] = []
        stack = [(torch.arange(x.shape[0], device=x.device), lo, hi, 0, None)]
        while stack:
            rows, box_lo, box_hi, depth, parent = stack.pop()
            if parent is not None:
                nodes[parent[0]][parent[1]] = len(nodes)
            small = rows.numel() <= leaf_size or depth >= max_depth
            split = None if small else self._split(x[rows], box_lo, box_hi, hi - lo)
            if split is None:
                nodes.append([-1, 0.0, -1, -1, len(leaves)])
                leaves.append((box_lo, box_hi, rows.numel()))
                continue
            dim, thr = split
            nodes.append([dim, thr, -1, -1, -1])
            go_right = x[rows, dim] >= thr
            hi_left, lo_right = box_hi.clone(), box_lo.clone()
            hi_left[dim], lo_right[dim] = thr, thr
            stack.append((rows[go_right], lo_right, box_hi, depth + 1, (len(nodes) - 1, 3)))
            stack.append((rows[~go_right], box_lo, hi_left, depth + 1, (len(nodes) - 1, 2)))
        return nodes, leaves

    @staticmethod
    def _split(points: Tensor, lo: Tensor, hi: Tensor, scale: Tensor) -> tuple[int, float] | None:
        """Split the widest side (relative to the data's range) at the points' median; of sides
        equally wide, the first (a stable sort, so that the tree is the same on every device)."""
        for dim in torch.argsort((hi - lo) / scale, descending=True, stable=True).tolist():
            v = torch.sort(points[:, dim]).values
            half = v.numel() // 2
            if v[half - 1] < v[half]:  # two non-empty children with positive widths
                return dim, float(0.5 * (v[half - 1] + v[half]))
        return None

    def _leaf(self, x: Tensor) -> Tensor:
        node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(self.depth):
            dim = self.dims[node]
            inner = dim >= 0
            value = x.gather(1, dim.clamp_min(0)[:, None])[:, 0]
            child = torch.where(value >= self.thresholds[node], self.right[node], self.left[node])
            node = torch.where(inner, child, node)
        return self.leaf_of[node]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at points (..., D); ``-inf`` outside the data's bounding box."""
        check_fitted(self.leaf_lo, "DensityTree")
        d = self.leaf_lo.shape[1]
        x = check_points(x, "DensityTree.log_prob", d, self.leaf_lo)
        flat = x.reshape(-1, d)
        leaf = self._leaf(flat)
        volume = (self.leaf_hi[leaf] - self.leaf_lo[leaf]).prod(-1)
        lp = (self.counts[leaf] / self.counts.sum()).log() - volume.log()
        inside = (flat >= self.leaf_lo.min(0).values) & (flat <= self.leaf_hi.max(0).values)
        lp = torch.where(inside.all(-1), lp, -math.inf)
        return lp.reshape(x.shape[:-1])

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws (*shape, D): a leaf by its count, then a uniform point in its box."""
        check_fitted(self.leaf_lo, "DensityTree")
        shape, n = sample_size(shape)
        leaf = categories(self.counts, n, generator)
        u = random_like(torch.rand, (n, self.leaf_lo.shape[1]), self.leaf_lo, generator)
        lo, hi = self.leaf_lo[leaf], self.leaf_hi[leaf]
        return (lo + u * (hi - lo)).reshape(*shape, -1)


__all__ = ["DensityTree", "Histogram", "freedman_diaconis_width"]
