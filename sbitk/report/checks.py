"""One-line verdicts (pass / warn / fail) of the diagnostics, for the top of the report.

Each ``*_check`` function reads a diagnostics result dataclass and says, in one line, what was
measured, against which threshold, and whether it passes. The mapping from the diagnostics'
own verdicts:

* fail: the check found the posterior miscalibrated (SBC outside its band, coverage
  overconfident, TARP beyond its KS bound, z-scores biased or too spread, a predictive check or
  C2ST that tells the data apart), an observation flagged as misspecified, or a non-finite loss.
* warn: not wrong but worth a look: conservative coverage, SBC inside its band with a
  significant chi-square, parameters the data barely constrain.
* pass: everything else.
* skip: the check could not run for this posterior (it needs a density the estimator lacks); the
  reason is the detail. A skipped check never counts as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sbitk.diagnostics.c2st import C2STResult
from sbitk.diagnostics.contraction import ContractionResult
from sbitk.diagnostics.coverage import CoverageResult, TARPResult
from sbitk.diagnostics.lc2st import LocalC2STResult
from sbitk.diagnostics.misspecification import MMDResult, TypicalityResult
from sbitk.diagnostics.ppc import PPCResult
from sbitk.diagnostics.sbc import SBCResult

__all__ = [
    "Check",
    "Status",
    "c2st_check",
    "contraction_check",
    "coverage_check",
    "local_c2st_check",
    "misspecification_check",
    "overall_status",
    "ppc_check",
    "sbc_check",
    "tarp_check",
    "training_check",
]

Status = Literal["skip", "pass", "warn", "fail"]
_RANK = {"skip": -1, "pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    """The verdict of one check.

    Attributes:
        name: what was checked (``"SBC"``, ``"coverage"``, ...).
        status: ``"pass"``, ``"warn"``, ``"fail"`` or ``"skip"`` (not run; ``detail`` says why).
        statistic: the measured value, as text.
        threshold: what it was compared with, as text.
        detail: a short explanation (optional).
    """

    name: str
    status: Status
    statistic: str
    threshold: str
    detail: str = ""

    def __post_init__(self):
        if self.status not in _RANK:
            from sbitk.errors import SbitkError

            raise SbitkError(
                f"Check.status must be 'pass', 'warn', 'fail' or 'skip', got {self.status!r}"
            )

    @classmethod
    def skipped(cls, name: str, reason: str) -> Check:
        """A check that did not run, and why.

        Example:
            >>> Check.skipped("coverage", "the estimator offers no density").line()
            'SKIP  coverage: skipped: the estimator offers no density'
        """
        return cls(name, "skip", "not run", "none", reason)

    def line(self) -> str:
        """The check as one line of text.

        Example:
            >>> Check("TARP", "pass", "KS 0.040", "< 0.096 (α = 0.05)").line()
            'PASS  TARP: KS 0.040; threshold < 0.096 (α = 0.05)'
        """
        if self.status == "skip":
            return f"SKIP  {self.name}: skipped: {self.detail}"
        text = (
            f"{self.status.upper():<5} {self.name}: {self.statistic}; threshold {self.threshold}"
        )
        return f"{text}; {self.detail}" if self.detail else text


def overall_status(checks: Sequence[Check]) -> Status | None:
    """The worst status among the checks that ran (``None`` when none ran)."""
    ran = [c.status for c in checks if c.status != "skip"]
    if not ran:
        return None
    return max(ran, key=_RANK.__getitem__)


def history_losses(history: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch ``(train_loss, val_loss)`` of a dict of lists or a training ``History``."""
    if isinstance(history, Mapping):
        train, val = history.get("train_loss", []), history.get("val_loss", [])
    else:
        train, val = getattr(history, "train_loss", []), getattr(history, "val_loss", [])
    return np.asarray(train, dtype=np.float64), np.asarray(val, dtype=np.float64)


def training_check(history: Mapping[str, Sequence[float]] | Any) -> Check:
    """Training ran to finite losses; reports the best validation epoch.

    Args:
        history: per-epoch ``train_loss`` and ``val_loss`` lists, as a dict or as the
            attributes of a training history object.
    """
    train, val = history_losses(history)
    watched = val if val.size else train
    if not watched.size:
        return Check("training", "warn", "no epochs recorded", "finite losses")
    finite = bool(np.isfinite(train).all() and np.isfinite(val).all())
    which = "validation" if val.size else "training"
    if not np.isfinite(watched).any():
        return Check("training", "fail", f"no finite {which} loss", "finite losses")
    best = int(np.nanargmin(np.where(np.isfinite(watched), watched, np.nan)))
    statistic = f"best {which} loss {watched[best]:.4g} at epoch {best + 1} of {watched.size}"
    if not finite:
        return Check("training", "fail", statistic, "finite losses", "a loss was NaN or Inf")
    detail = "still improving at the last epoch" if best == watched.size - 1 else ""
    return Check("training", "pass", statistic, "finite losses", detail)


def sbc_check(result: SBCResult) -> Check:
    """SBC: every test quantity's rank ECDF inside its simultaneous band."""
    outside = [q for q in result.quantities if q.verdict != "calibrated"]
    q_count = len(result.quantities)
    level = result.quantities[0].band_level if result.quantities else 1 - result.alpha
    threshold = f"ECDF inside the {level:.1%} simultaneous band (α = {result.alpha:g})"
    statistic = f"{len(outside)} of {q_count} quantities outside the band"
    if outside:
        detail = ", ".join(f"{q.name} ({q.shape})" for q in outside)
        return Check("SBC", "fail", statistic, threshold, detail)
    alpha_q = result.alpha / max(q_count, 1)
    chi2 = [q for q in result.quantities if q.chi2_p_value < alpha_q]
    if chi2:
        detail = "chi-square p < {:.3g} for {}".format(alpha_q, ", ".join(q.name for q in chi2))
        return Check("SBC", "warn", statistic, threshold, detail)
    return Check("SBC", "pass", statistic, threshold)


