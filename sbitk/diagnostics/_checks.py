"""Input checks shared by the diagnostics: arrays in, clear errors out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sbitk.errors import SbitkError


class DiagnosticInputError(SbitkError, ValueError):
    """A diagnostic was given arrays of the wrong shape, non-finite values or too few samples."""


def as_numpy(value: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """Convert a tensor or array-like to a float64 numpy array and check its rank.

    Args:
        value: a ``torch.Tensor``, numpy array or nested sequence.
        name: what the array is, for error messages.
        ndim: the rank it must have, or ``None`` for any.

    Returns:
        A float64 numpy array (a copy when the input was a tensor).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DiagnosticInputError(
            f"{name} must be a numeric array, found {type(value).__name__}"
        ) from exc
    if ndim is not None and array.ndim != ndim:
        raise DiagnosticInputError(
            f"{name} must have {ndim} dimension(s), found shape {tuple(array.shape)}"
        )
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise when ``array`` holds NaN or infinite values, saying how many."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise DiagnosticInputError(
            f"{name} must be finite, found {int(bad.sum())} non-finite value(s)"
        )


def check_min_count(n: int, minimum: int, name: str) -> None:
    """Raise when fewer than ``minimum`` items were given."""
    if n < minimum:
        raise DiagnosticInputError(f"{name} needs at least {minimum} samples, found {n}")


def check_level(alpha: float, name: str = "alpha") -> None:
    """Raise unless ``0 < alpha < 1``."""
    if not 0.0 < float(alpha) < 1.0:
        raise DiagnosticInputError(f"{name} must lie in (0, 1), found {alpha}")
