"""Elementwise bijections between a parameter's support and the real line.

A bounded prior (box-uniform, log-normal, ...) is easier to learn in unconstrained space. Each
bijection here maps constrained values to unconstrained ones with ``forward`` and returns the
log-absolute-determinant of its Jacobian, following the package convention for bijections:

.. math::
    u = f(\\theta), \\qquad
    \\log q_\\theta(\\theta) = \\log q_u(f(\\theta)) + \\log|\\det J_f(\\theta)|.

They are plain objects, not modules: they hold no learnable parameters and live in the lowest
layer so that priors can hand them out. Flows wrap them as transforms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Bijection:
    """Elementwise map from a support to the real line, acting on the last dimension.

    Args:
        dim: The size of the last dimension it acts on.
    """

    dim: int

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``theta`` (*, D) to ``u`` (*, D); also return ``log|det J|`` (*)."""
        raise NotImplementedError

    def inverse(self, u: Tensor) -> Tensor:
        """Map ``u`` (*, D) back to ``theta`` (*, D)."""
        raise NotImplementedError

    def spec(self) -> dict:
        """A JSON-serialisable description, read back by :func:`bijection_from_spec`."""
        raise NotImplementedError


def _as(t: Tensor, like: Tensor) -> Tensor:
    return t.to(dtype=like.dtype, device=like.device)


class IdentityBijection(Bijection):
    """The identity, for parameters that are already unbounded."""

    def __init__(self, dim: int):
        self.dim = int(dim)

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return theta, theta.new_zeros(theta.shape[:-1])

    def inverse(self, u: Tensor) -> Tensor:
        return u

    def spec(self) -> dict:
        return {"type": "identity", "dim": self.dim}


class LogitBijection(Bijection):
    """Interval ``(low, high)`` to the real line: ``u = logit((θ - low) / (high - low))``.

    Args:
        low: Lower bounds, shape (D,).
        high: Upper bounds, shape (D,).
    """

    def __init__(self, low: Tensor, high: Tensor):
        self.low = torch.as_tensor(low, dtype=torch.float64).reshape(-1)
        self.high = torch.as_tensor(high, dtype=torch.float64).reshape(-1)
        self.dim = self.low.numel()

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        low, high = _as(self.low, theta), _as(self.high, theta)
        width = high - low
        p = (theta - low) / width
        eps = torch.finfo(theta.dtype).tiny
        p = p.clamp(eps, 1 - torch.finfo(theta.dtype).eps)
        u = torch.log(p) - torch.log1p(-p)
        # du/dθ = 1 / (width p (1 - p))
        logdet = -(torch.log(width) + torch.log(p) + torch.log1p(-p)).sum(-1)
        return u, logdet

    def inverse(self, u: Tensor) -> Tensor:
        low, high = _as(self.low, u), _as(self.high, u)
        return low + (high - low) * torch.sigmoid(u)

    def spec(self) -> dict:
        return {"type": "logit", "low": self.low.tolist(), "high": self.high.tolist()}


class LogBijection(Bijection):
    """Positive half-line ``(low, ∞)`` to the real line: ``u = log(θ - low)``."""

    def __init__(self, dim: int, low: Tensor | float = 0.0):
        self.dim = int(dim)
        self.low = torch.as_tensor(low, dtype=torch.float64).expand(self.dim).clone()

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        shifted = (theta - _as(self.low, theta)).clamp_min(torch.finfo(theta.dtype).tiny)
        u = torch.log(shifted)
        return u, -u.sum(-1)

    def inverse(self, u: Tensor) -> Tensor:
        return torch.exp(u) + _as(self.low, u)

    def spec(self) -> dict:
        return {"type": "log", "dim": self.dim, "low": self.low.tolist()}


class StackBijection(Bijection):
    """Consecutive segments of the last dimension, each with its own bijection."""

    def __init__(self, parts: Sequence[Bijection]):
        self.parts = list(parts)
        self.sizes = [p.dim for p in self.parts]
        self.dim = sum(self.sizes)

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        outs, logdet = [], theta.new_zeros(theta.shape[:-1])
        for part, chunk in zip(self.parts, theta.split(self.sizes, dim=-1), strict=True):
            u, ld = part.forward(chunk)
            outs.append(u)
            logdet = logdet + ld
        return torch.cat(outs, dim=-1), logdet

    def inverse(self, u: Tensor) -> Tensor:
        chunks = u.split(self.sizes, dim=-1)
        return torch.cat([p.inverse(c) for p, c in zip(self.parts, chunks, strict=True)], -1)

    def spec(self) -> dict:
        return {"type": "stack", "parts": [p.spec() for p in self.parts]}


