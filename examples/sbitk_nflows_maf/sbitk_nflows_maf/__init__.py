r"""nflows' masked autoregressive flow as an sbitk estimator, registered from outside sbitk.

The flow is :math:`q(a \mid c) = \mathcal{N}(f(s(a); s'(c)); 0, I)\,|\det J_f|\,|\det J_s|`
with :math:`f` a stack of MADE affine autoregressive transforms (Papamakarios et al. 2017,
arXiv:1705.07057) built from nflows' parts, and :math:`s, s'` the z-scorings of the inputs and
the context that sbitk's estimators fit from the training rows. The package's
``pyproject.toml`` registers :class:`NflowsMAF` as ``nflows_maf`` in the entry-point group
``sbitk.estimators``; that line is all sbitk needs.

Example:
    >>> import torch
    >>> model = NflowsMAF(2, 3, transforms=2, hidden_features=16)
    >>> model(torch.zeros(4, 3)).sample((5,)).shape
    torch.Size([5, 4, 2])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    ReversePermutation,
)
from torch import Tensor, nn

from sbitk.nn.standardize import Standardize


@dataclasses.dataclass(frozen=True)
class NflowsMAFConfig:
    """Constructor arguments of :class:`NflowsMAF`."""

    features: int
    context: int = 0
    transforms: int = 5
    hidden_features: int = 50


class NflowsMAF(nn.Module):
    """A conditional masked autoregressive flow made of nflows transforms.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        transforms: Number of autoregressive transforms (reversed order between them).
        hidden_features: Width of each MADE.
    """

    density: ClassVar[str] = "exact"

    def __init__(
        self, features: int, context: int = 0, *, transforms: int = 5, hidden_features: int = 50
    ):
        super().__init__()
        self.config = NflowsMAFConfig(features, context, transforms, hidden_features)
        steps = []
        for _ in range(transforms):
            steps += [
                MaskedAffineAutoregressiveTransform(
                    features, hidden_features, context_features=context or None
                ),
                ReversePermutation(features),
            ]
        self.flow = Flow(CompositeTransform(steps), StandardNormal([features]))
        self.inputs = Standardize(features)
        self.context = Standardize(context) if context else None

    @classmethod
    def from_config(cls, config: Mapping) -> NflowsMAF:
        options = dict(config)
        return cls(options.pop("features"), options.pop("context", 0), **options)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> NflowsMAF:
        self.inputs.fit(inputs)
        if self.context is not None and context is not None:
            self.context.fit(context)
        return self

    def forward(self, context: Tensor | None = None) -> MAFDistribution:
        """The distribution of the inputs given ``context`` (*, C): batch shape (*)."""
        if self.context is None:
            return MAFDistribution(self, None)
        return MAFDistribution(self, self.context(context))

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative log density of ``inputs`` (B, D) given ``context`` (B, C): shape (B,)."""
        return -self(context).log_prob(inputs)


class MAFDistribution:
    """:math:`q(a \\mid c)` for a fixed batch of standardised contexts (*, C)."""

    def __init__(self, model: NflowsMAF, context: Tensor | None):
        self.model, self.context = model, context
        self.batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.event_shape = torch.Size((model.config.features,))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = ()) -> Tensor:
        """Samples ``(*shape, *batch_shape, D)``."""
        n, d = int(torch.Size(shape).numel()), self.model.config.features
        if self.context is None:
            z = self.model.flow.sample(n)  # (n, D)
        else:
            flat = self.context.reshape(-1, self.context.shape[-1])
            z = self.model.flow.sample(n, context=flat).transpose(0, 1)  # (n, B, D)
        a = self.model.inputs.inverse(z)
        return a.reshape(*shape, *self.batch_shape, d)

    def log_prob(self, a: Tensor) -> Tensor:
        """Log density of ``a`` (..., *batch_shape, D): shape (..., *batch_shape)."""
        d = self.model.config.features
        shape = torch.broadcast_shapes(a.shape[:-1], self.batch_shape)
        z = self.model.inputs(a.expand(*shape, d)).reshape(-1, d)
        context = None
        if self.context is not None:
            c = self.context.shape[-1]
            context = self.context.expand(*shape, c).reshape(-1, c)
        log_q = self.model.flow.log_prob(z, context=context) + self.model.inputs.log_abs_det()
        return log_q.reshape(shape)
