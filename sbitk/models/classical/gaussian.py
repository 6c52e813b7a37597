r"""The multivariate Gaussian through the eigendecomposition of its covariance.

With :math:`\Sigma = U \Lambda U^\top` (:math:`U` orthonormal, :math:`\Lambda` the diagonal of
eigenvalues :math:`\lambda_d > 0`), the map

.. math::

    z = (x - \mu)\, U \Lambda^{-1/2}
    \qquad\Longleftrightarrow\qquad
    x = z\, \Lambda^{1/2} U^\top + \mu

whitens: :math:`z^\top z = (x - \mu)^\top \Sigma^{-1} (x - \mu)`, so
:math:`x \sim \mathcal N(\mu, \Sigma)` exactly when :math:`z \sim \mathcal N(0, I)`, a product of
:math:`D` independent 1-D standard normals. Sampling draws :math:`z` and maps it back (the
reparametrisation); the density is

.. math::

    \log p(x) = -\tfrac12 \lVert z \rVert^2 - \tfrac12 \sum_d \log \lambda_d - \tfrac D2 \log 2\pi.

Rows are vectors here, so the maps multiply on the right, as in the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.classical._checks import (
    check_fitted,
    check_points,
    check_rows,
    sample_size,
)
from sbitk.nn.devices import random_like


class MultivariateGaussian:
    """A Gaussian :math:`\\mathcal N(\\mu, \\Sigma)`, given or fitted by maximum likelihood.

    Args:
        mean: :math:`\\mu` (D,), or ``None`` to :meth:`fit` later.
        covariance: :math:`\\Sigma` (D, D), symmetric positive definite.

    Example:
        >>> cov = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> gauss = MultivariateGaussian(torch.zeros(2, dtype=torch.float64), cov)
        >>> gauss.eigenvalues.tolist()
        [1.0, 3.0]
        >>> z = gauss.whiten(gauss.sample((50000,), generator=torch.Generator().manual_seed(0)))
        >>> torch.cov(z.T).round(decimals=1).abs().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, mean: Tensor | None = None, covariance: Tensor | None = None) -> None:
        self.mean: Tensor | None = None
        if (mean is None) != (covariance is None):
            raise SbitkError("MultivariateGaussian: give both mean and covariance, or neither")
        if mean is not None:
            self._set(torch.as_tensor(mean), torch.as_tensor(covariance))

    def _set(self, mean: Tensor, covariance: Tensor) -> None:
        d = mean.shape[-1] if mean.dim() == 1 else -1
        if d < 1 or covariance.shape != (d, d):
            raise SbitkError(
                f"MultivariateGaussian: expected mean (D,) and covariance (D, D), got "
                f"{tuple(mean.shape)} and {tuple(covariance.shape)}"
            )
        if not torch.allclose(covariance, covariance.T):
            raise SbitkError("MultivariateGaussian: the covariance must be symmetric")
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.to(mean))
        if not bool((eigenvalues > 0).all()):
            raise SbitkError(
                "MultivariateGaussian: the covariance must be positive definite, found "
                f"eigenvalue {float(eigenvalues.min()):.3g}"
            )
        self.mean, self.covariance = mean, covariance.to(mean)
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors

    def fit(self, x: Tensor) -> MultivariateGaussian:
        """Maximum-likelihood :math:`\\mu` and :math:`\\Sigma` (divided by N) of ``x`` (N, D)."""
        x = check_rows(x, "MultivariateGaussian.fit")
        mean = x.mean(0)
        centred = x - mean
        self._set(mean, centred.T @ centred / x.shape[0])
        return self

    def whiten(self, x: Tensor) -> Tensor:
        """:math:`z = (x - \\mu) U \\Lambda^{-1/2}` for points (..., D)."""
        check_fitted(self.mean, "MultivariateGaussian")
        x = check_points(x, "MultivariateGaussian.whiten", self.mean.shape[0], self.mean)
        return (x - self.mean) @ self.eigenvectors * self.eigenvalues.rsqrt()

    def unwhiten(self, z: Tensor) -> Tensor:
        """:math:`x = z \\Lambda^{1/2} U^\\top + \\mu` for points (..., D)."""
        check_fitted(self.mean, "MultivariateGaussian")
        z = check_points(z, "MultivariateGaussian.unwhiten", self.mean.shape[0], self.mean)
        return (z * self.eigenvalues.sqrt()) @ self.eigenvectors.T + self.mean

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at points (..., D)."""
        z = self.whiten(x)
        d = self.mean.shape[0]
        log_det = self.eigenvalues.log().sum()
        return -0.5 * (z.square().sum(-1) + log_det + d * math.log(2 * math.pi))

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws (*shape, D) by unwhitening standard normal noise."""
        check_fitted(self.mean, "MultivariateGaussian")
        shape, _ = sample_size(shape)
        z = random_like(torch.randn, (*shape, self.mean.shape[0]), self.mean, generator)
        return self.unwhiten(z)


__all__ = ["MultivariateGaussian"]