class TorchTransformBijection(Bijection):
    """Wraps the inverse of ``torch.distributions.biject_to(support)`` for any torch support.

    The transform runs on ``device``, where its support's bounds live (its distribution's
    device; ``None``: wherever its input is), and its results go back to the device of what it
    was given.
    """

    def __init__(
        self,
        transform: torch.distributions.Transform,
        dim: int,
        device: torch.device | str | None = None,
    ):
        self.transform = transform  # maps unconstrained -> constrained
        self.dim = int(dim)
        self.device = None if device is None else torch.device(device)

    def forward(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        value = theta.to(self.device or theta.device)
        u = self.transform.inv(value)
        ld = self.transform.log_abs_det_jacobian(u, value)
        if ld.dim() == theta.dim():  # elementwise transform: sum over the event
            ld = ld.sum(-1)
        return u.to(theta.device), -ld.to(theta.device)

    def inverse(self, u: Tensor) -> Tensor:
        return self.transform(u.to(self.device or u.device)).to(u.device)

    def spec(self) -> dict:
        return {"type": "torch", "dim": self.dim, "transform": repr(self.transform)}


def log_columns(mask: Sequence[bool]) -> Bijection:
    """The log of the columns where ``mask`` is true and the identity elsewhere: a
    :class:`StackBijection` of runs, or a single bijection when there is one run.

    Example:
        >>> log_columns([False, True, True]).spec()["parts"][1]
        {'type': 'log', 'dim': 2, 'low': [0.0, 0.0]}
        >>> log_columns([False, False]).spec()
        {'type': 'identity', 'dim': 2}
    """
    runs: list[list] = []
    for logged in map(bool, mask):
        if runs and runs[-1][0] == logged:
            runs[-1][1] += 1
        else:
            runs.append([logged, 1])
    parts = [LogBijection(n) if logged else IdentityBijection(n) for logged, n in runs]
    return parts[0] if len(parts) == 1 else StackBijection(parts)


def logged_columns(bijection: Bijection) -> list[int]:
    """The columns a bijection built by :func:`log_columns` (or any stack of identities and
    logs) takes the log of."""
    parts = bijection.parts if isinstance(bijection, StackBijection) else [bijection]
    out, start = [], 0
    for part in parts:
        if isinstance(part, LogBijection):
            out.extend(range(start, start + part.dim))
        start += part.dim
    return out


def is_box(bijection: Bijection) -> bool:
    """Whether a bijection maps a box: logit on some dimensions, the identity on the others."""
    if isinstance(bijection, LogitBijection):
        return True
    if isinstance(bijection, StackBijection):
        kinds = [type(p) for p in bijection.parts]
        ok = all(k in (LogitBijection, IdentityBijection) for k in kinds)
        return ok and LogitBijection in kinds
    return False


def bijection_from_spec(spec: dict) -> Bijection:
    """Rebuild a bijection from :meth:`Bijection.spec` (``torch`` ones are not rebuildable)."""
    kind = spec.get("type")
    if kind == "identity":
        return IdentityBijection(spec["dim"])
    if kind == "logit":
        return LogitBijection(torch.tensor(spec["low"]), torch.tensor(spec["high"]))
    if kind == "log":
        return LogBijection(spec["dim"], torch.tensor(spec["low"]))
    if kind == "stack":
        return StackBijection([bijection_from_spec(p) for p in spec["parts"]])
    from sbitk.errors import PriorError

    raise PriorError(f"cannot rebuild a bijection of type {kind!r} from its spec")


__all__ = [
    "Bijection",
    "IdentityBijection",
    "LogBijection",
    "LogitBijection",
    "StackBijection",
    "TorchTransformBijection",
    "bijection_from_spec",
    "is_box",
    "log_columns",
    "logged_columns",
]
