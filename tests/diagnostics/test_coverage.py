"""HPD expected coverage and TARP: verdicts, the chi-square formula, false-alarm rates."""

import numpy as np
import pytest
import torch
from gaussian_posteriors import CASES, GaussianProblem
from scipy import stats

from sbitk.diagnostics import DiagnosticInputError, coverage_from_ranks, expected_coverage, tarp

PROBLEM = GaussianProblem(dim=2, noise=1.0)


def _coverage(case: str, n: int = 1000, L: int = 200, seed: int = 0, problem=PROBLEM):
    g = torch.Generator().manual_seed(seed)
    theta, x = problem.simulate(n, g)
    return expected_coverage(
        theta,
        x,
        problem.sampler(case, g),
        problem.log_prob(case),
        n_posterior_samples=L,
        seed=seed,
    )


# Theory: HPD coverage is exact for the true posterior and also for the prior (the prior is
# calibrated on average over x); too narrow or shifted regions cover too little; too wide,
# too much.
COVERAGE_VERDICTS = {
    "exact": "calibrated",
    "narrow": "overconfident",
    "wide": "conservative",
    "biased": "overconfident",
    "prior": "calibrated",
}


@pytest.mark.parametrize("case", CASES)
def test_coverage_verdicts_match_theory(case):
    assert _coverage(case).verdict == COVERAGE_VERDICTS[case]


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.25, 2.0])
def test_coverage_of_scaled_gaussian_follows_chi_square_formula(scale):
    # q = N(m, (scale s)^2 I) against the true N(m, s^2 I) in D dimensions: the level-γ HPD
    # region of q is {|θ - m|^2 / s^2 <= scale^2 χ²_D(γ)} and |θ - m|^2 / s^2 ~ χ²_D, so the
    # coverage is F_χ²_D(scale^2 F⁻¹_χ²_D(γ)).
    dim, n = 3, 2000
    problem = GaussianProblem(dim=dim, noise=1.0)
    g = torch.Generator().manual_seed(7)
    theta, x = problem.simulate(n, g)
    s = problem.posterior_std

    def sampler(xb, k):
        loc = problem.loc_scale(xb, "exact")[0]
        return loc + scale * s * torch.randn(k, *xb.shape, generator=g, dtype=xb.dtype)

    def log_q(th, xb):
        loc = problem.loc_scale(xb, "exact")[0]
        return -(((th - loc) / (scale * s)) ** 2).sum(-1)

    result = expected_coverage(theta, x, sampler, log_q, n_posterior_samples=1000)
    predicted = stats.chi2.cdf(scale**2 * stats.chi2.ppf(result.levels, dim), dim)
    # Binomial Monte Carlo error of N indicators, Bonferroni over the 19 levels at 0.1%.
    z = stats.norm.ppf(1 - 0.001 / (2 * len(result.levels)))
    se = np.sqrt(predicted * (1 - predicted) / n)
    assert np.all(np.abs(result.coverage - predicted) <= z * se + 1e-12), (
        result.coverage - predicted
    ) / se


def test_coverage_false_alarms_stay_below_nominal_rate():
    # Exact posterior, many repeats: the Bonferroni verdict flags at most alpha of them.
    repeats, flags = 300, 0
    for seed in range(repeats):
        flags += _coverage("exact", n=100, L=50, seed=100 + seed).verdict != "calibrated"
    assert flags <= stats.binom.ppf(0.9995, repeats, 0.05), flags


def test_fractional_ranks_are_uniform_for_the_exact_posterior():
    u = _coverage("exact", n=2000, L=20).fractional_ranks
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_coverage_from_ranks_checks_its_inputs():
    with pytest.raises(DiagnosticInputError, match="levels"):
        coverage_from_ranks(np.linspace(0, 1, 10), levels=[0.0, 0.5])
    with pytest.raises(DiagnosticInputError, match="1-D"):
        coverage_from_ranks(np.zeros((3, 3)))


def test_coverage_rejects_a_log_prob_of_the_wrong_shape():
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(20, g)
    with pytest.raises(DiagnosticInputError, match="log_prob"):
        expected_coverage(
            theta, x, PROBLEM.sampler("exact", g), lambda th, xb: th, n_posterior_samples=5
        )


def _tarp(case: str, n: int = 1000, L: int = 200, seed: int = 0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    theta, x = PROBLEM.simulate(n, g)
    return tarp(theta, x, PROBLEM.sampler(case, g), n_posterior_samples=L, seed=seed, **kwargs)


# Theory: with references that do not depend on x, TARP is necessary but not sufficient: the
# prior passes. With x-dependent references it is sufficient, and the prior fails.
TARP_VERDICTS = {
    "exact": "calibrated",
    "narrow": "miscalibrated",
    "wide": "miscalibrated",
    "biased": "miscalibrated",
    "prior": "calibrated",
}


@pytest.mark.parametrize("case", CASES)
def test_tarp_verdicts_match_theory(case):
    result = _tarp(case)
    assert result.verdict == TARP_VERDICTS[case]
    assert result.credibility[0] == 0.0 and result.credibility[-1] == 1.0
    assert result.ecp[0] == 0.0 and result.ecp[-1] == 1.0


def test_tarp_with_data_dependent_references_catches_the_prior():
    def references(x):  # a noisy point near the posterior mean: depends on x
        g = torch.Generator().manual_seed(1)
        return x / 2 + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    assert _tarp("exact", references=references).verdict == "calibrated"
    assert _tarp("prior", references=references).verdict == "miscalibrated"


def test_tarp_false_alarms_at_nominal_rate():
    repeats, flags = 300, 0
    for seed in range(repeats):
        flags += _tarp("exact", n=100, L=50, seed=500 + seed).verdict != "calibrated"
    lo, hi = stats.binom.ppf([0.0005, 0.9995], repeats, 0.05)
    assert lo <= flags <= hi, flags


def test_tarp_fixed_references_and_errors():
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(300, g)
    refs = torch.zeros(300, 2, dtype=torch.float64)
    r = tarp(theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=50, references=refs)
    assert r.fractions.shape == (300,)
    with pytest.raises(DiagnosticInputError, match="references"):
        tarp(theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=5, references=refs[:5])
    with pytest.raises(DiagnosticInputError, match="n_grid"):
        tarp(theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=5, n_grid=1)
