"""Neural building blocks: perceptrons, MADE, embedding nets and standardisation."""

from __future__ import annotations

from sbitk.nn.embeddings import (
    EMBEDDINGS,
    Conv1dEmbedding,
    MLPEmbedding,
    ResidualEmbedding,
    SetEmbedding,
    embedding_from_spec,
)
from sbitk.nn.made import MADE, made_degrees
from sbitk.nn.mlp import ACTIVATIONS, MLP, GatedResidualMLP, ResidualMLP, make_activation
from sbitk.nn.standardize import Standardize

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "Conv1dEmbedding",
    "GatedResidualMLP",
    "MADE",
    "MLP",
    "MLPEmbedding",
    "ResidualEmbedding",
    "ResidualMLP",
    "SetEmbedding",
    "Standardize",
    "embedding_from_spec",
    "made_degrees",
    "make_activation",
]
