"""z-score against contraction, and posterior predictive checks, on the Gaussian problem."""

import numpy as np
import pytest
import torch
from gaussian_posteriors import CASES, GaussianProblem
from scipy import stats

from sbitk.diagnostics import DiagnosticInputError, posterior_predictive_check, zscore_contraction

# Informative data (noise 0.5): posterior variance 0.2, so the exact posterior contracts by 0.8.
PROBLEM = GaussianProblem(dim=2, noise=0.5)

# Theory: z = (mean - θ) / sd has unit spread for the exact posterior and the prior; spread
# 2 for the narrow one (scale 1/2), 1/2 for the wide one; mean -1 for the shifted one.
# Contraction 1 - scale² · 0.2: 0.8 exact, 0.95 narrow, 0.2 wide, 0 prior.
THEORY = {
    "exact": ("calibrated", 0.8, True),
    "narrow": ("overconfident", 0.95, True),
    "wide": ("underconfident", 0.2, True),
    "biased": ("biased", 0.8, True),
    "prior": ("calibrated", 0.0, False),
}


@pytest.mark.parametrize("case", CASES)
def test_zscore_contraction_matches_theory(case):
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(1000, g)
    result = zscore_contraction(
        theta, x, PROBLEM.sampler(case, g), n_posterior_samples=200, prior_variance=[1.0, 1.0]
    )
    verdict, contraction, informative = THEORY[case]
    for p in result.parameters:
        assert p.verdict == verdict
        # Sample variance of L = 200 draws: relative sd sqrt(2 / 199) ≈ 0.1 per pair, /√N overall.
        assert p.mean_contraction == pytest.approx(contraction, abs=0.02)
        assert p.informative is informative
    assert result.z.shape == result.contraction.shape == (1000, 2)


def test_zscore_false_alarms_below_nominal_rate():
    repeats, flags = 200, 0
    for seed in range(repeats):
        g = torch.Generator().manual_seed(seed)
        theta, x = PROBLEM.simulate(200, g)
        r = zscore_contraction(theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=50)
        flags += r.verdict != "calibrated"
    assert flags <= stats.binom.ppf(0.9995, repeats, 0.05), flags


def _simulator(theta, generator):
    return theta + PROBLEM.noise * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)


def test_ppc_well_specified_observations_are_rarely_flagged():
    # Posterior predictive p-values are conservative: the flag rate is at most alpha.
    repeats, flags, pits = 300, 0, []
    for seed in range(repeats):
        g = torch.Generator().manual_seed(seed)
        _, x_o = PROBLEM.simulate(1, g)
        draws = PROBLEM.sampler("exact", g)(x_o, 200)[:, 0]
        r = posterior_predictive_check(x_o[0], draws, _simulator, seed=seed)
        flags += r.verdict != "consistent"
        pits.append(r.pit)
    assert flags <= stats.binom.ppf(0.9995, repeats, 0.05), flags
    pits = np.concatenate(pits)
    # Conservative means PIT values concentrate towards 1/2: x_o ~ N(0, 1.25) and its
    # predictive is N(0.8 x_o, 0.45), so PIT = Φ(Z / 3) and E|PIT - 1/2| = arctan(1/3) / π =
    # 0.102, against 0.25 for uniform PIT values (a check against the prior's predictive, say).
    # Measured 0.101 with a standard error of 0.003 over these 600 values; the bound is about
    # five of them.
    assert np.mean(np.abs(pits - 0.5)) == pytest.approx(np.arctan(1 / 3) / np.pi, abs=0.015)


def test_ppc_flags_a_shifted_output_and_records_the_simulator_kind():
    g = torch.Generator().manual_seed(0)
    _, x_o = PROBLEM.simulate(1, g)
    draws = PROBLEM.sampler("exact", g)(x_o, 500)[:, 0]
    shifted = x_o[0].clone()
    shifted[1] += 5.0
    r = posterior_predictive_check(
        shifted, draws, _simulator, surrogate=True, output_names=["a", "b"]
    )
    assert r.verdict == "inconsistent"
    assert r.flagged == ("b",)
    assert r.simulator_kind == "surrogate"
    assert r.tail_probability[1] == pytest.approx(2 / 501)
    assert r.replicates.shape == (500, 2)


def test_ppc_drops_failed_simulations_and_checks_shapes():
    def flaky(theta, generator):
        out = _simulator(theta, generator)
        out[::10] = float("nan")
        return out

    draws = torch.zeros(100, 2, dtype=torch.float64)
    r = posterior_predictive_check(torch.zeros(2), draws, flaky)
    assert r.n_failed == 10 and r.replicates.shape == (90, 2)
    with pytest.raises(DiagnosticInputError, match="simulator must return"):
        posterior_predictive_check(torch.zeros(3), draws, _simulator)
    with pytest.raises(DiagnosticInputError, match="x_o"):
        posterior_predictive_check(torch.zeros(4, 2), draws, _simulator)


def test_ppc_leaves_absent_outputs_out_and_tests_the_rest_at_alpha_over_those_present():
    g = torch.Generator().manual_seed(1)
    _, x_o = PROBLEM.simulate(1, g)
    draws = PROBLEM.sampler("exact", g)(x_o, 500)[:, 0]
    full = x_o[0].clone()
    full[0] += 1.3  # a tail probability between alpha / 2 and alpha (0.032)
    gap = full.clone()
    gap[1] = float("nan")
    both = posterior_predictive_check(full, draws, _simulator, seed=2)
    one = posterior_predictive_check(gap, draws, _simulator, seed=2)
    assert both.alpha / 2 < both.tail_probability[0] < both.alpha, both.tail_probability
    assert one.tail_probability[0] == both.tail_probability[0] and one.pit[0] == both.pit[0]
    assert np.isnan(one.tail_probability[1]) and np.isnan(one.pit[1])
    assert both.verdict == "consistent" and one.flagged == ("x[0]",)  # α / 2 against α / 1
    for bad in ([float("nan")] * 2, [float("inf"), 0.0]):
        with pytest.raises(DiagnosticInputError, match="x_o must be finite where present"):
            posterior_predictive_check(torch.tensor(bad), draws, _simulator)
