"""Coupling transforms and the coupling flows NICE, RealNVP and Glow.

A coupling splits x into an identity part and a transformed part; a conditioner network reads
the identity part (and the context) and outputs the parameters of an elementwise monotone map
applied to the transformed part. The Jacobian is triangular, so the log-determinant is the sum
of the elementwise ones, and the inverse is one pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sbitk.models.flows.flow import Flow, FlowConfig, FlowError, make_config
from sbitk.models.flows.transforms import (
    ActNorm,
    AdditiveMap,
    AffineMap,
    ElementwiseMap,
    LULinear,
    Scale,
    Transform,
)
from sbitk.nn.mlp import MLP, GatedResidualMLP

#: Conditioner networks of a coupling, by the names configs use.
CONDITIONERS = ("mlp", "residual")


class Coupling(Transform):
    """Coupling transform: ``y_B = g(x_B; θ(x_A, c))``, ``y_A = x_A``.

    The split is at ``D // 2`` (A first) or, with ``flip``, at ``D - D // 2`` (B first), so
    alternating ``flip`` transforms every dimension; with D = 1 the single dimension is
    transformed conditioned on the context alone.

    Args:
        features: Dimension D.
        context: Context size C seen by the conditioner (0: none).
        map: The elementwise monotone map g.
        hidden_features: Hidden layer sizes of the conditioner.
        activation: Activation of the conditioner.
        flip: Transform the first part instead of the second.
        conditioner: ``"mlp"`` (:class:`~sbitk.nn.mlp.MLP`) or ``"residual"``
            (:class:`~sbitk.nn.mlp.GatedResidualMLP`, which starts as a linear map).

    Example:
        >>> t = Coupling(3, 2, AffineMap(), hidden_features=(8,))
        >>> x, c = torch.randn(5, 3), torch.randn(5, 2)
        >>> z, ld = t(x, c)
        >>> torch.allclose(t.inverse(z, c), x, atol=1e-6)
        True
    """

    def __init__(
        self,
        features: int,
        context: int,
        map: ElementwiseMap,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
        flip: bool = False,
        conditioner: str = "mlp",
    ):
        super().__init__()
        if conditioner not in CONDITIONERS:
            raise FlowError(
                f"coupling: expected conditioner among {list(CONDITIONERS)}, found {conditioner!r}"
            )
        self.map, self.flip = map, bool(flip)
        self.split = features - features // 2 if flip else features // 2
        n_identity = features - self.split if flip else self.split
        self.n_transformed = features - n_identity
        out = self.n_transformed * map.params
        if n_identity + context > 0:
            if conditioner == "residual":
                self.conditioner = GatedResidualMLP(
                    n_identity, context, out, hidden_features, activation
                )
            else:
                self.conditioner = MLP(n_identity + context, out, hidden_features, activation)
            self.constant = None
        else:  # nothing to condition on: the parameters themselves are learned
            self.conditioner = None
            self.constant = nn.Parameter(0.1 * torch.randn(out))

    def extra_repr(self) -> str:
        return f"split={self.split}, flip={self.flip}, map={self.map!r}"

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = x[..., : self.split], x[..., self.split :]
        return (hi, lo) if self.flip else (lo, hi)

    def _join(self, identity: Tensor, transformed: Tensor) -> Tensor:
        parts = (transformed, identity) if self.flip else (identity, transformed)
        return torch.cat(parts, dim=-1)

    def _params(self, identity: Tensor, context: Tensor | None) -> Tensor:
        if self.conditioner is None:
            shape = identity.shape[:-1] if context is None else context.shape[:-1]
            p = self.constant.expand(*torch.broadcast_shapes(identity.shape[:-1], shape), -1)
        else:
            p = self.conditioner.forward_pair(identity, context)
        return p.unflatten(-1, (self.n_transformed, self.map.params))

    def _param_major(self, identity: Tensor, context: Tensor | None) -> Tensor | None:
        """The map's parameters (P, n_transformed, *rows), parameter index first and contiguous,
        for maps that take them so (splines); None for the others.

        The conditioner's output layer computes them in this layout directly, as the
        transposed product ``W h^T`` with W's rows reordered, so no transposing copy is made.
        """
        if self.conditioner is None or not hasattr(self.map, "param_major"):
            return None
        rows = identity.shape[:-1]
        if context is not None:
            rows = torch.broadcast_shapes(rows, context.shape[:-1])
        h = self.conditioner.hidden_pair(identity, context)
        h = h.expand(*rows, h.shape[-1]).reshape(-1, h.shape[-1])
        layer = self.conditioner.output_layer
        order = self.param_order
        out = torch.addmm(layer.bias[order].unsqueeze(-1), layer.weight[order], h.T)
        return out.view(self.map.params, self.n_transformed, *rows)

    @property
    def param_order(self) -> Tensor:
        """Output rows in (parameter, dimension) order; the conditioner's are (dimension,
        parameter)."""
        n, p = self.n_transformed, self.map.params
        device = self.conditioner.output_layer.weight.device
        return torch.arange(n * p, device=device).view(n, p).T.reshape(-1)

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool, log_det: bool):
        """(y, summed log-det or None) of the map's forward or inverse on ``x``."""
        identity, transformed = self._parts(x)
        pm = self._param_major(identity, context)
        if pm is not None:
            rows = pm.shape[2:]
            t = transformed.expand(*rows, -1).movedim(-1, 0)
            y, ld = self.map.param_major(t, pm, inverse=inverse, log_det=log_det)
            y = y.movedim(0, -1)
            ld = None if ld is None else ld.sum(0)
        else:
            p = self._params(identity, context)
            t = transformed.expand(*p.shape[:-2], -1)
            if inverse and not log_det and hasattr(self.map, "inverse_value"):
                y, ld = self.map.inverse_value(t, p), None
            else:
                y, ld = (self.map.inverse if inverse else self.map.forward)(t, p)
                ld = ld.sum(-1)
        return self._join(identity.expand(*y.shape[:-1], -1), y), ld

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, inverse=False, log_det=True)

    def inverse_and_log_det(
        self, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._transform(z, context, inverse=True, log_det=True)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self._transform(z, context, inverse=True, log_det=False)[0]


def coupling_steps(
    flow: Flow, make_map, prefix=lambda i: [], conditioner: str = "mlp"
) -> list[Transform]:
    """``transforms`` coupling steps separated by the configured permutations.

    Without permutations (``"none"``, or ``"lu"`` whose linear maps start at the identity) the
    split alternates, so that every dimension is transformed; with them it stays fixed
    (alternating on top of a swap would undo it).
    """
    cfg, steps = flow.config, []
    alternate = cfg.permutation in ("none", "lu")
    for i in range(cfg.transforms):
        if i > 0:
            steps += flow.permutation()
        steps += prefix(i)
        steps.append(
            Coupling(
                cfg.features,
                flow.embedded_context,
                make_map(),
                cfg.hidden_features,
                cfg.activation,
                flip=alternate and bool(i % 2),
                conditioner=conditioner,
            )
        )
    return steps


@dataclasses.dataclass(frozen=True)
class NICEConfig(FlowConfig):
    """Config of :class:`NICE` (the fields of :class:`FlowConfig`)."""


class NICE(Flow):
    """NICE: additive couplings followed by a learned diagonal scaling.

    The couplings preserve volume; the final per-dimension scaling is what lets the density
    concentrate, as in the original paper.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`NICEConfig` (``transforms``, ``hidden_features``,
            ``activation``, ``permutation``, ``seed``).

    References:
        Dinh, Krueger and Bengio, "NICE: Non-linear independent components estimation" (2014),
        arXiv:1410.8516.

    Example:
        >>> flow = NICE(2, transforms=2, hidden_features=(8,))
        >>> flow().sample((3,)).shape
        torch.Size([3, 2])
    """

    config_class = NICEConfig

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        embedding: nn.Module | Mapping | None = None,
        **options,
    ):
        super().__init__(make_config(NICEConfig, features, context, options), embedding)

    def build(self) -> list[Transform]:
        return [*coupling_steps(self, AdditiveMap), Scale(self.features)]


