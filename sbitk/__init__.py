"""sbitk: simulation-based inference toolkit.

Register a simulator, simulate into an on-disk bank, learn amortized posteriors and surrogate
likelihoods, sample them for observed data, and check them.

Importing sbitk has no side effects on torch and imports no heavy optional dependency.
"""

from __future__ import annotations

__version__ = "0.1.0"

from sbitk.errors import SbitkError
from sbitk.simulation import (
    BoxUniform,
    LogNormal,
    MultivariateNormal,
    Normal,
    Product,
    Simulator,
    TorchPrior,
    Uniform,
    available,
    get_simulator,
    register,
    simulator,
)


def simulate(*args, **kwargs):
    """Run a simulator into a bank; see :func:`sbitk.simulation.runner.simulate`."""
    from sbitk.simulation.runner import simulate as _simulate

    return _simulate(*args, **kwargs)


def check_posterior(*args, **kwargs):
    """Check a posterior made anywhere (sbi's, say); see :func:`sbitk.workflow.check_posterior`."""
    from sbitk.workflow import check_posterior as _check

    return _check(*args, **kwargs)


def __getattr__(name: str):
    # Heavy pieces load on first use, so that `import sbitk` stays light (zarr, dask, ...).
    if name == "Bank":
        from sbitk.simulation.bank import Bank

        return Bank
    raise AttributeError(f"module 'sbitk' has no attribute {name!r}")


__all__ = [
    "Bank",
    "BoxUniform",
    "LogNormal",
    "MultivariateNormal",
    "Normal",
    "Product",
    "SbitkError",
    "Simulator",
    "TorchPrior",
    "Uniform",
    "__version__",
    "available",
    "check_posterior",
    "get_simulator",
    "register",
    "simulate",
    "simulator",
]
