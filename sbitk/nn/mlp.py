"""Dense networks: a plain multi-layer perceptron, a residual one, and a gated residual
conditioner."""

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


def linear_pair(layer: nn.Linear, x: Tensor, context: Tensor) -> Tensor:
    """``layer(cat([x, context], -1))`` as two products, without the concatenation; with a
    compacted context (:func:`compact`) its product is made once per distinct context."""
    a = x.shape[-1]
    h = F.linear(context, layer.weight[:, a:], layer.bias)
    return F.linear(x, layer.weight[:, :a]) + h if a > 0 else h


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

    @property
    def output_layer(self) -> nn.Linear:
        """The last linear layer (see :meth:`hidden_pair`)."""
        return self[-1]

    def hidden_pair(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The input of :attr:`output_layer` for ``cat([x, context], -1)``.

        Its leading shape broadcasts against the rows of ``x`` and ``context`` but may be
        narrower, where only the context varies (see :meth:`forward_pair`).
        """
        if len(self) == 1:  # no hidden layer: the output layer reads the inputs themselves
            if context is None:
                return x
            rows = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            return torch.cat([x.expand(*rows, -1), context.expand(*rows, -1)], -1)
        return self._through(x, context, len(self) - 1)

    def _through(self, x: Tensor, context: Tensor | None, stop: int) -> Tensor:
        """Layers ``0 .. stop-1`` of ``cat([x, context], -1)``, the context part once per
        distinct context."""
        if context is None:
            h, start = x, 0
        else:
            h, start = linear_pair(self[0], x, compact(context)), 1
        for layer in list(self)[start:stop]:  # in-place activations are safe: h is fresh
            h = layer(h)
        return h

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
        h = self._through(x, context, len(self))
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


class GatedResidualMLP(nn.Module):
    r"""Conditioner ``(x, context) -> (*, out_features)`` that starts as a linear map.

    A linear layer maps ``[x, context]`` into a residual stream; each block adds a two-layer
    update gated elementwise by the context; a linear layer reads the stream out:

    .. math::

        h_0 = W [x; c] + b, \qquad
        h_{i+1} = h_i + \sigma(G_i c + g_i) \odot L_{i2}(a(L_{i1}(a(h_i)))), \qquad
        y = V h_B + v.

    The second layer of each block starts within ±10⁻³ of zero, so the network starts as a
    linear map of its inputs and learns the non-linear part on top of it: the conditional
    location of a flow then starts linear in the context, the shape that many posteriors are
    close to. The context's contributions (to the stream and to the gates) are computed once
    per distinct context, as in :meth:`MLP.forward_pair`. This is the conditioner of the
    rational-quadratic spline couplings of Durkan et al. (2019), as implemented in nflows.

    Args:
        in_features: Size of ``x`` (may be 0).
        context_features: Size of the context (0: none; the blocks are then ungated).
        out_features: Output size.
        hidden_features: The width of the residual stream, then one inner width per block, so
            ``(64, 64)`` is a stream of 64 with one block; a single size ``(w,)`` means
            ``(w, w)``.
        activation: Name of the activation.
        dropout: Probability of zeroing each inner unit of a block in training (between its
            activation and its second layer); 0: no dropout layer at all.

    Example:
        >>> import torch
        >>> net = GatedResidualMLP(3, 2, 5, hidden_features=(8, 8))
        >>> net(torch.zeros(7, 3), torch.zeros(7, 2)).shape
        torch.Size([7, 5])
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        sizes = [int(h) for h in hidden_features]
        if not sizes or min(sizes) < 1 or in_features + context_features < 1:
            raise SbitkError(
                "GatedResidualMLP: expected positive hidden sizes (stream width, then one per "
                f"block) and some input, found hidden_features={tuple(sizes)}, "
                f"in_features={in_features}, context_features={context_features}"
            )
        if not 0 <= dropout < 1:
            raise SbitkError(f"GatedResidualMLP: expected 0 <= dropout < 1, found {dropout}")
        if len(sizes) == 1:
            sizes = sizes * 2
        self.in_features, self.context_features = int(in_features), int(context_features)
        self.out_features = int(out_features)
        width = sizes[0]
        self.input = nn.Linear(self.in_features + self.context_features, width)
        self.blocks = nn.ModuleList()
        self.gates = nn.ModuleList()
        for inner in sizes[1:]:
            block = nn.Sequential(
                make_activation(activation),
                nn.Linear(width, inner),
                make_activation(activation, inplace=True),
                *([nn.Dropout(dropout)] if dropout else []),
                nn.Linear(inner, width),
            )
            nn.init.uniform_(block[-1].weight, -1e-3, 1e-3)
            nn.init.uniform_(block[-1].bias, -1e-3, 1e-3)
            self.blocks.append(block)
            if self.context_features:
                self.gates.append(nn.Linear(self.context_features, width))
        self.output = nn.Linear(width, self.out_features)

    @property
    def output_layer(self) -> nn.Linear:
        """The last linear layer (see :meth:`hidden_pair`)."""
        return self.output

    def hidden_pair(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The residual stream after the last block, the input of :attr:`output_layer`.

        Its leading shape broadcasts against the rows of ``x`` and ``context`` but may be
        narrower, where only the context varies.
        """
        if (context is None) != (self.context_features == 0):
            raise SbitkError(
                f"GatedResidualMLP: expected a context of size {self.context_features}, found "
                f"{'none' if context is None else tuple(context.shape)}"
            )
        if context is None:
            h = self.input(x)
            gates: list[Tensor | None] = [None] * len(self.blocks)
        else:
            c = compact(context)
            h = linear_pair(self.input, x, c)
            gates = [torch.sigmoid(g(c)) for g in self.gates]
        for block, gate in zip(self.blocks, gates, strict=True):
            update = block(h)
            h = h + update if gate is None else torch.addcmul(h, update, gate)
        return h

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Map ``x`` (*, in_features) and ``context`` (*, context_features) to the output."""
        y = self.output(self.hidden_pair(x, context))
        if context is None:
            return y
        return y.expand(*torch.broadcast_shapes(x.shape[:-1], context.shape[:-1]), y.shape[-1])

    forward_pair = forward


__all__ = [
    "ACTIVATIONS",
    "GatedResidualMLP",
    "MLP",
    "ResidualMLP",
    "compact",
    "make_activation",
]
