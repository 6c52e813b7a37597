"""Masked autoregressive transforms and the masked autoregressive flow (MAF).

Dimension i's elementwise map takes its parameters from a MADE that sees ``x_{<i}`` and the
context. The forward (data → latent, what training needs) is one pass; the inverse (sampling)
needs D sequential passes, since ``x_i`` depends on the already inverted ``x_{<i}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sbitk.models.flows.flow import Flow, FlowConfig, make_config
from sbitk.models.flows.transforms import AffineMap, ElementwiseMap, RandomPermutation, Transform
from sbitk.nn.made import MADE


class MaskedAutoregressive(Transform):
    """Autoregressive transform ``z_i = g(x_i; θ_i(x_{<i}, c))`` with a MADE conditioner.

    Args:
        features: Dimension D.
        context: Context size C (0: none).
        map: The elementwise monotone map g.
        hidden_features: Hidden layer sizes of the MADE.
        activation: Activation of the MADE.
        order: Autoregressive rank (1..D) of each position; ``1..D`` by default.

    References:
        Papamakarios, Pavlakou and Murray, "Masked autoregressive flow for density estimation"
        (2017), arXiv:1705.07057.

    Example:
        >>> t = MaskedAutoregressive(3, 0, AffineMap(), hidden_features=(16,))
        >>> x = torch.randn(5, 3)
        >>> z, ld = t(x)
        >>> torch.allclose(t.inverse(z), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context: int,
        map: ElementwiseMap,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
        order: Sequence[int] | Tensor | None = None,
    ):
        super().__init__()
        self.map, self.features = map, int(features)
        self.made = MADE(features, map.params, context, hidden_features, activation, order)

    def extra_repr(self) -> str:
        return f"order={list(self.made.order)}, map={self.map!r}"

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.made(x, context)
        x = x.expand(*p.shape[:-2], -1)
        z, ld = self.map.forward(x, p)
        return z, ld.sum(-1)

    def inverse_and_log_det(
        self, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        # the context's share of the first layer is the same in all D passes
        term = self.made.context_term(context)
        weights = self.made.masked_weights()  # the same in every pass, too
        x = torch.zeros_like(z)
        for _ in range(self.features):  # after pass k, the dimensions of rank <= k are exact
            x, ld = self.map.inverse(z, self.made(x, context_term=term, weights=weights))
        return x, ld.sum(-1)


@dataclasses.dataclass(frozen=True)
class MAFConfig(FlowConfig):
    """Config of :class:`MAF`: :class:`FlowConfig` and ``scale_bound``; reverse permutations."""

    permutation: str = "reverse"
    scale_bound: float = 3.0


class MAF(Flow):
    """Masked autoregressive flow: affine MADE transforms with permutations between them.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`MAFConfig`.

    References:
        Papamakarios, Pavlakou and Murray, "Masked autoregressive flow for density estimation"
        (2017), arXiv:1705.07057.

    Example:
        >>> flow = MAF(2, 1, transforms=2, hidden_features=(8,))
        >>> x, log_q = flow(torch.zeros(1)).sample_and_log_prob((4,))
        >>> x.shape, log_q.shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    config_class = MAFConfig

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        embedding: nn.Module | Mapping | None = None,
        **options,
    ):
        super().__init__(make_config(MAFConfig, features, context, options), embedding)

    def build(self) -> list[Transform]:
        return autoregressive_steps(self, lambda: AffineMap(self.config.scale_bound))


def autoregressive_steps(flow: Flow, make_map) -> list[Transform]:
    """``transforms`` autoregressive steps whose orders follow the configured permutation.

    The permutation between steps is folded into each MADE's order (reversed or shuffled
    ranks), which is equivalent to a permutation transform and costs no indexing. With
    ``"lu"`` the orders alternate and a learnt linear map (identity at first) sits between steps.
    """
    cfg, steps = flow.config, []
    order = torch.arange(1, cfg.features + 1)
    for i in range(cfg.transforms):
        if i > 0 and cfg.features > 1:
            if cfg.permutation == "lu":
                steps += flow.permutation()
                order = order.flip(0)
            elif cfg.permutation == "reverse":
                order = order.flip(0)
            elif cfg.permutation == "random":
                order = order[RandomPermutation(cfg.features, flow.generator).perm]
        steps.append(
            MaskedAutoregressive(
                cfg.features,
                flow.embedded_context,
                make_map(),
                cfg.hidden_features,
                cfg.activation,
                order=order.clone(),
            )
        )
    return steps


__all__ = ["MAF", "MAFConfig", "MaskedAutoregressive", "autoregressive_steps"]
