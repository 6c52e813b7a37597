"""Diagnostics: is a posterior calibrated, and could the simulator have produced the data?

Every diagnostic is a pure function over samples, log-densities or callables that returns a
frozen dataclass with the statistics, a verdict and the threshold behind it. Plots live in
:mod:`sbitk.diagnostics.plots` and import matplotlib only when called.
"""

from __future__ import annotations

from sbitk.diagnostics._checks import DiagnosticInputError
from sbitk.diagnostics.c2st import C2STResult, c2st

__all__ = ["C2STResult", "DiagnosticInputError", "c2st"]
