"""A conditional Gaussian estimator: the exact family of linear-Gaussian problems, a baseline.

Example:
    >>> import torch
    >>> model = ConditionalGaussian(2, 3)
    >>> model(torch.zeros(4, 3)).sample((5,)).shape
    torch.Size([5, 4, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import AffineTransform, TransformedDistribution
from torch.distributions import MultivariateNormal as TorchMVN

from sbitk.errors import SbitkError
from sbitk.models.base import check_inputs
from sbitk.models.contract import EXACT


@dataclass(frozen=True)
class GaussianConfig:
    """Constructor arguments of :class:`ConditionalGaussian`."""

    features: int
    context: int = 0
    hidden_features: tuple[int, ...] = (64, 64)
    full_covariance: bool = True


class ConditionalGaussian(nn.Module):
    """A Gaussian :math:`q(a \\mid c) = \\mathcal{N}(a; \\mu(c), L(c) L(c)^\\top)`.

    Mean and Cholesky factor come from an MLP of the standardised context. It is the exact family
    for linear-Gaussian problems and a quick baseline elsewhere. Its loss is
    :math:`\\ell(a \\mid c) = -\\log q(a \\mid c)`.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        hidden_features: Widths of the MLP's hidden layers.
        full_covariance: A full Cholesky factor; otherwise a diagonal one.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = GaussianConfig
    density: ClassVar[str] = EXACT

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        hidden_features: tuple[int, ...] | list[int] = (64, 64),
        full_covariance: bool = True,
    ):
        super().__init__()
        if features < 1 or context < 0:
            raise SbitkError(
                f"ConditionalGaussian needs features >= 1 and context >= 0, got {features}, "
                f"{context}"
            )
        self.config = GaussianConfig(features, context, tuple(hidden_features), full_covariance)
        d = features
        self.n_tril = d * (d + 1) // 2 if full_covariance else d
        out = d + self.n_tril
        if context > 0:
            layers: list[nn.Module] = []
            width = context
            for h in hidden_features:
                layers += [nn.Linear(width, h), nn.ELU()]
                width = h
            layers.append(nn.Linear(width, out))
            self.net = nn.Sequential(*layers)
        else:
            self.params = nn.Parameter(torch.zeros(out))
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_std", torch.ones(d))
        self.register_buffer("context_mean", torch.zeros(max(context, 1)))
        self.register_buffer("context_std", torch.ones(max(context, 1)))
        rows, cols = torch.tril_indices(d, d) if full_covariance else (torch.arange(d),) * 2
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @classmethod
    def from_config(cls, config: dict) -> ConditionalGaussian:
        cfg = dict(config)
        return cls(cfg.pop("features"), cfg.pop("context", 0), **cfg)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> None:
        """Set the z-scoring buffers from training rows (constant columns keep scale 1)."""
        self.input_mean.copy_(inputs.mean(0))
        self.input_std.copy_(_safe_std(inputs))
        if context is not None and self.config.context > 0:
            self.context_mean.copy_(context.mean(0))
            self.context_std.copy_(_safe_std(context))

    def forward(self, context: Tensor | None = None) -> TransformedDistribution:
        """The distribution of the modelled vector given ``context`` (*, C): batch shape (*)."""
        d = self.config.features
        if self.config.context > 0:
            if context is None:
                raise SbitkError("this estimator is conditional: pass a context")
            h = self.net((context - self.context_mean) / self.context_std)
        else:
            h = self.params
        loc, raw = h[..., :d], h[..., d:]
        tril = raw.new_zeros(*raw.shape[:-1], d, d)
        diag = self._rows == self._cols
        # Softplus keeps the diagonal positive; the small floor keeps it invertible.
        vals = torch.where(diag, nn.functional.softplus(raw + 0.5413) + 1e-4, raw)
        tril[..., self._rows, self._cols] = vals
        base = TorchMVN(loc, scale_tril=tril)
        return _Gaussian(base, [AffineTransform(self.input_mean, self.input_std, event_dim=1)])

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative log density of ``inputs`` (B, D) given ``context`` (B, C): shape (B,)."""
        return -self(context).log_prob(inputs)


class _Gaussian(TransformedDistribution):
    """torch's distribution, with inputs of the wrong shape refused in one line."""

    def log_prob(self, value: Tensor) -> Tensor:
        check_inputs(value, self.event_shape[0], self.batch_shape)
        return super().log_prob(value)


def _safe_std(t: Tensor) -> Tensor:
    std = t.std(0) if t.shape[0] > 1 else torch.ones_like(t[0])
    return torch.where(std > 1e-8, std, torch.ones_like(std))


__all__ = ["ConditionalGaussian", "GaussianConfig"]
