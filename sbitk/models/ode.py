r"""Batched ODE solvers for continuous-time models, and the divergence their densities need.

:func:`odeint` integrates :math:`\dot y = f(t, y)` from :math:`t_0` to :math:`t_1` (either
direction) with a fixed-step method (Euler, midpoint, classical Runge–Kutta) or the adaptive
Dormand–Prince 5(4) pair, whose step is controlled by the largest scaled error over the batch.
:func:`divergence` gives :math:`\nabla \cdot f` exactly (one backward pass per dimension, for
low dimension) or by Hutchinson's estimator with fixed Rademacher probes.

Example:
    >>> import torch
    >>> y = odeint(lambda t, y: -y, torch.ones(3, 1), 0.0, 1.0, method="dopri5")
    >>> torch.allclose(y, torch.full((3, 1), torch.e**-1), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbitk.errors import SbitkError

#: The fixed-step methods as Butcher tableaux (nodes c, stage weights a, output weights b).
_TABLEAUX = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "rk4": (
        (0.0, 0.5, 0.5, 1.0),
        ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    ),
}
METHODS = (*_TABLEAUX, "dopri5")

# Dormand–Prince 5(4): nodes, stages, 5th-order weights and the error weights (5th − 4th).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_E = (
    71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40,
)  # fmt: skip


def _stages(f, t: float, y: Tensor, h: float, c, a) -> list[Tensor]:
    ks: list[Tensor] = []
    for ci, ai in zip(c, a, strict=True):
        yi = y
        for aij, kj in zip(ai, ks, strict=False):
            if aij:
                yi = yi + (h * aij) * kj
        ks.append(f(t + ci * h, yi))
    return ks


def _combine(y: Tensor, h: float, weights, ks: list[Tensor]) -> Tensor:
    for w, k in zip(weights, ks, strict=True):
        if w:
            y = y + (h * w) * k
    return y


def odeint(
    f: Callable[[float, Tensor], Tensor],
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    method: str = "rk4",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> Tensor:
    """Integrate :math:`\\dot y = f(t, y)` from ``t0`` to ``t1`` and return :math:`y(t_1)`.

    Args:
        f: The vector field, ``f(t: float, y (*, D)) -> (*, D)``.
        y0: The state at ``t0``.
        t0, t1: Start and end times (``t1 < t0`` integrates backwards).
        method: ``"euler"``, ``"midpoint"``, ``"rk4"`` (``steps`` equal steps) or ``"dopri5"``
            (adaptive; ``rtol``, ``atol``, at most ``max_steps`` steps).
    """
    if method not in METHODS:
        raise SbitkError(f"ODE method must be one of {METHODS}, got {method!r}")
    if method != "dopri5":
        if steps < 1:
            raise SbitkError(f"ODE steps must be >= 1, got {steps}")
        c, a, b = _TABLEAUX[method]
        h = (t1 - t0) / steps
        y = y0
        for i in range(steps):
            y = _combine(y, h, b, _stages(f, t0 + i * h, y, h, c, a))
        return y
    return _dopri5(f, y0, t0, t1, rtol, atol, max_steps)


def _dopri5(f, y: Tensor, t0: float, t1: float, rtol: float, atol: float, max_steps: int):
    direction = 1.0 if t1 >= t0 else -1.0
    t, h = t0, direction * min(0.1, abs(t1 - t0))
    for _ in range(max_steps):
        if direction * (t1 - t) <= 1e-12:
            return y
        h = direction * min(abs(h), abs(t1 - t))
        ks = _stages(f, t, y, h, _DP_C, _DP_A)
        y_new = _combine(y, h, _DP_B, ks)
        err = _combine(torch.zeros_like(y), h, _DP_E, ks)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        ratio = float((err / scale).square().mean(-1).sqrt().max()) if y.numel() else 0.0
        if ratio <= 1.0:
            t, y = t + h, y_new
        factor = 0.9 * ratio ** (-0.2) if ratio > 0 else 5.0
        h = h * min(5.0, max(0.2, factor))
    raise SbitkError(
        f"the adaptive ODE solver needed more than {max_steps} steps from t={t0} to t={t1}; "
        "raise max_steps or loosen rtol/atol"
    )


def divergence(
    f: Callable[[Tensor], Tensor], y: Tensor, probes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``f(y)`` (*, D) and its divergence :math:`\\sum_d \\partial f_d / \\partial y_d` (*).

    Args:
        f: A function of ``y`` alone, row by row.
        y: Points (*, D).
        probes: Rademacher vectors (K, *, D) for Hutchinson's unbiased estimate
            :math:`\\frac1K \\sum_k \\epsilon_k^\\top J \\epsilon_k`; ``None`` for the exact
            trace (D backward passes).
    """
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        out = f(y)
        if probes is None:
            parts = [
                torch.autograd.grad(out[..., d].sum(), y, retain_graph=True)[0][..., d]
                for d in range(y.shape[-1])
            ]
            div = torch.stack(parts, -1).sum(-1)
        else:
            div = out.new_zeros(out.shape[:-1])
            for eps in probes:
                (vjp,) = torch.autograd.grad(out, y, eps, retain_graph=True)
                div = div + (vjp * eps).sum(-1)
            div = div / probes.shape[0]
    return out.detach(), div.detach()


__all__ = ["METHODS", "divergence", "odeint"]
