"""Diagnostics: is a posterior calibrated, and could the simulator have produced the data?

Every diagnostic is a pure function over samples, log-densities or callables that returns a
frozen dataclass with the statistics, a verdict and the threshold behind it. Posteriors enter
as batched samplers ``sample(x (B, D_x), n) -> (n, B, D)`` or as precomputed draws
``(L, N, D)``, so the same checks serve direct (NPE), MCMC (NLE) and sample-only posteriors.
Plots live in :mod:`sbitk.diagnostics.plots` and import matplotlib only when called.

Calibration: :func:`sbc`, :func:`expected_coverage`, :func:`tarp`, :func:`c2st`,
:func:`local_c2st`, :func:`zscore_contraction`, :func:`posterior_predictive_check`.
Misspecification: :func:`mmd_test`, :func:`typicality_test`.
"""

from __future__ import annotations

from sbitk.diagnostics._checks import DiagnosticInputError
from sbitk.diagnostics._sampling import BatchedSampler
from sbitk.diagnostics.c2st import C2STResult, c2st
from sbitk.diagnostics.contraction import (
    ContractionResult,
    ParameterContraction,
    zscore_contraction,
)
from sbitk.diagnostics.coverage import (
    CoverageResult,
    TARPResult,
    coverage_from_ranks,
    expected_coverage,
    tarp,
)
from sbitk.diagnostics.lc2st import LocalC2STResult, local_c2st, local_c2st_from_samples
from sbitk.diagnostics.misspecification import (
    MMDResult,
    ObservationVerdict,
    TypicalityResult,
    mmd_test,
    typicality_test,
)
from sbitk.diagnostics.ppc import PPCResult, posterior_predictive_check
from sbitk.diagnostics.sbc import RankCalibration, SBCResult, ecdf_band, rank_calibration, sbc

__all__ = [
    "BatchedSampler",
    "C2STResult",
    "ContractionResult",
    "CoverageResult",
    "DiagnosticInputError",
    "LocalC2STResult",
    "MMDResult",
    "ObservationVerdict",
    "PPCResult",
    "ParameterContraction",
    "RankCalibration",
    "SBCResult",
    "TARPResult",
    "TypicalityResult",
    "c2st",
    "coverage_from_ranks",
    "ecdf_band",
    "expected_coverage",
    "local_c2st",
    "local_c2st_from_samples",
    "mmd_test",
    "posterior_predictive_check",
    "rank_calibration",
    "sbc",
    "tarp",
    "typicality_test",
    "zscore_contraction",
]
