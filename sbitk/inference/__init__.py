"""Training engine, and neural posterior (NPE), likelihood (NLE) and ratio (NRE) estimation."""

from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.nre import NRE
from sbitk.inference.training import ChunkSource, History, TrainConfig, train
from sbitk.models.gaussian import ConditionalGaussian

__all__ = [
    "NLE",
    "NPE",
    "NRE",
    "ChunkSource",
    "ConditionalGaussian",
    "History",
    "TrainConfig",
    "train",
]
