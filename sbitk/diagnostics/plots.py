"""Figures of the diagnostics: each function takes a result dataclass and returns a Figure.

matplotlib is imported when a plot is made, never at import time, and the Agg backend is
selected when no backend has been chosen yet, so plotting works on headless machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sbitk.diagnostics.contraction import ContractionResult
from sbitk.diagnostics.coverage import CoverageResult, TARPResult
from sbitk.diagnostics.sbc import SBCResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_contraction", "plot_coverage", "plot_sbc_ecdf", "plot_tarp", "pyplot"]


def pyplot():
    """matplotlib.pyplot, imported on first use, with the Agg backend unless pyplot was already
    set up (so that plotting needs no display)."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, plt, size: float = 3.0):
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_sbc_ecdf(result: SBCResult, difference: bool = True) -> Figure:
    """ECDF of each test quantity's ranks inside its simultaneous band.

    Args:
        result: an :class:`~sbitk.diagnostics.sbc.SBCResult`.
        difference: plot ``ECDF - uniform CDF`` (easier to read) instead of the ECDF itself.

    Returns:
        A matplotlib Figure with one panel per test quantity.
    """
    plt = pyplot()
    fig, axes = _grid(len(result.quantities), plt)
    for ax, q in zip(axes, result.quantities):
        base = q.expected if difference else 0.0
        ax.fill_between(
            q.expected,
            q.band_lower - base,
            q.band_upper - base,
            step="post",
            color="0.85",
            label=f"{q.band_level:.1%} band",
        )
        color = "C0" if q.verdict == "calibrated" else "C3"
        ax.step(q.expected, q.ecdf - base, where="post", color=color, label="ECDF")
        ax.set_title(f"{q.name}: {q.verdict}", fontsize=9)
        ax.set_xlabel("fractional rank")
        ax.set_ylabel("ECDF − uniform" if difference else "ECDF")
    # under the panel, where it cannot cover the curve
    axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2,
                   frameon=False)  # fmt: skip
    fig.suptitle(f"SBC: N = {result.n_simulations}, L = {result.n_posterior_samples}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_coverage(result: CoverageResult) -> Figure:
    """Expected HPD coverage against the credibility level, with the verdict's bounds.

    Args:
        result: a :class:`~sbitk.diagnostics.coverage.CoverageResult`.

    Returns:
        A matplotlib Figure.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    ax.fill_between(result.levels, result.lower, result.upper, color="0.85", label="bounds")
    ax.plot(result.levels, result.coverage, "o-", ms=3, label="expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage")
    ax.set_title(f"HPD coverage: {result.verdict}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_tarp(result: TARPResult) -> Figure:
    """TARP expected coverage probability on the credibility grid ``[0, 1]``.

    Args:
        result: a :class:`~sbitk.diagnostics.coverage.TARPResult`.

    Returns:
        A matplotlib Figure.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    a = result.credibility
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    ax.fill_between(
        a,
        np.clip(a - result.threshold, 0, 1),
        np.clip(a + result.threshold, 0, 1),
        color="0.85",
        label=f"KS {1 - result.alpha:.0%} band",
    )
    ax.plot(a, result.ecp, label="ECP")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility level")
    ax.set_ylabel("expected coverage probability")
    ax.set_title(f"TARP: {result.verdict} (ATC {result.atc:+.3f})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_contraction(result: ContractionResult) -> Figure:
    """Posterior z-score against posterior contraction, one panel per parameter.

    Args:
        result: a :class:`~sbitk.diagnostics.contraction.ContractionResult`.

    Returns:
        A matplotlib Figure.
    """
    plt = pyplot()
    fig, axes = _grid(len(result.parameters), plt)
    for d, (ax, p) in enumerate(zip(axes, result.parameters)):
        ax.scatter(result.contraction[:, d], result.z[:, d], s=4, alpha=0.5)
        ax.axhline(0, color="k", lw=0.8)
        for s in (-2, 2):
            ax.axhline(s, color="0.6", lw=0.8, ls="--")
        ax.set_xlim(min(0.0, float(result.contraction[:, d].min())), 1.0)
        ax.set_xlabel("posterior contraction")
        ax.set_ylabel("posterior z-score")
        info = "" if p.informative else ", uninformative"
        ax.set_title(f"{p.name}: {p.verdict}{info}", fontsize=9)
    fig.tight_layout()
    return fig
