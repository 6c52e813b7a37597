"""Dense networks: a plain multi-layer perceptron and a residual one."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sbitk.errors import SbitkError

#: Activation functions by name, the names configs and the command line use.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """Return a fresh activation module by its name in :data:`ACTIVATIONS`.

    Args:
        name: One of ``relu``, ``elu``, ``gelu``, ``silu``, ``tanh``.
        inplace: Overwrite the input where the activation supports it (relu, elu, silu). Only
            safe on a fresh tensor that nothing else needs, such as a linear layer's output.

    Returns:
        The activation module.
    """
    if name not in ACTIVATIONS:
        raise SbitkError(f"activation: expected one of {sorted(ACTIVATIONS)}, found {name!r}")
    if inplace and name in ("relu", "elu", "silu"):
        return ACTIVATIONS[name](inplace=True)
    return ACTIVATIONS[name]()


def compact(t: Tensor | None) -> Tensor | None:
    """``t`` with every expanded (stride-0) leading dimension narrowed to size 1.

    A context expanded over samples, ``(n, B, C)`` with stride 0 along ``n``, then costs one
    matrix product per context rather than per sample; the result broadcasts back.

    Example:
        >>> import torch
        >>> compact(torch.zeros(4, 3).expand(100, 4, 3)).shape
        torch.Size([1, 4, 3])
    """
    if t is None:
        return None
    for dim in range(t.dim() - 1):
        if t.stride(dim) == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return t


class MLP(nn.Sequential):
    """Multi-layer perceptron ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden_features: Sizes of the hidden layers.
        activation: Name of the activation between layers.

    Example:
        >>> import torch
        >>> net = MLP(3, 2, hidden_features=(8, 8))
        >>> net(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
    ):
        sizes = [int(in_features), *map(int, hidden_features), int(out_features)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            if i > 0:  # in place: each activation reads a linear layer's fresh output
                layers.append(make_activation(activation, inplace=True))
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)
        self.in_features = sizes[0]
        self.out_features = sizes[-1]

    def forward_pair(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The MLP of ``cat([x, context], -1)`` without building the concatenation.

        The first layer is split into its ``x`` and ``context`` columns, and the context part
        is computed once per distinct context (see :func:`compact`): sampling n draws for each
        of B contexts costs B context products, not n·B.

        Args:
            x: Inputs (*, A).
            context: Context (*, C) with ``A + C == in_features``, or None (then ``A`` must be
                ``in_features``).
        """
        if context is None:
            return self(x)
        first, a = self[0], x.shape[-1]
        h = F.linear(compact(context), first.weight[:, a:], first.bias)
        if a > 0:
            h = F.linear(x, first.weight[:, :a]) + h
        for layer in list(self)[1:]:  # in-place activations are safe: h is a fresh result
            h = layer(h)
        rows = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        return h.expand(*rows, h.shape[-1])


class _ResidualBlock(nn.Module):
    def __init__(self, features: int, activation: str):
        super().__init__()
        self.net = nn.Sequential(
            make_activation(activation),
            nn.Linear(features, features),
            make_activation(activation),
            nn.Linear(features, features),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ResidualMLP(nn.Module):
    """Residual perceptron: linear in, ``blocks`` pre-activation residual blocks, linear out.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden_features: Width of the residual stream.
        blocks: Number of residual blocks (two linear layers each).
        activation: Name of the activation.

    References:
        He et al., "Identity mappings in deep residual networks" (2016), arXiv:1603.05027.

    Example:
        >>> import torch
        >>> ResidualMLP(3, 2, hidden_features=8, blocks=2)(torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 64,
        blocks: int = 2,
        activation: str = "relu",
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.input = nn.Linear(self.in_features, hidden_features)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden_features, activation) for _ in range(blocks)]
        )
        self.output = nn.Sequential(
            make_activation(activation), nn.Linear(hidden_features, self.out_features)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``x`` (*, in_features) to (*, out_features)."""
        return self.output(self.blocks(self.input(x)))


__all__ = [
    "ACTIVATIONS",
    "MLP",
    "ResidualMLP",
    "compact",
    "make_activation",
]
