"""Posteriors: direct sampling of an amortized estimator (NPE), MCMC on a surrogate (NLE)."""

from sbitk.posteriors.direct import DirectPosterior
from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood
from sbitk.posteriors.mcmc import (
    MCMCConfig,
    MCMCResult,
    effective_sample_size,
    slice_sample,
    split_rhat,
)

__all__ = [
    "DirectPosterior",
    "MCMCConfig",
    "MCMCPosterior",
    "MCMCResult",
    "SurrogateLikelihood",
    "effective_sample_size",
    "slice_sample",
    "split_rhat",
]
