r"""Divergences and distances between distributions, shared by training, diagnostics and tests.

One place for every way sbitk measures how far a model is from its target:

* :mod:`~sbitk.models.divergences.kl`: forward and reverse KL by Monte Carlo from
  log-densities and samples, the closed form between Gaussians, and the Jensen–Shannon
  divergence;
* :mod:`~sbitk.models.divergences.mmd` on the kernels of
  :mod:`~sbitk.models.divergences.kernels` (Gaussian, inverse multiquadric, Laplace; median
  heuristic): the maximum mean discrepancy, biased and unbiased, for models with samples only;
* :mod:`~sbitk.models.divergences.c2st`: the classifier two-sample test's accuracy;
* :mod:`~sbitk.models.divergences.scoring`: the energy score, a proper scoring rule for
  conditional samplers.

The MMD between distributions :math:`P` and :math:`Q` with a kernel :math:`k` is the distance
between their mean embeddings in the kernel's feature space,

.. math::

    \mathrm{MMD}^2(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y') - 2\,\mathbb{E}\,k(x, y),
    \qquad x, x' \sim P,\; y, y' \sim Q,

zero if and only if :math:`P = Q` for a characteristic kernel. Its unbiased estimator (a
U-statistic) leaves the diagonal terms :math:`k(x_i, x_i)` out, so its mean is exactly zero
when both samples come from one distribution (it may then be negative).

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

from sbitk.models.divergences.c2st import CLASSIFIERS, c2st, c2st_folds, make_classifier
from sbitk.models.divergences.kernels import (
    KERNELS,
    gaussian_kernel_means,
    kernel_matrix,
    median_bandwidth,
    sq_dist,
)
from sbitk.models.divergences.kl import (
    MonteCarloEstimate,
    forward_kl,
    gaussian_kl,
    js_divergence,
    kl_monte_carlo,
    reverse_kl,
)
from sbitk.models.divergences.mmd import mmd, mmd_from_labels
from sbitk.models.divergences.scoring import energy_score

__all__ = [
    "CLASSIFIERS",
    "KERNELS",
    "MonteCarloEstimate",
    "c2st",
    "c2st_folds",
    "energy_score",
    "forward_kl",
    "gaussian_kernel_means",
    "gaussian_kl",
    "js_divergence",
    "kernel_matrix",
    "kl_monte_carlo",
    "make_classifier",
    "median_bandwidth",
    "mmd",
    "mmd_from_labels",
    "reverse_kl",
    "sq_dist",
]
