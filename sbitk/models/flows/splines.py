r"""Monotone rational-quadratic splines with linear tails.

On :math:`[-B, B]` the map is a piecewise rational-quadratic function through K+1 knots
:math:`(x_k, y_k)` with positive derivatives :math:`\delta_k` at the knots; outside it is the
identity, and the boundary derivatives are 1 so that the map is continuously differentiable.
Within bin k, with :math:`w_k = x_{k+1} - x_k`, :math:`h_k = y_{k+1} - y_k`,
:math:`s_k = h_k / w_k` and :math:`\xi = (x - x_k) / w_k`,

.. math::

    y = y_k + \frac{h_k (s_k \xi^2 + \delta_k \xi (1 - \xi))}
                   {s_k + (\delta_{k+1} + \delta_k - 2 s_k) \xi (1 - \xi)},
    \qquad
    \frac{dy}{dx} = \frac{s_k^2 (\delta_{k+1} \xi^2 + 2 s_k \xi (1 - \xi) + \delta_k (1 - \xi)^2)}
                         {(s_k + (\delta_{k+1} + \delta_k - 2 s_k) \xi (1 - \xi))^2}.

The inverse solves a quadratic in :math:`\xi` in closed form. Every element is computed on
clamped inputs and the tails selected with ``torch.where``, so no boolean indexing (and no
host-device synchronisation) happens.

The knot parametrisation (softmax widths and heights with a minimum, softplus derivatives with a
minimum) follows Durkan et al. so that the same unconstrained parameters give the same spline.

References:
    Durkan, Bekasov, Murray and Papamakarios, "Neural spline flows" (2019), arXiv:1906.04032.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def _cumulative(unnormalized: Tensor) -> Tensor:
    r"""Cumulative bin sizes (*, K) before normalisation: :math:`C_k = \sum_{j<k} e^{u_j - \max u}`
    for k = 1..K (and :math:`C_0 = 0`, not stored).

    Bin sizes are :math:`m + (1 - mK)\,\mathrm{softmax}(u)`, so knot k sits at
    :math:`2B (m k + (1 - mK) C_k / C_K) - B`: one exponential and one cumulative sum, no
    explicit softmax (which is slow on CPU for a short last dimension), and exact end points.
    """
    # softmax is shift invariant: no gradient flows through the max
    e = torch.exp(unnormalized - unnormalized.detach().amax(-1, keepdim=True))
    # in place only when no gradient is recorded: exp's backward reads its output
    return e.cumsum_(-1) if not e.requires_grad else e.cumsum(-1)


def _interior_knots(c: Tensor, bound: float, minimum: float) -> Tensor:
    """Knots 1..K-1 (*, K-1) from cumulative sizes ``c`` (the ends are ±bound)."""
    k = c.shape[-1]
    steps = torch.arange(1, k, dtype=c.dtype, device=c.device)
    offset = (2 * bound * minimum) * steps - bound
    return torch.addcdiv(offset, c[..., :-1], c[..., -1:], value=2 * bound * (1 - minimum * k))


def _knots_at(c: Tensor, index: Tensor, bound: float, minimum: float) -> Tensor:
    """The knots at positions ``index`` (*, m) in 0..K only: the work is on m values."""
    k = c.shape[-1]
    cum = torch.gather(c, -1, (index - 1).clamp_min(0))
    cum = torch.where(index == 0, 0.0, cum)
    offset = (2 * bound * minimum) * index.to(c.dtype) - bound
    return torch.addcdiv(offset, cum, c[..., -1:], value=2 * bound * (1 - minimum * k))


def _derivatives_at(unnormalized: Tensor, index: Tensor) -> Tensor:
    """Knot derivatives at positions ``index`` (*, m) in 0..K, from the K-1 interior
    unnormalised ones; exactly 1 at both ends."""
    k = unnormalized.shape[-1] + 1
    inner = torch.gather(unnormalized, -1, (index - 1).clamp(0, max(k - 2, 0)))
    d = MIN_DERIVATIVE + F.softplus(inner)
    return torch.where((index == 0) | (index == k), 1.0, d)


def rational_quadratic_spline(
    inputs: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    *,
    bound: float = 5.0,
    inverse: bool = False,
    log_det: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Apply an elementwise monotone rational-quadratic spline with linear tails.

    Args:
        inputs: Values (*) to transform.
        widths: Unnormalised bin widths (*, K).
        heights: Unnormalised bin heights (*, K).
        derivatives: Unnormalised interior knot derivatives (*, K-1).
        bound: Half-width B of the spline's interval; identity outside it.
        inverse: Apply the inverse map instead.
        log_det: Also compute the log-determinant (sampling alone does not need it).

    Returns:
        The outputs (*) and ``log|dy/dx|`` (*) of the *forward* map at the input (forward) or at
        the output (inverse), so that densities use the same sign in both directions; None in
        place of the latter when ``log_det`` is false.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.linspace(-6, 6, 7, dtype=torch.float64)
        >>> p = [torch.randn(7, n, generator=g, dtype=torch.float64) for n in (8, 8, 7)]
        >>> y, ld = rational_quadratic_spline(x, *p)
        >>> x2, ld2 = rational_quadratic_spline(y, *p, inverse=True)
        >>> torch.allclose(x, x2) and torch.allclose(ld, ld2)
        True
    """
    # strided views make every elementwise kernel several times slower on CPU
    inputs, widths = inputs.contiguous(), widths.contiguous()
    heights, derivatives = heights.contiguous(), derivatives.contiguous()
    inside = inputs.abs() <= bound
    v = inputs.clamp(-bound, bound)
    # All knots on the side v lives on (to find its bin); the other side's knots and the
    # derivatives only at the bin's two ends.
    searched = (heights, MIN_BIN_HEIGHT) if inverse else (widths, MIN_BIN_WIDTH)
    other = (widths, MIN_BIN_WIDTH) if inverse else (heights, MIN_BIN_HEIGHT)
    c_searched = _cumulative(searched[0])
    interior = _interior_knots(c_searched, bound, searched[1])
    # bin k holds (knot k, knot k+1]: k is the number of interior knots below v (for a
    # handful of knots a comparison and a sum take half the time of a binary search)
    idx = (v.unsqueeze(-1) > interior).sum(-1, keepdim=True)
    pair = torch.cat([idx, idx + 1], -1)
    ends_searched = _knots_at(c_searched, pair, bound, searched[1])
    ends_other = _knots_at(_cumulative(other[0]), pair, bound, other[1])
    x0, x1 = (ends_other if inverse else ends_searched).unbind(-1)
    y0, y1 = (ends_searched if inverse else ends_other).unbind(-1)
    d0, d1 = _derivatives_at(derivatives, pair).unbind(-1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    c = d1 + d0 - 2 * s

    if inverse:
        dy = v - y0
        a = h * (s - d0) + dy * c
        b = h * d0 - dy * c
        cc = -s * dy
        disc = (b.square() - 4 * a * cc).clamp_min(0)
        xi = (2 * cc) / (-b - torch.sqrt(disc))
        out = xi * w + x0
    else:
        xi = (v - x0) / w
        out = y0 + h * (s * xi.square() + d0 * xi * (1 - xi)) / (s + c * xi * (1 - xi))
    if not log_det:
        return torch.where(inside, out, inputs), None

    xi1 = xi * (1 - xi)
    num = s.square() * (d1 * xi.square() + 2 * s * xi1 + d0 * (1 - xi).square())
    logdet = torch.log(num / (s + c * xi1).square())
    return torch.where(inside, out, inputs), torch.where(inside, logdet, 0.0)


def spline_params(bins: int) -> int:
    """Number of unconstrained parameters per dimension of a K-bin spline, ``3K - 1``."""
    return 3 * bins - 1


def split_spline_params(params: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split (*, 3K-1) parameters into widths (*, K), heights (*, K), derivatives (*, K-1)."""
    return params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]


# softplus^{-1}(1 - MIN_DERIVATIVE): an unnormalised derivative that gives exactly slope 1
IDENTITY_DERIVATIVE = math.log(math.expm1(1 - MIN_DERIVATIVE))

__all__ = [
    "IDENTITY_DERIVATIVE",
    "MIN_BIN_HEIGHT",
    "MIN_BIN_WIDTH",
    "MIN_DERIVATIVE",
    "rational_quadratic_spline",
    "spline_params",
    "split_spline_params",
]
