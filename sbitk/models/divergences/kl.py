r"""Kullback–Leibler and Jensen–Shannon divergences: by Monte Carlo, and in closed form.

For densities :math:`p` and :math:`q`,

.. math::

    \mathrm{KL}[p \,\|\, q] = \mathbb{E}_{x \sim p}\bigl[\log p(x) - \log q(x)\bigr] \ge 0,

zero only when :math:`p = q`, infinite where :math:`q` vanishes on mass of :math:`p`, and not
symmetric. With a target :math:`p^*` and a model :math:`q`, the *forward* KL
:math:`\mathrm{KL}[p^* \| q]` averages over the target's samples (its minimiser over
:math:`q` is maximum likelihood, and it punishes a model that misses mass: mass-covering); the
*reverse* KL :math:`\mathrm{KL}[q \| p^*]` averages over the model's samples (it punishes a
model that puts mass where the target has none: mode-seeking). The Jensen–Shannon divergence

.. math::

    \mathrm{JS}[p, q] = \tfrac12 \mathrm{KL}[p \,\|\, m] + \tfrac12 \mathrm{KL}[q \,\|\, m],
    \qquad m = \tfrac12 (p + q),

is symmetric and bounded by :math:`\log 2`. The Monte Carlo estimates here are unbiased, with a
standard error from the spread of the log-ratios.

References:
    Kullback & Leibler (1951), "On information and sufficiency", Ann. Math. Stat. 22(1).
    Lin (1991), "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 37.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sbitk.errors import SbitkError

LogProb = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MonteCarloEstimate:
    """A Monte Carlo estimate with its standard error.

    Attributes:
        value: The estimate (a scalar tensor).
        stderr: Its standard error, :math:`\\hat s / \\sqrt{n}` (a scalar tensor).
        n: The number of samples it averages.
    """

    value: Tensor
    stderr: Tensor
    n: int

    def __float__(self) -> float:
        return float(self.value)


def _log_ratio(log_a: LogProb, log_b: LogProb, samples: Tensor, what: str) -> Tensor:
    if not (callable(log_a) and callable(log_b)):
        raise SbitkError(f"{what}: the log-densities must be callables (N, D) -> (N,)")
    if samples.dim() < 1 or samples.shape[0] < 2:
        raise SbitkError(f"{what}: needs samples (N >= 2, ...), got {tuple(samples.shape)}")
    la, lb = log_a(samples), log_b(samples)
    if la.shape != (samples.shape[0],) or lb.shape != la.shape:
        raise SbitkError(
            f"{what}: log-densities must return ({samples.shape[0]},), got {tuple(la.shape)} "
            f"and {tuple(lb.shape)}"
        )
    # log q = -inf on p's mass makes the KL infinite, as it should; -inf - -inf is no mass.
    return torch.where(torch.isneginf(la), torch.zeros_like(la), la - lb)


def _estimate(terms: Tensor) -> MonteCarloEstimate:
    n = terms.shape[0]
    return MonteCarloEstimate(terms.mean(), terms.std() / math.sqrt(n), n)


def kl_monte_carlo(log_p: LogProb, log_q: LogProb, samples_p: Tensor) -> MonteCarloEstimate:
    r"""Monte Carlo :math:`\mathrm{KL}[p \| q] \approx \frac1N \sum_i \log p(x_i) - \log q(x_i)`,
    :math:`x_i \sim p`.

    Args:
        log_p: Log-density of :math:`p`, (N, D) -> (N,).
        log_q: Log-density of :math:`q`, (N, D) -> (N,).
        samples_p: Samples (N, D) of :math:`p`.

    Returns:
        A :class:`MonteCarloEstimate` (``inf`` where :math:`q` vanishes on a sample).

    Example:
        >>> p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 1.0)
        >>> x = p.sample((20000,))
        >>> round(float(kl_monte_carlo(p.log_prob, q.log_prob, x)), 1)  # closed form: 0.5
        0.5
    """
    return _estimate(_log_ratio(log_p, log_q, samples_p, "kl_monte_carlo"))


def forward_kl(
    target_log_prob: LogProb, model_log_prob: LogProb, target_samples: Tensor
) -> MonteCarloEstimate:
    r"""The forward KL :math:`\mathrm{KL}[p^* \| q]` from samples of the target :math:`p^*`.

    Up to the target's entropy, it is the model's expected negative log-likelihood, so fitting
    by maximum likelihood minimises it. See :func:`kl_monte_carlo`.
    """
    return kl_monte_carlo(target_log_prob, model_log_prob, target_samples)


def reverse_kl(
    target_log_prob: LogProb, model_log_prob: LogProb, model_samples: Tensor
) -> MonteCarloEstimate:
    r"""The reverse KL :math:`\mathrm{KL}[q \| p^*]` from samples of the model :math:`q`.

    It needs the target's density but only the model's samples (variational inference
    minimises it). See :func:`kl_monte_carlo`.
    """
    return kl_monte_carlo(model_log_prob, target_log_prob, model_samples)


def gaussian_kl(mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor) -> Tensor:
    r"""The KL divergence between two Gaussians in closed form (batched).

    .. math::

        \mathrm{KL}[\mathcal N(\mu_p, \Sigma_p) \,\|\, \mathcal N(\mu_q, \Sigma_q)] =
        \tfrac12\Bigl[\operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
            + (\mu_q - \mu_p)^\top \Sigma_q^{-1} (\mu_q - \mu_p) - D
            + \log\det\Sigma_q - \log\det\Sigma_p\Bigr],

    through Cholesky factors :math:`\Sigma = L L^\top`: the trace is
    :math:`\lVert L_q^{-1} L_p \rVert_F^2` and :math:`\log\det\Sigma = 2 \sum \log L_{ii}`.

    Args:
        mean_p: Means (*B, D).
        cov_p: Covariances (*B, D, D), symmetric positive definite.
        mean_q: Means (*B, D).
        cov_q: Covariances (*B, D, D).

    Returns:
        The divergences (*B,).

    Example:
        >>> eye = torch.eye(2)
        >>> float(gaussian_kl(torch.zeros(2), eye, torch.ones(2), eye))
        1.0
    """
    d = mean_p.shape[-1]
    if cov_p.shape[-2:] != (d, d) or cov_q.shape[-2:] != (d, d) or mean_q.shape[-1] != d:
        raise SbitkError(
            f"gaussian_kl: expected means (*B, D) and covariances (*B, D, D), got "
            f"{tuple(mean_p.shape)}, {tuple(cov_p.shape)}, {tuple(mean_q.shape)}, "
            f"{tuple(cov_q.shape)}"
        )
    l_p, info_p = torch.linalg.cholesky_ex(cov_p)
    l_q, info_q = torch.linalg.cholesky_ex(cov_q)
    if bool((info_p != 0).any()) or bool((info_q != 0).any()):
        raise SbitkError("gaussian_kl: covariances must be symmetric positive definite")
    m = torch.linalg.solve_triangular(l_q, l_p, upper=False)
    delta = (mean_q - mean_p).unsqueeze(-1)
    z = torch.linalg.solve_triangular(l_q, delta, upper=False).squeeze(-1)
    logdet_p = 2 * l_p.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet_q = 2 * l_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    trace = m.square().sum((-2, -1))
    return 0.5 * (trace + z.square().sum(-1) - d + logdet_q - logdet_p)


def js_divergence(
    log_p: LogProb, log_q: LogProb, samples_p: Tensor, samples_q: Tensor
) -> MonteCarloEstimate:
    r"""Monte Carlo Jensen–Shannon divergence (in nats) from two densities and their samples.

    .. math::

        \widehat{\mathrm{JS}} = \frac{1}{2N} \sum_i \log\frac{p(x_i)}{m(x_i)}
            + \frac{1}{2M} \sum_j \log\frac{q(y_j)}{m(y_j)},
        \quad \log m = \operatorname{logaddexp}(\log p, \log q) - \log 2,

    with :math:`x_i \sim p` and :math:`y_j \sim q`; each term lies in :math:`[0, \log 2]`.

    Args:
        log_p: Log-density of :math:`p`, (N, D) -> (N,).
        log_q: Log-density of :math:`q`.
        samples_p: Samples (N, D) of :math:`p`.
        samples_q: Samples (M, D) of :math:`q`.

    Returns:
        A :class:`MonteCarloEstimate`, between 0 and :math:`\log 2`.

    Example:
        >>> p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(50.0, 1.0)
        >>> x, y = p.sample((100,)), q.sample((100,))
        >>> round(float(js_divergence(p.log_prob, q.log_prob, x, y)), 4)  # log 2
        0.6931
    """

    def log_m(x: Tensor) -> Tensor:
        return torch.logaddexp(log_p(x), log_q(x)) - math.log(2.0)

    a = _log_ratio(log_p, log_m, samples_p, "js_divergence")
    b = _log_ratio(log_q, log_m, samples_q, "js_divergence")
    value = 0.5 * (a.mean() + b.mean())
    stderr = 0.5 * torch.sqrt(a.var() / a.shape[0] + b.var() / b.shape[0])
    return MonteCarloEstimate(value, stderr, a.shape[0] + b.shape[0])


__all__ = [
    "MonteCarloEstimate",
    "forward_kl",
    "gaussian_kl",
    "js_divergence",
    "kl_monte_carlo",
    "reverse_kl",
]
