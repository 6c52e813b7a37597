"""Simulators, priors, the registry, the simulation runner and the on-disk bank."""

from sbitk.simulation.priors import (
    BoxUniform,
    LogNormal,
    MultivariateNormal,
    Normal,
    Prior,
    Product,
    TorchPrior,
    Uniform,
    as_prior,
    prior_from_spec,
)
from sbitk.simulation.registry import available, get_simulator, register, unregister
from sbitk.simulation.simulator import Simulator, simulator

__all__ = [
    "BoxUniform",
    "LogNormal",
    "MultivariateNormal",
    "Normal",
    "Prior",
    "Product",
    "Simulator",
    "TorchPrior",
    "Uniform",
    "as_prior",
    "available",
    "get_simulator",
    "prior_from_spec",
    "register",
    "simulator",
    "unregister",
]
