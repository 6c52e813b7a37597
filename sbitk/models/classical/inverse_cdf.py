r"""Sampling by the inverse CDF: push uniform noise through the quantile function.

If :math:`U \sim \mathcal U(0, 1)` and :math:`F` is a CDF, then
:math:`X = F^{-1}(U) \sim F`, with the generalised inverse

.. math::

    F^{-1}(u) = \inf\{x : F(x) \ge u\},

which also covers CDFs with jumps (discrete and mixed distributions) and flat parts. Four
cases:

* a closed-form quantile, the exponential: :math:`F(x) = 1 - e^{-\lambda x}`, so
  :math:`F^{-1}(u) = -\log(1 - u) / \lambda`;
* any 1-D CDF inverted numerically (:func:`invert_cdf`): bisection on a bracket, with
  safeguarded Newton steps when the density is known, vectorised over all :math:`u` at once;
* a discrete distribution: :math:`F^{-1}(u)` is the first atom whose cumulative probability
  reaches :math:`u` (a binary search);
* a mixed one, spike-and-slab: an atom of mass :math:`\pi` at 0 plus
  :math:`(1 - \pi)\,\mathcal N(\mu, \sigma^2)`; its CDF jumps by :math:`\pi` at 0, and every
  :math:`u` inside the jump maps to 0.

Scalar distributions: events have shape ``()``, ``sample(shape)`` returns ``shape``.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = Exponential(2.0).sample((100000,), generator=g)
    >>> round(float(x.mean()), 2)  # 1 / rate
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.classical._checks import sample_size

CDF = Callable[[Tensor], Tensor]


def normal_cdf(z: Tensor) -> Tensor:
    """The standard normal CDF through ``erfc``, accurate in the lower tail (torch's ``ndtr``
    is off by about 2e-5 relative at z = -7, which shifts far-tail quantiles)."""
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def _uniform(shape: Sequence[int] | int, generator, dtype=None) -> Tensor:
    shape, _ = sample_size(shape)
    return torch.rand(shape, generator=generator, dtype=dtype or torch.get_default_dtype())


def _expand_bracket(cdf: CDF, u: Tensor, start: float, above: bool) -> Tensor:
    """Per element, double an edge from ``start`` until ``F(edge) >= u`` (above) or ``< u``."""
    edge = torch.full_like(u, start)
    for _ in range(1100):  # 2**1100 overflows float64: the CDF never got there
        f = cdf(edge)
        bad = (f < u) if above else (f >= u)
        if not bool(bad.any()):
            return edge
        edge = torch.where(bad, edge * 2.0, edge)
    raise SbitkError("invert_cdf: could not bracket the quantile; is cdf a CDF with limits 0, 1?")


def invert_cdf(
    cdf: CDF,
    u: Tensor,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    pdf: CDF | None = None,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> Tensor:
    r"""The generalised inverse :math:`F^{-1}(u) = \inf\{x : F(x) \ge u\}`, elementwise.

    Bisection keeps a bracket :math:`[a, b]` with :math:`F(a) < u \le F(b)` for every element at
    once; an infinite ``low`` or ``high`` is replaced by doubling from :math:`\mp 1`. With the
    density ``pdf``, each step first tries Newton's :math:`x - (F(x) - u) / f(x)` and falls
    back to the midpoint when that leaves the bracket, so smooth CDFs converge quadratically
    and jumps (atoms) still converge, linearly.

    Args:
        cdf: :math:`F`, elementwise on tensors, non-decreasing.
        u: Probability levels, any shape, in :math:`(0, 1)` (:math:`[0, 1]` on a finite
            bracket).
        low: Lower end of the support (``-inf`` allowed).
        high: Upper end of the support (``inf`` allowed).
        pdf: The density :math:`F'`, for Newton steps (optional).
        tol: Stop when the bracket is narrower than ``tol * max(1, |x|)`` (or, with Newton,
            when :math:`|F(x) - u| <` ``tol``).
        max_iter: Most steps.

    Returns:
        Quantiles of the same shape as ``u``.

    Example:
        >>> u = torch.tensor([0.025, 0.5, 0.975], dtype=torch.float64)
        >>> invert_cdf(normal_cdf, u).round(decimals=4)
        tensor([-1.9600,  0.0000,  1.9600], dtype=torch.float64)
    """
    if not callable(cdf):
        raise SbitkError(f"invert_cdf: cdf must be callable, got {type(cdf).__name__}")
    if not low < high:
        raise SbitkError(f"invert_cdf: needs low < high, got {low} and {high}")
    inside = (u > 0) & (u < 1) if math.isinf(low) or math.isinf(high) else (u >= 0) & (u <= 1)
    if not bool(inside.all()):
        raise SbitkError("invert_cdf: u must lie in (0, 1) (in [0, 1] on a finite bracket)")
    lo = _expand_bracket(cdf, u, -1.0, above=False) if math.isinf(low) else torch.full_like(u, low)
    hi = _expand_bracket(cdf, u, 1.0, above=True) if math.isinf(high) else torch.full_like(u, high)
    if not math.isinf(low):
        # At a finite lower end F(low) may already reach u (an atom at low, or u = 0).
        at_low = cdf(lo) >= u
    x = hi
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        x = mid
        if pdf is not None:
            step = x - (cdf(x) - u) / pdf(x)
            x = torch.where(torch.isfinite(step) & (step > lo) & (step < hi), step, mid)
        f = cdf(x)
        above = f >= u
        hi, lo = torch.where(above, x, hi), torch.where(above, lo, x)
        scale = torch.clamp(torch.maximum(lo.abs(), hi.abs()), min=1.0)
        if bool(((hi - lo) <= tol * scale).all()):
            break
        if pdf is not None and bool(((f - u).abs() < tol).all()):
            hi = x
            break
    return torch.where(at_low, lo, hi) if not math.isinf(low) else hi


class Exponential:
    r"""The exponential distribution, sampled through its closed-form quantile.

    .. math::

        p(x) = \lambda e^{-\lambda x}, \quad F(x) = 1 - e^{-\lambda x}, \quad
        F^{-1}(u) = -\frac{\log(1 - u)}{\lambda}, \qquad x \ge 0.

    Args:
        rate: :math:`\lambda > 0` (the seeds' :math:`1/\tau`).

    Example:
        >>> Exponential(1.0).icdf(torch.tensor(0.5))
        tensor(0.6931)
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise SbitkError(f"Exponential: rate must be > 0, got {rate!r}")
        self.rate = float(rate)

    def cdf(self, x: Tensor) -> Tensor:
        """:math:`F(x)`."""
        return torch.where(x >= 0, -torch.expm1(-self.rate * x.clamp_min(0)), 0.0)

    def icdf(self, u: Tensor) -> Tensor:
        """:math:`F^{-1}(u)`, with ``log1p`` for accuracy near 0."""
        return -torch.log1p(-u) / self.rate

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p(x)` (``-inf`` for :math:`x < 0`)."""
        lp = math.log(self.rate) - self.rate * x
        return torch.where(x >= 0, lp, -math.inf)

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws of shape ``shape``."""
        return self.icdf(_uniform(shape, generator))


class NumericalInverseCDF:
    """Any 1-D distribution with a CDF, sampled by inverting the CDF numerically.

    Args:
        cdf: :math:`F`, elementwise on tensors.
        low: Lower end of the support (``-inf`` allowed).
        high: Upper end of the support.
        pdf: The density, for Newton steps and :meth:`log_prob` (optional).
        tol: Tolerance of :func:`invert_cdf`.

    Example:
        >>> def cdf(x):  # the Gamma(2, 1) CDF
        ...     return torch.special.gammainc(torch.full_like(x, 2.0), x)
        >>> gamma2 = NumericalInverseCDF(cdf, low=0.0)
        >>> x = gamma2.sample((20000,), generator=torch.Generator().manual_seed(0))
        >>> round(float(x.mean()), 1)  # shape 2, rate 1
        2.0
    """

    def __init__(
        self,
        cdf: CDF,
        low: float = -math.inf,
        high: float = math.inf,
        pdf: CDF | None = None,
        tol: float = 1e-10,
    ) -> None:
        if not callable(cdf) or (pdf is not None and not callable(pdf)):
            raise SbitkError("NumericalInverseCDF: cdf (and pdf, if given) must be callable")
        if not low < high:
            raise SbitkError(f"NumericalInverseCDF: needs low < high, got {low} and {high}")
        self.cdf, self.pdf, self.low, self.high, self.tol = cdf, pdf, low, high, tol

    def icdf(self, u: Tensor) -> Tensor:
        """:math:`F^{-1}(u)` by :func:`invert_cdf`."""
        return invert_cdf(self.cdf, u, self.low, self.high, pdf=self.pdf, tol=self.tol)

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log F'(x)`; needs ``pdf``."""
        if self.pdf is None:
            raise SbitkError("NumericalInverseCDF.log_prob needs the pdf")
        return torch.log(self.pdf(x))

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws of shape ``shape`` (float64 uniforms, for an accurate inversion)."""
        return self.icdf(_uniform(shape, generator, torch.float64))


class Discrete:
    r"""A discrete distribution on the atoms ``values`` with probabilities ``probs``.

    Its CDF is a staircase; :math:`F^{-1}(u)` is the first atom (in sorted order) with
    cumulative probability :math:`\ge u`, found by binary search.

    Args:
        values: Atoms (K,), distinct.
        probs: Probabilities (K,), non-negative; normalised here.

    Example:
        >>> coin = Discrete(torch.tensor([-1.0, 1.0]), torch.tensor([0.3, 0.7]))
        >>> coin.icdf(torch.tensor([0.1, 0.3, 0.31]))
        tensor([-1., -1.,  1.])
    """

    def __init__(self, values: Tensor, probs: Tensor) -> None:
        values, probs = torch.as_tensor(values), torch.as_tensor(probs)
        if values.dim() != 1 or probs.shape != values.shape or values.numel() == 0:
            raise SbitkError(
                f"Discrete: values and probs must be (K,) alike, got {tuple(values.shape)} "
                f"and {tuple(probs.shape)}"
            )
        if not bool((probs >= 0).all()) or not float(probs.sum()) > 0:
            raise SbitkError("Discrete: probs must be non-negative with a positive sum")
        if torch.unique(values).numel() != values.numel():
            raise SbitkError("Discrete: values must be distinct")
        order = torch.argsort(values)
        dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
        self.values = values[order].to(dtype)
        self.probs = (probs[order] / probs.sum()).to(self.values)
        self._cum = torch.cumsum(self.probs, 0)

    def cdf(self, x: Tensor) -> Tensor:
        """:math:`F(x) = \\sum_{v_k \\le x} p_k`."""
        idx = torch.searchsorted(self.values, x.to(self.values), right=True)
        return torch.cat([self._cum.new_zeros(1), self._cum])[idx]

    def icdf(self, u: Tensor) -> Tensor:
        """The first atom whose cumulative probability reaches ``u``."""
        idx = torch.searchsorted(self._cum, u.to(self._cum), right=False)
        return self.values[idx.clamp_max(self.values.numel() - 1)]

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-probability mass (``-inf`` off the atoms)."""
        x = x.to(self.values)
        idx = torch.searchsorted(self.values, x).clamp_max(self.values.numel() - 1)
        hit = self.values[idx] == x
        return torch.where(hit, self.probs[idx].log(), -math.inf)

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws of shape ``shape``."""
        return self.icdf(_uniform(shape, generator, self._cum.dtype))


class SpikeAndSlab:
    r"""A mixed distribution: an atom at 0 of mass :math:`\pi` and a Gaussian slab.

    .. math::

        F(x) = \pi\,\mathbb 1[x \ge 0] + (1 - \pi)\,\Phi\!\Bigl(\frac{x - \mu}{\sigma}\Bigr).

    With :math:`s = (1 - \pi)\Phi(-\mu / \sigma)`, the mass below 0, the quantile is
    :math:`\mu + \sigma\Phi^{-1}(u / (1 - \pi))` for :math:`u \le s`, 0 for
    :math:`s < u \le s + \pi`, and :math:`\mu + \sigma\Phi^{-1}((u - \pi) / (1 - \pi))` above.

    Args:
        spike: :math:`\pi \in [0, 1)`, the probability that "nothing happened" (x = 0).
        mean: :math:`\mu` of the slab.
        std: :math:`\sigma > 0` of the slab.

    Example:
        >>> d = SpikeAndSlab(0.5, 2.0, 1.0)
        >>> x = d.sample((10000,), generator=torch.Generator().manual_seed(0))
        >>> round(float((x == 0).double().mean()), 2)
        0.5
    """

    def __init__(self, spike: float, mean: float = 0.0, std: float = 1.0) -> None:
        if not 0 <= spike < 1 or not std > 0:
            raise SbitkError(
                f"SpikeAndSlab: needs 0 <= spike < 1 and std > 0, got spike={spike!r}, std={std!r}"
            )
        self.spike, self.mean, self.std = float(spike), float(mean), float(std)

    def cdf(self, x: Tensor) -> Tensor:
        """:math:`F(x)`, right-continuous: the jump at 0 is included at 0."""
        slab = normal_cdf((x - self.mean) / self.std)
        return self.spike * (x >= 0).to(slab) + (1 - self.spike) * slab

    def icdf(self, u: Tensor) -> Tensor:
        """:math:`F^{-1}(u)` in closed form (see the class docstring)."""
        pi, w = self.spike, 1 - self.spike
        below = w * float(normal_cdf(torch.tensor(-self.mean / self.std)))
        low = self.mean + self.std * torch.special.ndtri((u / w).clamp(0, 1))
        high = self.mean + self.std * torch.special.ndtri(((u - pi) / w).clamp(0, 1))
        return torch.where(u <= below, low, torch.where(u <= below + pi, 0.0, high))

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Log-density against Lebesgue measure plus a unit atom at 0.

        At 0 it is :math:`\log \pi` (the atom's mass; the slab has no mass there), elsewhere
        :math:`\log(1 - \pi) + \log \mathcal N(x; \mu, \sigma^2)`.
        """
        z = (x - self.mean) / self.std
        slab = math.log1p(-self.spike) - 0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi))
        spike = math.log(self.spike) if self.spike > 0 else -math.inf
        return torch.where(x == 0, spike, slab)

    def sample(self, shape: Sequence[int] | int = (), generator=None) -> Tensor:
        """Draws of shape ``shape``."""
        return self.icdf(_uniform(shape, generator))


__all__ = [
    "Discrete",
    "Exponential",
    "NumericalInverseCDF",
    "SpikeAndSlab",
    "invert_cdf",
    "normal_cdf",
]