@dataclasses.dataclass(frozen=True)
class RealNVPConfig(FlowConfig):
    """Config of :class:`RealNVP`: :class:`FlowConfig` and ``scale_bound`` (on |log scale|)."""

    scale_bound: float = 3.0


class RealNVP(Flow):
    """RealNVP: affine couplings with a bounded log-scale.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`RealNVPConfig`.

    References:
        Dinh, Sohl-Dickstein and Bengio, "Density estimation using Real NVP" (2016),
        arXiv:1605.08803.

    Example:
        >>> flow = RealNVP(2, 3, transforms=2, hidden_features=(8,))
        >>> flow(torch.zeros(4, 3)).sample((5,)).shape
        torch.Size([5, 4, 2])
    """

    config_class = RealNVPConfig

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        embedding: nn.Module | Mapping | None = None,
        **options,
    ):
        super().__init__(make_config(RealNVPConfig, features, context, options), embedding)

    def build(self) -> list[Transform]:
        return coupling_steps(self, lambda: AffineMap(self.config.scale_bound))


@dataclasses.dataclass(frozen=True)
class GlowConfig(FlowConfig):
    """Config of :class:`Glow`: :class:`FlowConfig`, ``scale_bound``; no permutation (LU mixes)."""

    scale_bound: float = 3.0
    permutation: str = "none"


class Glow(Flow):
    """Glow-style steps: ActNorm → invertible linear (LU) → affine coupling.

    ActNorm initialises itself from the first training batch it sees (first forward in training
    mode), so the training engine needs no extra call for it.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`GlowConfig`.

    References:
        Kingma and Dhariwal, "Glow: Generative flow with invertible 1x1 convolutions" (2018),
        arXiv:1807.03039.

    Example:
        >>> flow = Glow(3, transforms=2, hidden_features=(8,))
        >>> flow.loss(torch.randn(10, 3)).shape
        torch.Size([10])
    """

    config_class = GlowConfig

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        embedding: nn.Module | Mapping | None = None,
        **options,
    ):
        super().__init__(make_config(GlowConfig, features, context, options), embedding)

    def build(self) -> list[Transform]:
        d = self.features
        return coupling_steps(
            self,
            lambda: AffineMap(self.config.scale_bound),
            prefix=lambda i: [ActNorm(d), LULinear(d, self.generator)],
        )


__all__ = [
    "Coupling",
    "Glow",
    "GlowConfig",
    "NICE",
    "NICEConfig",
    "RealNVP",
    "RealNVPConfig",
]
