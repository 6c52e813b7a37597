"""Plumbing that estimators z-scoring their inputs and context share (not part of the contract).

Example:
    >>> import torch
    >>> class Mean(StandardizedEstimator):
    ...     def __init__(self, features, context=0):
    ...         super().__init__(features, context)
    >>> model = Mean.from_config({"features": 2, "context": 1})
    >>> model.fit_standardization(torch.randn(100, 2), torch.randn(100, 1)).standardized_context(
    ...     torch.zeros(3, 1)).shape
    torch.Size([3, 1])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Self

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.nn.standardize import Standardize

#: Seed of the fixed draws (times, noise, orders) that make an estimator's validation loss the
#: same function every epoch (common random numbers), so that epochs are compared fairly.
VALIDATION_SEED = 1234


def build_config(config_class: type, features: int, context: int, options: Mapping) -> Any:
    """``config_class(features, context, **options)``, JSON lists read as tuples; an unknown or
    missing option is an :class:`SbitkError` naming the class."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return config_class(int(features), int(context), **options)
    except TypeError as exc:
        raise SbitkError(f"{config_class.__name__}: {exc}") from None


def rebuild(cls: type, config: Any) -> Any:
    """``cls(features, context, **options)`` from a config dataclass or its dict (a model
    file's JSON, whose lists become tuples): the ``from_config`` of estimators built that way."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config).items()}
    return cls(options.pop("features"), options.pop("context", 0), **options)


def check_inputs(
    a: Tensor, features: int, batch_shape: torch.Size, error: type[SbitkError] = SbitkError
) -> torch.Size:
    """The broadcast leading shape of ``log_prob`` inputs ``a`` (..., *batch_shape, D), or a
    one-line ``error`` saying what is wrong with their shape."""
    if a.dim() == 0 or a.shape[-1] != features:
        raise error(
            f"log_prob: expected inputs with last dimension {features}, found shape "
            f"{tuple(a.shape)}"
        )
    try:
        return torch.broadcast_shapes(a.shape[:-1], batch_shape)
    except RuntimeError:
        raise error(
            f"log_prob: inputs of shape {tuple(a.shape)} do not broadcast with the batch of "
            f"contexts {tuple(batch_shape)}"
        ) from None


class StandardizedEstimator(nn.Module):
    """Base of estimators built as ``cls(features, context, **options)`` that z-score the
    modelled vector (:attr:`inputs`) and the context (:attr:`context_standardization`)."""

    def __init__(self, features: int, context: int):
        super().__init__()
        if features < 1 or context < 0:
            raise SbitkError(
                f"{type(self).__name__}: expected features >= 1 and context >= 0, found "
                f"{features} and {context}"
            )
        self.inputs = Standardize(features)
        self.context_standardization = Standardize(context) if context else None

    @classmethod
    def from_config(cls, config: Mapping) -> Self:
        """Rebuild from a config (or its dict: JSON lists become tuples)."""
        return rebuild(cls, config)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> Self:
        """Set the z-scoring statistics from the training rows."""
        self.inputs.fit(inputs)
        if self.context_standardization is not None and context is not None:
            self.context_standardization.fit(context)
        return self

    def standardized_context(self, context: Tensor | None) -> Tensor | None:
        """The z-scored context (*, C), or None for an unconditional model; checks the shape."""
        name = type(self).__name__
        if self.context_standardization is None:
            if context is not None:
                raise SbitkError(f"{name}: this estimator is unconditional; pass no context")
            return None
        c = self.context_standardization.features
        if context is None or context.dim() == 0 or context.shape[-1] != c:
            found = None if context is None else tuple(context.shape)
            raise SbitkError(f"{name}: expected a context of shape (*, {c}), found {found}")
        return self.context_standardization(context)


@torch.no_grad()
def linear_gaussian_fit(
    z: Tensor, c: Tensor | None, name: str
) -> tuple[Tensor | None, Tensor, Tensor]:
    """The least-squares regression of rows z (N, D) on a context c (N, C) or None, in float64:
    its weight (C, D) (None without a context), its bias (D,) and the covariance (D, D) of its
    residuals. Rows with a non-finite entry are left out; ``name`` heads the error for fewer
    than 2 finite rows."""
    z, c = _finite_rows(z, c)
    if z.shape[0] < 2:
        raise SbitkError(f"{name}: expected at least 2 finite rows")
    weight = None
    if c is None:
        bias = z.mean(0)
    else:
        design = torch.cat([c, torch.ones_like(z[:, :1])], -1)
        coef = torch.linalg.lstsq(design, z).solution
        weight, bias = coef[:-1], coef[-1]
    residual = z - bias if weight is None else z - c @ weight - bias
    return weight, bias, residual.T @ residual / max(z.shape[0] - 1, 1)


def _finite_rows(z: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The rows of z (N, D) and c (N, C) or None where both are finite, in float64."""
    z = z.double()
    rows = torch.isfinite(z).all(-1)
    if c is not None:
        c = c.double()
        rows &= torch.isfinite(c).all(-1)
        c = c[rows]
    return z[rows], c


@torch.no_grad()
def residual_departure(
    z: Tensor, c: Tensor | None, weight: Tensor | None, bias: Tensor, cov: Tensor
) -> tuple[float, float]:
    r"""How far the residuals of a linear-Gaussian fit (:func:`linear_gaussian_fit`) of rows z
    (N, D) on a context c (N, C) or None are from one Gaussian for every context.

    Returns the largest departure of a kurtosis from a Gaussian's, :math:`|\kappa / 3 - 1|`,
    along the eigen-directions of the residuals' covariance; and the largest share of the
    variance of a direction's squared residual that a regression on the context and its
    squares explains (adjusted R², 0 without a context): how much the spread changes with
    the context. ``inf`` for a degenerate covariance or too few rows to tell. Computed on the
    CPU, whose least squares cut a rank-deficient design's small singular values (the squares
    of a context's near-collinear columns leave it so: on sir a condition number of 10^15).
    """
    z, c = _finite_rows(z.cpu(), None if c is None else c.cpu())
    weight, bias = (None if weight is None else weight.cpu().double()), bias.cpu().double()
    residual = z - bias if weight is None else z - c @ weight - bias
    variances, basis = torch.linalg.eigh(cov.double().cpu())
    n, regressors = z.shape[0], 0 if c is None else 2 * c.shape[1]
    if n <= 2 * (regressors + 1) or n < 100 or variances.min() <= 1e-12 * variances.max():
        return math.inf, math.inf
    u = residual @ basis / variances.sqrt()
    kurtosis = (u.pow(4).mean(0) / 3 - 1).abs().max().item()
    if c is None:
        return kurtosis, 0.0
    design = torch.cat([c, c.square(), torch.ones_like(c[:, :1])], -1)
    square = u.square()
    fitted = design @ torch.linalg.lstsq(design, square, rcond=1e-10, driver="gelsd").solution
    unexplained = (square - fitted).square().sum(0) / (square - square.mean(0)).square().sum(0)
    adjusted = 1 - unexplained * (n - 1) / (n - regressors - 1)
    return kurtosis, adjusted.max().item()


__all__ = [
    "VALIDATION_SEED",
    "StandardizedEstimator",
    "build_config",
    "check_inputs",
    "linear_gaussian_fit",
    "rebuild",
    "residual_departure",
]
