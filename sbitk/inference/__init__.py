"""Training engine, neural posterior estimation (NPE) and neural likelihood estimation (NLE)."""

from sbitk.inference.estimators import ConditionalGaussian, estimator_classes
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import ChunkSource, History, TrainConfig, train

__all__ = [
    "NLE",
    "NPE",
    "ChunkSource",
    "ConditionalGaussian",
    "History",
    "TrainConfig",
    "estimator_classes",
    "train",
]
