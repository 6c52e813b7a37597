"""Embedding nets: learned summaries of the context applied before a conditioner sees it.

The built-in ones are listed in :data:`EMBEDDINGS` and can be rebuilt from their ``spec()``, a
JSON-serialisable dict, which is how model files record them. Any other ``nn.Module`` mapping
``(*, C) -> (*, E)`` with an ``out_features`` attribute may be used too, but a model holding it
cannot be rebuilt from its config alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.nn.mlp import MLP, ResidualMLP, make_activation


class MLPEmbedding(nn.Module):
    """A perceptron embedding ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features: Context size C.
        out_features: Embedding size E.
        hidden_features: Hidden layer sizes.
        activation: Name of the activation.

    Example:
        >>> emb = MLPEmbedding(10, 4, hidden_features=(16,))
        >>> embedding_from_spec(emb.spec()).spec() == emb.spec()
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.hidden_features = tuple(int(h) for h in hidden_features)
        self.activation = activation
        self.net = MLP(self.in_features, self.out_features, self.hidden_features, activation)

    def forward(self, context: Tensor) -> Tensor:
        """Embed ``context`` (*, C) to (*, E)."""
        return self.net(context)

    def spec(self) -> dict:
        """A JSON-serialisable description, read back by :func:`embedding_from_spec`."""
        return {
            "type": "mlp",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "hidden_features": list(self.hidden_features),
            "activation": self.activation,
        }


class ResidualEmbedding(nn.Module):
    """A residual-perceptron embedding ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features: Context size C.
        out_features: Embedding size E.
        hidden_features: Width of the residual stream.
        blocks: Number of residual blocks.
        activation: Name of the activation.
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
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.hidden_features, self.blocks, self.activation = (
            int(hidden_features),
            blocks,
            activation,
        )
        self.net = ResidualMLP(
            self.in_features, self.out_features, self.hidden_features, blocks, activation
        )

    def forward(self, context: Tensor) -> Tensor:
        """Embed ``context`` (*, C) to (*, E)."""
        return self.net(context)

    def spec(self) -> dict:
        """A JSON-serialisable description, read back by :func:`embedding_from_spec`."""
        return {
            "type": "residual",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "hidden_features": self.hidden_features,
            "blocks": self.blocks,
            "activation": self.activation,
        }


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SbitkError(f"embedding: {name} must be a positive integer, got {value!r}")
    return value


class SetEmbedding(nn.Module):
    """A permutation-invariant embedding of i.i.d. trials (deep sets).

    The context is ``offset`` leading values, then ``trials`` trials of ``width`` values each,
    then any trailing values. Each trial goes through the same perceptron φ, the trials' φ are
    averaged, and a perceptron ρ maps the average, with the other values, to the embedding:
    reordering the trials leaves it unchanged, whatever the weights.

    With ``missing=True`` a trial whose values are all NaN is absent: the average runs over the
    trials present, and ρ also sees the share of trials present, so that one network serves
    contexts with any number of trials from 1 to T (a posterior sharpens with more of them).

    Args:
        in_features: Context size C.
        out_features: Embedding size E.
        trials: Number T of trials.
        width: Values per trial (``None``: all of C after ``offset``, divided by T).
        offset: Values before the trials.
        hidden_features: Hidden sizes of φ and of ρ.
        summary: Size of each trial's φ.
        activation: Name of the activation.
        missing: Trials may be absent (all NaN); see above.

    References:
        Zaheer et al., "Deep sets" (2017), arXiv:1703.06114.

    Example:
        >>> import torch
        >>> emb = SetEmbedding(8, 5, trials=4)
        >>> x = torch.randn(3, 8)
        >>> swapped = x.reshape(3, 4, 2)[:, [2, 0, 3, 1]].reshape(3, 8)
        >>> torch.allclose(emb(x), emb(swapped), atol=1e-6)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        trials: int,
        width: int | None = None,
        offset: int = 0,
        hidden_features: Sequence[int] = (64, 64),
        summary: int = 32,
        activation: str = "relu",
        missing: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.trials = _positive("trials", trials)
        if not isinstance(missing, bool):
            raise SbitkError(f"embedding: missing must be True or False, got {missing!r}")
        self.missing = missing
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise SbitkError(f"embedding: offset must be an integer >= 0, got {offset!r}")
        self.offset = offset
        if width is None:
            width = (self.in_features - offset) // self.trials
        self.width = _positive("width", width)
        if offset + self.trials * self.width > self.in_features:
            raise SbitkError(
                f"embedding: {self.trials} trials of {self.width} values from offset {offset} "
                f"do not fit a context of {self.in_features}"
            )
        self.hidden_features = tuple(int(h) for h in hidden_features)
        self.summary = _positive("summary", summary)
        self.activation = activation
        others = self.in_features - self.trials * self.width
        self.phi = MLP(self.width, self.summary, self.hidden_features, activation)
        self.rho = MLP(
            self.summary + others + missing, self.out_features, self.hidden_features, activation
        )

    def forward(self, context: Tensor) -> Tensor:
        """Embed ``context`` (*, C) to (*, E)."""
        stop = self.offset + self.trials * self.width
        block = context[..., self.offset : stop]
        trials = block.reshape(*context.shape[:-1], self.trials, self.width)
        rest = [context[..., : self.offset], context[..., stop:]]
        if not self.missing:
            return self.rho(torch.cat([self.phi(trials).mean(-2), *rest], -1))
        present = ~torch.isnan(trials).all(-1, keepdim=True)  # (*, T, 1)
        phi = self.phi(torch.where(present, trials, torch.zeros_like(trials)))
        count = present.sum(-2).to(phi.dtype)  # (*, 1)
        pooled = (phi * present).sum(-2) / count.clamp(min=1)
        return self.rho(torch.cat([pooled, count / self.trials, *rest], -1))

    def spec(self) -> dict:
        """A JSON-serialisable description, read back by :func:`embedding_from_spec`."""
        return {
            "type": "set",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "trials": self.trials,
            "width": self.width,
            "offset": self.offset,
            "hidden_features": list(self.hidden_features),
            "summary": self.summary,
            "activation": self.activation,
            **({"missing": True} if self.missing else {}),
        }


