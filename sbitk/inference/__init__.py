"""Training engine, neural posterior estimation (NPE) and neural likelihood estimation (NLE)."""

from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import ChunkSource, History, TrainConfig, train
from sbitk.models.gaussian import ConditionalGaussian

__all__ = [
    "NLE",
    "NPE",
    "ChunkSource",
    "ConditionalGaussian",
    "History",
    "TrainConfig",
    "train",
]
