r"""Classical density estimators and samplers: the baselines every learned model must beat.

* :mod:`~sbitk.models.classical.inverse_cdf`: sampling 1-D distributions through their
  quantile function, in closed form (exponential), by numerical inversion of any CDF, for
  discrete and for mixed (spike-and-slab) distributions;
* :mod:`~sbitk.models.classical.histogram`: a Freedman–Diaconis histogram in 1-D and a density
  tree (recursive median splits) in several dimensions;
* :mod:`~sbitk.models.classical.gmm`: Gaussian mixtures by EM, k-means++ starts, the number
  of components by BIC;
* :mod:`~sbitk.models.classical.kde`: Gaussian kernel density estimates with Scott's,
  Silverman's or a cross-validated bandwidth;
* :mod:`~sbitk.models.classical.gaussian`: the multivariate Gaussian, sampled and whitened
  through the eigendecomposition of its covariance.

All are plain torch (any float dtype, any device, batched over points, log-sum-exp where
densities are summed) and share one small unconditional interface, :class:`DensityEstimator`:
``fit(x (N, D)) -> self``, ``log_prob(x (..., D)) -> (...)``, ``sample(shape, generator) ->
(*shape, D)``. The inverse-CDF samplers are scalar distributions, not fitted from data; they
follow :class:`ScalarDistribution` instead.

**Why they are not in the estimator registry.** The registry (entry-point group
``sbitk.estimators``, :mod:`sbitk.models.registry`) holds *conditional* models that the one
training engine fits by gradient descent on ``loss(inputs, context)``; its shared contract test
runs every registered family through that loop and a save/load round trip of ``nn.Module``
weights. These estimators are unconditional, are fitted in closed form or by EM rather than by
gradients, and have data-sized state (a KDE keeps its points), so registering them would force a
fake ``loss`` and a meaningless context. They serve instead as unconditional densities in their
own right: baselines, proposal and reference distributions, and the known densities behind the
statistical tests of :mod:`sbitk.models.divergences`.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    >>> models = [MultivariateGaussian(), GaussianMixture(2), KernelDensity(), DensityTree()]
    >>> all(isinstance(m.fit(x), DensityEstimator) for m in models)
    True
    >>> [tuple(m.sample((3,), generator=g).shape) for m in models]
    [(3, 2), (3, 2), (3, 2), (3, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Generator, Tensor

from sbitk.models.classical.gaussian import MultivariateGaussian
from sbitk.models.classical.gmm import (
    BICSelection,
    GaussianMixture,
    GaussianMixtureConfig,
    fit_by_bic,
    kmeans_plus_plus,
)
from sbitk.models.classical.histogram import DensityTree, Histogram, freedman_diaconis_width
from sbitk.models.classical.inverse_cdf import (
    Discrete,
    Exponential,
    NumericalInverseCDF,
    SpikeAndSlab,
    invert_cdf,
)
from sbitk.models.classical.kde import (
    KernelDensity,
    KernelDensityConfig,
    scott_factor,
    silverman_factor,
)


@runtime_checkable
class DensityEstimator(Protocol):
    """An unconditional density estimator: fit to samples, then evaluate and sample.

    ``fit(x)`` takes samples (N, D) and returns the estimator; ``log_prob(x)`` maps points
    (..., D) to log-densities (...); ``sample(shape, generator)`` returns (*shape, D).
    """

    def fit(self, x: Tensor) -> DensityEstimator: ...

    def log_prob(self, x: Tensor) -> Tensor: ...

    def sample(
        self, shape: Sequence[int] | int = (), generator: Generator | None = None
    ) -> Tensor: ...


@runtime_checkable
class ScalarDistribution(Protocol):
    """A 1-D distribution sampled by its inverse CDF: ``cdf``, ``icdf``, ``log_prob`` and
    ``sample(shape, generator) -> shape``."""

    def cdf(self, x: Tensor) -> Tensor: ...

    def icdf(self, u: Tensor) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...

    def sample(
        self, shape: Sequence[int] | int = (), generator: Generator | None = None
    ) -> Tensor: ...


__all__ = [
    "BICSelection",
    "DensityEstimator",
    "DensityTree",
    "Discrete",
    "Exponential",
    "GaussianMixture",
    "GaussianMixtureConfig",
    "Histogram",
    "KernelDensity",
    "KernelDensityConfig",
    "MultivariateGaussian",
    "NumericalInverseCDF",
    "ScalarDistribution",
    "SpikeAndSlab",
    "fit_by_bic",
    "freedman_diaconis_width",
    "invert_cdf",
    "kmeans_plus_plus",
    "scott_factor",
    "silverman_factor",
]