class Conv1dEmbedding(nn.Module):
    """A 1-D convolutional embedding of time series.

    The context is ``channels`` series of L values each, one series after the other (as the
    outputs of a simulator of several series are laid out: ``prey[0..9]``, then
    ``predator[0..9]``). Convolutions along time, with padding that keeps the length, then a
    perceptron of the flattened features give the embedding.

    Args:
        in_features: Context size C = channels · L.
        out_features: Embedding size E.
        channels: Number of series.
        hidden_channels: Output channels of each convolution.
        kernel_size: Odd width of the convolutions.
        hidden_features: Hidden sizes of the perceptron after them.
        activation: Name of the activation.

    Example:
        >>> import torch
        >>> emb = Conv1dEmbedding(20, 6, channels=2)
        >>> emb(torch.randn(5, 20)).shape
        torch.Size([5, 6])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        channels: int = 1,
        hidden_channels: Sequence[int] = (16, 16),
        kernel_size: int = 3,
        hidden_features: Sequence[int] = (64,),
        activation: str = "relu",
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.channels = _positive("channels", channels)
        if self.in_features % self.channels:
            raise SbitkError(
                f"embedding: a context of {self.in_features} values is not {self.channels} "
                "series of equal length"
            )
        self.length = self.in_features // self.channels
        if _positive("kernel_size", kernel_size) % 2 == 0:
            raise SbitkError(f"embedding: kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.hidden_channels = tuple(_positive("hidden_channels", int(c)) for c in hidden_channels)
        self.hidden_features = tuple(int(h) for h in hidden_features)
        self.activation = activation
        layers: list[nn.Module] = []
        width = self.channels
        for c in self.hidden_channels:
            layers += [nn.Conv1d(width, c, kernel_size, padding=kernel_size // 2),
                       make_activation(activation)]  # fmt: skip
            width = c
        self.convolutions = nn.Sequential(*layers)
        self.head = MLP(width * self.length, self.out_features, self.hidden_features, activation)

    def forward(self, context: Tensor) -> Tensor:
        """Embed ``context`` (*, C) to (*, E)."""
        lead = context.shape[:-1]
        series = context.reshape(-1, self.channels, self.length)
        features = self.convolutions(series).flatten(1)
        return self.head(features).reshape(*lead, self.out_features)

    def spec(self) -> dict:
        """A JSON-serialisable description, read back by :func:`embedding_from_spec`."""
        return {
            "type": "conv1d",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "channels": self.channels,
            "hidden_channels": list(self.hidden_channels),
            "kernel_size": self.kernel_size,
            "hidden_features": list(self.hidden_features),
            "activation": self.activation,
        }


#: The built-in embedding nets by the ``type`` their spec carries.
EMBEDDINGS: dict[str, type[nn.Module]] = {
    "mlp": MLPEmbedding,
    "residual": ResidualEmbedding,
    "set": SetEmbedding,
    "conv1d": Conv1dEmbedding,
}


def embedding_from_spec(spec: dict) -> nn.Module:
    """Build a built-in embedding net from its :meth:`spec` dict.

    Args:
        spec: ``{"type": name, **constructor arguments}`` with ``name`` in :data:`EMBEDDINGS`.

    Returns:
        A freshly initialised embedding net.
    """
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in EMBEDDINGS:
        raise SbitkError(
            f"embedding spec: expected type in {sorted(EMBEDDINGS)}, found {kind!r}"
            + (
                " (a user-provided module cannot be rebuilt from a config)"
                if kind == "custom"
                else ""
            )
        )
    for key in ("hidden_features", "hidden_channels"):
        if isinstance(spec.get(key), list):
            spec[key] = tuple(spec[key])
    try:
        return EMBEDDINGS[kind](**spec)
    except TypeError as exc:  # an unknown or missing argument
        raise SbitkError(f"embedding spec of type {kind!r}: {exc}") from None


__all__ = [
    "EMBEDDINGS",
    "Conv1dEmbedding",
    "MLPEmbedding",
    "ResidualEmbedding",
    "SetEmbedding",
    "embedding_from_spec",
]
