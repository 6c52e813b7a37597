r"""Gaussian mixture fitted by expectation–maximisation, its size chosen by BIC.

.. math::

    p(x) = \sum_{k=1}^K \pi_k\, \mathcal N(x;\, \mu_k, \Sigma_k),
    \qquad \pi_k \ge 0,\ \textstyle\sum_k \pi_k = 1.

Legend: :math:`N` points :math:`x_i`, :math:`K` components, :math:`r_{ik}` the responsibility
of component :math:`k` for point :math:`i`. EM alternates

* **E step**: :math:`\log r_{ik} = \log\pi_k + \log\mathcal N(x_i; \mu_k, \Sigma_k)
  - \operatorname{logsumexp}_j(\cdots)`, all in log space, so a point far from every component
  does not underflow;
* **M step**: with :math:`N_k = \sum_i r_{ik}`, :math:`\pi_k = N_k / N`,
  :math:`\mu_k = \sum_i r_{ik} x_i / N_k`,
  :math:`\Sigma_k = \sum_i r_{ik}(x_i - \mu_k)(x_i - \mu_k)^\top / N_k + \epsilon I`,

each step never decreasing the log-likelihood, until it changes by less than ``tol`` per point.
The start matters (EM finds a local optimum): the means start at k-means++ seeds (each next
seed drawn with probability proportional to its squared distance to the nearest seed so far)
refined by a few Lloyd iterations. All components are evaluated at once through batched
Cholesky factors. The number of components minimises the Bayesian information criterion

.. math::

    \mathrm{BIC} = -2 \log \hat L + p \log N, \qquad p = (K - 1) + K D + K D (D + 1) / 2.

References:
    Dempster, Laird & Rubin (1977), "Maximum likelihood from incomplete data via the EM
    algorithm", JRSS B 39(1).
    Arthur & Vassilvitskii (2007), "k-means++: the advantages of careful seeding", SODA.
    Schwarz (1978), "Estimating the dimension of a model", Ann. Stat. 6(2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class GaussianMixtureConfig:
    """Options of :class:`GaussianMixture`.

    Attributes:
        n_components: :math:`K`.
        max_iter: Most EM iterations per start.
        tol: Stop when the mean log-likelihood per point changes by less.
        reg_covar: :math:`\\epsilon` added to each covariance's diagonal.
        n_init: Starts (different k-means++ seeds); the best log-likelihood wins.
        kmeans_iter: Lloyd iterations after the k-means++ seeding.
        seed: Seeds the k-means++ draws.
    """

    n_components: int = 1
    max_iter: int = 200
    tol: float = 1e-6
    reg_covar: float = 1e-6
    n_init: int = 1
    kmeans_iter: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_components < 1 or self.max_iter < 1 or self.n_init < 1 or self.kmeans_iter < 0:
            raise SbitkError(f"GaussianMixtureConfig: counts must be >= 1, got {self}")
        if not (self.tol > 0 and self.reg_covar >= 0):
            raise SbitkError(f"GaussianMixtureConfig: needs tol > 0, reg_covar >= 0, got {self}")


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator, iters: int = 10) -> Tensor:
    """k-means++ seeds of ``k`` centres among the rows of ``x`` (N, D), then Lloyd steps.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
        >>> kmeans_plus_plus(x, 2, torch.Generator().manual_seed(0)).sort(0).values
        tensor([[ 0.0500],
                [10.0500]])
    """
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centres = x[first]
    d2 = torch.cdist(x, centres).square().min(1).values
    for _ in range(1, k):
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        pick = torch.multinomial(weights, 1, generator=generator)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, torch.cdist(x, x[pick]).square()[:, 0])
    for _ in range(iters):
        label = torch.cdist(x, centres).argmin(1)
        one_hot = torch.nn.functional.one_hot(label, k).to(x)
        size = one_hot.sum(0)
        moved = (one_hot.T @ x) / size.clamp_min(1)[:, None]
        centres = torch.where(size[:, None] > 0, moved, centres)  # an empty cluster stays put
    return centres


class GaussianMixture:
    """A full-covariance Gaussian mixture fitted by EM (see the module docstring).

    Args:
        n_components: :math:`K`.
        **options: The other fields of :class:`GaussianMixtureConfig`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(1000, 2, generator=g, dtype=torch.float64)
        >>> x[:500] -= 4.0
        >>> x[500:] += 4.0
        >>> gmm = GaussianMixture(2).fit(x)
        >>> gmm.means.sort(0).values.round().tolist()
        [[-4.0, -4.0], [4.0, 4.0]]
    """

    def __init__(self, n_components: int = 1, **options) -> None:
        self.config = GaussianMixtureConfig(n_components=n_components, **options)
        self.weights: Tensor | None = None

    def fit(self, x: Tensor) -> GaussianMixture:
        """Fit to samples ``x`` (N, D), N >= K; the best of ``n_init`` starts."""
        cfg = self.config
        x = check_rows(x, "GaussianMixture.fit", min_rows=max(2, cfg.n_components))
        generator = torch.Generator(device=x.device).manual_seed(cfg.seed)
        best = None
        for _ in range(cfg.n_init):
            centres = kmeans_plus_plus(x, cfg.n_components, generator, cfg.kmeans_iter)
            resp = torch.nn.functional.one_hot(torch.cdist(x, centres).argmin(1), len(centres))
            self._m_step(x, resp.to(x))
            ll, self.converged, self.n_iter = self._em(x)
            if best is None or ll > best[0]:
                best = (
                    ll,
                    self.weights,
                    self.means,
                    self.covariances,
                    self.converged,
                    self.n_iter,
                )
        _, self.weights, self.means, self.covariances, self.converged, self.n_iter = best
        self._chol = torch.linalg.cholesky(self.covariances)
        return self

    def _em(self, x: Tensor) -> tuple[float, bool, int]:
        previous = -math.inf
        for it in range(1, self.config.max_iter + 1):
            log_joint = self._log_joint(x)
            ll = float(torch.logsumexp(log_joint, 1).mean())
            self._m_step(x, torch.softmax(log_joint, 1))
            if abs(ll - previous) < self.config.tol:
                return ll, True, it
            previous = ll
        return float(torch.logsumexp(self._log_joint(x), 1).mean()), False, it

    def _m_step(self, x: Tensor, resp: Tensor) -> None:
        nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # an empty component stays finite
        self.weights = nk / nk.sum()
        self.means = (resp.T @ x) / nk[:, None]
        diff = x[None] - self.means[:, None]  # (K, N, D)
        cov = (diff * resp.T[..., None]).transpose(1, 2) @ diff / nk[:, None, None]
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        self.covariances = cov + self.config.reg_covar * eye
        self._chol = torch.linalg.cholesky(self.covariances)

    def _log_joint(self, x: Tensor) -> Tensor:
        """:math:`\\log\\pi_k + \\log\\mathcal N(x_i; \\mu_k, \\Sigma_k)`, (N, K)."""
        d = x.shape[-1]
        diff = (x[None] - self.means[:, None]).transpose(1, 2)  # (K, D, N)
        z = torch.linalg.solve_triangular(self._chol, diff, upper=False)
        half_logdet = self._chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        log_norm = (
            -0.5 * z.square().sum(1) - half_logdet[:, None] - 0.5 * d * math.log(2 * math.pi)
        )
        return (log_norm + self.weights.log()[:, None]).T

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density at points (..., D), by log-sum-exp over the components."""
        check_fitted(self.weights, "GaussianMixture")
        x = check_points(x, "GaussianMixture.log_prob", self.means.shape[1], self.means)
        flat = x.reshape(-1, x.shape[-1])
        return torch.logsumexp(self._log_joint(flat), 1).reshape(x.shape[:-1])

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities :math:`r_{ik}` of points (N, D), (N, K)."""
        check_fitted(self.weights, "GaussianMixture")
        return torch.softmax(self._log_joint(check_rows(x, "responsibilities", 1)), 1)

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws (*shape, D): a component by its weight, then :math:`\\mu_k + L_k z`."""
        check_fitted(self.weights, "GaussianMixture")
        shape, n = sample_size(shape)
        comp = categories(self.weights, n, generator)
        z = random_like(torch.randn, (n, self.means.shape[1], 1), self.means, generator)
        x = self.means[comp] + (self._chol[comp] @ z)[..., 0]
        return x.reshape(*shape, -1)

    @property
    def n_parameters(self) -> int:
        """Free parameters :math:`p = (K-1) + KD + KD(D+1)/2`."""
        check_fitted(self.weights, "GaussianMixture")
        k, d = self.means.shape
        return (k - 1) + k * d + k * d * (d + 1) // 2

    def bic(self, x: Tensor) -> float:
        """The Bayesian information criterion on ``x`` (N, D) (lower is better)."""
        log_lik = float(self.log_prob(x).sum())
        return -2.0 * log_lik + self.n_parameters * math.log(x.shape[0])