def coverage_check(result: CoverageResult) -> Check:
    """Expected HPD coverage inside its Bonferroni bounds at every credibility level."""
    deviation = np.asarray(result.coverage) - np.asarray(result.levels)
    k = int(np.argmax(np.abs(deviation)))
    statistic = f"largest deviation {deviation[k]:+.3f} at level {result.levels[k]:.2f}"
    threshold = f"inside the bounds at every level (α = {result.alpha:g})"
    status: Status = {"calibrated": "pass", "conservative": "warn"}.get(result.verdict, "fail")
    return Check("coverage", status, statistic, threshold, result.verdict)


def tarp_check(result: TARPResult) -> Check:
    """TARP's expected coverage probability within the KS band of the diagonal."""
    statistic = f"KS {result.ks_statistic:.3f}, ATC {result.atc:+.3f}"
    threshold = f"KS < {result.threshold:.3f} (α = {result.alpha:g})"
    status: Status = "pass" if result.verdict == "calibrated" else "fail"
    return Check("TARP", status, statistic, threshold, result.verdict)


def contraction_check(result: ContractionResult) -> Check:
    """Posterior z-scores unbiased with unit spread for every parameter."""
    params = result.parameters
    bias = max(abs(p.bias_statistic) for p in params)
    spread = max(abs(p.spread_statistic) for p in params)
    statistic = f"max |bias statistic| {bias:.2f}, max |spread statistic| {spread:.2f}"
    threshold = f"< {params[0].critical_value:.2f} (α = {result.alpha:g})"
    bad = [f"{p.name} ({p.verdict})" for p in params if p.verdict != "calibrated"]
    if bad:
        return Check("z-score / contraction", "fail", statistic, threshold, ", ".join(bad))
    weak = [p.name for p in params if not p.informative]
    if weak:
        detail = "mean contraction < {:g} for {}".format(result.min_contraction, ", ".join(weak))
        return Check("z-score / contraction", "warn", statistic, threshold, detail)
    return Check("z-score / contraction", "pass", statistic, threshold)


def ppc_check(results: PPCResult | Sequence[PPCResult]) -> Check:
    """Posterior predictive tail probabilities of every output present above ``α / m``, m
    the outputs present (all D_x unless trials were left out)."""
    items = [results] if isinstance(results, PPCResult) else list(results)
    worst = (math.inf, 0, "", 1)
    for b, r in enumerate(items):
        k = int(np.nanargmin(r.tail_probability))
        m = int(np.isfinite(r.tail_probability).sum())
        worst = min(worst, (float(r.tail_probability[k]), b, r.output_names[k], m))
    p, b, name, m = worst
    statistic = f"min tail probability {p:.3g} ({name}" + (
        f", observation {b})" if len(items) > 1 else ")"
    )
    d_x = len(items[0].output_names)
    size = "D_x" if m == d_x else "outputs present"
    threshold = f"> α / {size} = {items[0].alpha / m:.3g}"
    bad = [(b, r) for b, r in enumerate(items) if r.verdict != "consistent"]
    if bad:
        detail = "; ".join(
            (f"observation {b}: " if len(items) > 1 else "") + ", ".join(r.flagged) for b, r in bad
        )
        return Check("predictive check", "fail", statistic, threshold, detail)
    return Check("predictive check", "pass", statistic, threshold)


def misspecification_check(result: MMDResult | TypicalityResult) -> Check:
    """No observation atypical for the simulator (MMD) or the learned evidence (typicality)."""
    obs = result.observations
    worst = min(obs, key=lambda o: o.p_value)
    test = "MMD" if obs[0].test == "mmd" else obs[0].test
    where = f" (observation {worst.index})" if len(obs) > 1 else ""
    statistic = f"min p-value {worst.p_value:.3g}{where}"
    threshold = f"p ≥ α = {worst.alpha:g}"
    flagged = [o for o in obs if o.flagged]
    name = f"misspecification ({test})"
    if flagged:
        detail = "flagged: " + ", ".join(f"observation {o.index}" for o in flagged)
        return Check(name, "fail", statistic, threshold, detail)
    return Check(name, "pass", statistic, threshold)


def c2st_check(result: C2STResult, name: str = "C2ST") -> Check:
    """Classifier two-sample test at chance."""
    statistic = f"accuracy {result.accuracy:.3f}"
    threshold = f"≤ {result.threshold:.3f} (chance {result.chance:.2f}, α = {result.alpha:g})"
    status: Status = "pass" if result.verdict == "indistinguishable" else "fail"
    return Check(name, status, statistic, threshold, result.verdict)


def local_c2st_check(result: LocalC2STResult, name: str = "local C2ST") -> Check:
    """L-C2ST at one observation."""
    statistic = f"T = {result.statistic:.4f}, p = {result.p_value:.3g}"
    threshold = f"p ≥ α = {result.alpha:g}"
    status: Status = "pass" if result.verdict == "consistent" else "fail"
    return Check(name, status, statistic, threshold, result.verdict)
