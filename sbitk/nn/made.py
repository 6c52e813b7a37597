"""MADE: a masked perceptron whose outputs for dimension i see only inputs before i.

Legend: D inputs carry degrees 1..D, context features degree 0, hidden unit k a degree m_k. A
hidden unit sees inputs of degree ``<= m_k``; the P outputs of dimension i see hidden units of
degree ``< i``. Hence output i depends on ``x_{<i}`` and the context only, the autoregressive
property a masked autoregressive flow needs.

References:
    Germain et al., "MADE: Masked autoencoder for distribution estimation" (2015),
    arXiv:1502.03509.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.nn.mlp import make_activation


def made_degrees(features: int, hidden_features: Sequence[int], context: int = 0) -> list[Tensor]:
    """Degrees of the input and hidden units of a MADE.

    Hidden degrees cycle through ``min_degree..D-1``, where ``min_degree`` is 0 (units that see
    only the context) when there is a context or a single dimension, else 1.

    Args:
        features: Number of autoregressive dimensions D.
        hidden_features: Hidden layer sizes.
        context: Number of context features.

    Returns:
        One long tensor of degrees for the inputs, then one per hidden layer.

    Example:
        >>> [d.tolist() for d in made_degrees(3, [4])]
        [[1, 2, 3], [1, 2, 1, 2]]
    """
    low = 0 if (context > 0 or features == 1) else 1
    span = max(features - low, 1)
    degrees = [torch.arange(1, features + 1)]
    for h in hidden_features:
        degrees.append(low + torch.arange(h) % span)
    return degrees


class MADE(nn.Module):
    """Autoregressive masked perceptron ``(*, D), (*, C) -> (*, D, P)``, P outputs per dimension.

    The first layer reads ``cat(x, context)`` through one masked weight whose context columns are
    unmasked, so the context's share can also be computed once (:meth:`context_term`) and reused
    across the D sequential passes of sampling.

    Args:
        features: Number of dimensions D.
        params: Number of outputs P per dimension.
        context: Number of context features C (0: none).
        hidden_features: Hidden layer sizes.
        activation: Name of the activation.
        order: The autoregressive rank (1..D) of each input position; ``1..D`` by default.
            A reversed or shuffled order replaces a permutation between flow steps, at no cost.

    Example:
        >>> import torch
        >>> made = MADE(3, 2, hidden_features=(8,))
        >>> x = torch.randn(5, 3)
        >>> out = made(x)
        >>> out.shape
        torch.Size([5, 3, 2])
        >>> x2 = x.clone(); x2[:, 2] += 1.0  # the last input affects no output
        >>> torch.equal(made(x2), out)
        True
    """

    def __init__(
        self,
        features: int,
        params: int,
        context: int = 0,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
        order: Sequence[int] | Tensor | None = None,
    ):
        super().__init__()
        self.features, self.params, self.context = int(features), int(params), int(context)
        d = self.features
        hidden = [int(h) for h in hidden_features]
        degrees = made_degrees(d, hidden, self.context)
        if order is not None:
            order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
            if not torch.equal(order.sort().values, torch.arange(1, d + 1)):
                raise SbitkError(
                    f"MADE: expected an order that permutes 1..{d}, found {order.tolist()}"
                )
            degrees[0] = order
        self.order = tuple(degrees[0].tolist())
        out_degrees = degrees[0].repeat_interleave(self.params)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        sizes = [d + self.context, *hidden, d * self.params]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layer = nn.Linear(a, b)
            self.weights.append(layer.weight)
            self.biases.append(layer.bias)
            if i == 0:  # context columns have degree 0: every hidden unit may read them
                inputs = torch.cat([degrees[0], torch.zeros(self.context, dtype=torch.long)])
            else:
                inputs = degrees[i]
            if i + 1 < len(sizes) - 1:
                mask = degrees[i + 1][:, None] >= inputs[None, :]
            else:
                mask = out_degrees[:, None] > inputs[None, :]
            self.register_buffer(f"mask{i}", mask.to(torch.get_default_dtype()))
        self.act = make_activation(activation, inplace=True)  # on fresh linear outputs

    def context_term(self, context: Tensor | None) -> Tensor:
        """First-layer pre-activation due to the context and bias, (*, H) or (H,)."""
        bias = self.biases[0]
        if not self.context or context is None:
            return bias
        return F.linear(context, self.weights[0][:, self.features :], bias)

    def masked_weights(self) -> list[Tensor]:
        """The weights with their masks applied, one per layer (reusable across passes)."""
        return [w * getattr(self, f"mask{i}") for i, w in enumerate(self.weights)]

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        context_term: Tensor | None = None,
        weights: list[Tensor] | None = None,
    ) -> Tensor:
        """Parameters (*, D, P) for inputs ``x`` (*, D) and context (*, C).

        Args:
            x: Inputs.
            context: Context, broadcastable with ``x`` in the leading dimensions.
            context_term: A precomputed :meth:`context_term`, which takes precedence.
            weights: Precomputed :meth:`masked_weights`.
        """
        if weights is None:
            weights = self.masked_weights()
        w0 = weights[0]
        if context_term is not None:
            wx = w0[:, : self.features]
            if x.dim() == 2 and context_term.dim() <= 2:
                h = torch.addmm(context_term, x, wx.T)  # fused matmul + add
            else:
                h = F.linear(x, wx) + context_term
        elif self.context and context is not None:
            shape = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            xc = torch.cat([x.expand(*shape, -1), context.expand(*shape, -1)], dim=-1)
            h = F.linear(xc, w0, self.biases[0])
        else:
            h = F.linear(x, w0[:, : self.features], self.biases[0])
        for i in range(1, len(weights)):
            h = F.linear(self.act(h), weights[i], self.biases[i])
        return h.unflatten(-1, (self.features, self.params))


__all__ = ["MADE", "made_degrees"]
