"""Embedding nets: learned summaries of the context applied before a conditioner sees it.

The built-in ones are listed in :data:`EMBEDDINGS` and can be rebuilt from their ``spec()``, a
JSON-serialisable dict, which is how model files record them. Any other ``nn.Module`` mapping
``(*, C) -> (*, E)`` with an ``out_features`` attribute may be used too, but a model holding it
cannot be rebuilt from its config alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.nn.mlp import MLP, ResidualMLP


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


#: The built-in embedding nets by the ``type`` their spec carries.
EMBEDDINGS: dict[str, type[nn.Module]] = {"mlp": MLPEmbedding, "residual": ResidualEmbedding}


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
    if "hidden_features" in spec and isinstance(spec["hidden_features"], list):
        spec["hidden_features"] = tuple(spec["hidden_features"])
    return EMBEDDINGS[kind](**spec)


__all__ = ["EMBEDDINGS", "MLPEmbedding", "ResidualEmbedding", "embedding_from_spec"]