@dataclass(frozen=True)
class BICSelection:
    """The mixture with the lowest BIC among several sizes.

    Attributes:
        model: The chosen, fitted :class:`GaussianMixture`.
        bic: BIC of each size tried, ``{K: BIC}``.
    """

    model: GaussianMixture
    bic: dict[int, float]

    @property
    def n_components(self) -> int:
        """The chosen :math:`K`."""
        return self.model.config.n_components


def fit_by_bic(x: Tensor, candidates: Iterable[int] = range(1, 7), **options) -> BICSelection:
    """Fit a :class:`GaussianMixture` of each size in ``candidates``; keep the lowest BIC.

    Args:
        x: Samples (N, D).
        candidates: Numbers of components to try.
        **options: Other fields of :class:`GaussianMixtureConfig`.

    Returns:
        A :class:`BICSelection`.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> x = torch.randn(800, 1, generator=g, dtype=torch.float64)
        >>> x[:400] += 10.0
        >>> fit_by_bic(x, range(1, 5)).n_components
        2
    """
    config = GaussianMixtureConfig(**options)
    models, scores = {}, {}
    for k in sorted(set(int(c) for c in candidates)):
        models[k] = GaussianMixture(**vars(replace(config, n_components=k))).fit(x)
        scores[k] = models[k].bic(x)
    if not scores:
        raise SbitkError("fit_by_bic: candidates is empty")
    best = min(scores, key=scores.get)
    return BICSelection(models[best], scores)


__all__ = [
    "BICSelection",
    "GaussianMixture",
    "GaussianMixtureConfig",
    "fit_by_bic",
    "kmeans_plus_plus",
]
