"""Input checks and small helpers shared by the classical estimators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.nn.devices import draw_device


def check_rows(x: Tensor, owner: str, min_rows: int = 2, dim: int | None = None) -> Tensor:
    """``x`` as a finite floating (N, D) tensor with at least ``min_rows`` rows."""
    if not isinstance(x, Tensor):
        raise SbitkError(f"{owner}: expected a tensor (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise SbitkError(f"{owner}: expected samples (N, D), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise SbitkError(f"{owner}: expected D = {dim}, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise SbitkError(f"{owner}: needs at least {min_rows} rows, got {x.shape[0]}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not bool(torch.isfinite(x).all()):
        raise SbitkError(f"{owner}: samples must be finite, found NaN or inf")
    return x


def check_points(x: Tensor, owner: str, dim: int, like: Tensor) -> Tensor:
    """``x`` of shape (..., ``dim``) in the dtype and on the device of ``like``."""
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise SbitkError(f"{owner}: expected points (..., {dim}), got {shape}")
    return x.to(like)


def check_fitted(value: object, owner: str) -> None:
    """Raise unless the estimator has been fitted (``value`` is its fitted state)."""
    if value is None:
        raise SbitkError(f"{owner} is not fitted: call fit(x) first")


def sample_size(shape: Sequence[int] | int) -> tuple[tuple[int, ...], int]:
    """``shape`` as a tuple and the number of draws it holds."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise SbitkError(f"sample shape must be non-negative, got {shape}")
    n = 1
    for s in shape:
        n *= s
    return shape, n


def categories(weights: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` indices drawn with probability proportional to ``weights`` (K,), on their device
    (drawn on the generator's device, as :func:`~sbitk.nn.devices.draw_device` says)."""
    device = draw_device(weights, generator)
    picks = torch.multinomial(weights.to(device), n, replacement=True, generator=generator)
    return picks.to(weights.device)
