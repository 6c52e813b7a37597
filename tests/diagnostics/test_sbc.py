"""SBC: verdicts on known posteriors, false-alarm rate over repeats, shapes and errors."""

import numpy as np
import pytest
import torch
from gaussian_posteriors import CASES, GaussianProblem
from scipy import stats

from sbitk.diagnostics import DiagnosticInputError, rank_calibration, sbc

PROBLEM = GaussianProblem(dim=2, noise=1.0)


def _run(case: str, n: int = 500, L: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta, x = PROBLEM.simulate(n, g)
    return sbc(
        theta,
        x,
        PROBLEM.sampler(case, g),
        n_posterior_samples=L,
        test_quantities={"log_likelihood": PROBLEM.log_likelihood},
        seed=seed,
    )


# Theory: marginal ranks are uniform for the exact posterior and for the prior (the
# data-averaged posterior equals the prior); a too-narrow posterior gives U-shaped ranks, a
# too-wide one hump-shaped ranks, a shifted one skewed ranks. The log-likelihood's rank is
# uniform only for the exact posterior: under the prior the truth explains x better than
# prior draws do, so its rank piles up high.
EXPECTED = {
    "exact": ("calibrated", {"theta[0]": "none", "log_likelihood": "none"}),
    "narrow": ("miscalibrated", {"theta[0]": "overconfident", "theta[1]": "overconfident"}),
    "wide": ("miscalibrated", {"theta[0]": "underconfident", "theta[1]": "underconfident"}),
    "biased": ("miscalibrated", {"theta[0]": "biased high", "theta[1]": "biased high"}),
    "prior": (
        "miscalibrated",
        {"theta[0]": "none", "theta[1]": "none", "log_likelihood": "biased low"},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_verdicts_match_theory(case):
    result = _run(case)
    verdict, shapes = EXPECTED[case]
    assert result.verdict == verdict
    for name, shape in shapes.items():
        assert result[name].shape == shape, (name, result[name])
    assert result.ranks.shape == (500, 3)
    assert result.ranks.min() >= 0 and result.ranks.max() <= 200


def test_false_alarms_on_exact_posterior_stay_at_nominal_rate():
    # 400 independent SBC runs on the exact posterior; each flags with probability at most
    # alpha (Bonferroni over 2 nearly independent marginals: 1 - (1 - 0.025)^2 ≈ 0.049).
    repeats = 400
    flags = 0
    for seed in range(repeats):
        g = torch.Generator().manual_seed(1000 + seed)
        theta, x = PROBLEM.simulate(100, g)
        result = sbc(theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=50, seed=seed)
        flags += result.verdict != "calibrated"
    lo, hi = stats.binom.ppf([0.0005, 0.9995], repeats, 0.049)
    print(f"{flags} false alarms in {repeats} runs, bounds [{lo}, {hi}]")
    assert lo <= flags <= hi, flags


def test_chi_square_summary_is_uniform_under_calibration_and_tiny_when_wrong():
    ranks = np.random.default_rng(0).integers(0, 101, size=(200, 1000))
    p = np.array([rank_calibration(r, 100).chi2_p_value for r in ranks])
    assert stats.kstest(p, "uniform").pvalue > 1e-3
    assert _run("narrow")["theta[0]"].chi2_p_value < 1e-6


def test_precomputed_draws_and_chunked_sampler_agree():
    # A deterministic sampler (posterior quantiles) makes chunking irrelevant.
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(60, g)
    L = 30
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(L) + 0.5) / L).double()

    def quantiles(xb, n):
        loc, s = PROBLEM.loc_scale(xb, "exact")
        return loc + s * q[:n, None, None]

    a = sbc(theta, x, quantiles, n_posterior_samples=L, batch_size=7)
    b = sbc(theta, x, quantiles(x, L), batch_size=1000)
    np.testing.assert_array_equal(a.ranks, b.ranks)
    assert a.n_posterior_samples == b.n_posterior_samples == L


def test_parameter_names_and_item_lookup():
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(50, g)
    r = sbc(
        theta, x, PROBLEM.sampler("exact", g), n_posterior_samples=20, parameter_names=["a", "b"]
    )
    assert r.names == ("a", "b")
    assert r["b"].n_posterior_samples == 20
    with pytest.raises(KeyError):
        r["c"]


def test_ties_are_broken_at_random():
    # A discrete test quantity: constant everywhere. Randomised ranks stay uniform.
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(400, g)
    r = sbc(
        theta,
        x,
        PROBLEM.sampler("exact", g),
        n_posterior_samples=20,
        marginals=False,
        test_quantities={"constant": lambda th, xb: torch.zeros(th.shape[:-1])},
    )
    assert r.verdict == "calibrated"
    assert len(np.unique(r.ranks)) == 21


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"theta": torch.zeros(10, 2), "x": torch.zeros(9, 2)}, "same number of rows"),
        ({"theta": torch.zeros(10), "x": torch.zeros(10, 2)}, "2 dimension"),
        ({"theta": torch.full((10, 2), float("nan")), "x": torch.zeros(10, 2)}, "finite"),
        ({"posterior": lambda x, n: torch.zeros(n, len(x), 3)}, "shape"),
        ({"posterior": torch.zeros(5, 10, 3)}, "shape"),
        ({"test_quantities": {"bad": lambda th, x: th}}, "test quantity 'bad'"),
        ({"alpha": 1.5}, "alpha"),
        ({"parameter_names": ["a"]}, "parameter_names"),
    ],
)
def test_bad_inputs_raise(kwargs, match):
    args = {
        "theta": torch.zeros(10, 2),
        "x": torch.zeros(10, 2),
        "posterior": lambda x, n: torch.zeros(n, len(x), 2),
        "n_posterior_samples": 5,
    }
    args.update(kwargs)
    theta, x, posterior = args.pop("theta"), args.pop("x"), args.pop("posterior")
    with pytest.raises(DiagnosticInputError, match=match):
        sbc(theta, x, posterior, **args)


def test_log_density_quantity_needs_the_likelihood_to_catch_the_prior():
    # Ranks of log q(θ | x) catch a too-narrow q, but when q is the prior they are ranks of
    # log p(θ), uniform like the marginals: only a quantity that involves x through the
    # likelihood exposes the prior (as in the verdict table above).
    g = torch.Generator().manual_seed(3)
    theta, x = PROBLEM.simulate(500, g)
    for case, verdict in [("narrow", "miscalibrated"), ("prior", "calibrated")]:
        r = sbc(
            theta,
            x,
            PROBLEM.sampler(case, g),
            n_posterior_samples=200,
            marginals=False,
            test_quantities={"log_q": PROBLEM.log_prob(case)},
        )
        assert r["log_q"].verdict == verdict, case


def test_test_quantities_are_evaluated_in_slices_of_draws_with_the_same_result():
    from sbitk.diagnostics._sampling import evaluate_quantity

    theta, x = torch.randn(50, 3, 2), torch.randn(3, 4)
    sizes = []

    def quantity(th, xb):
        sizes.append(th.shape[0] * th.shape[1])
        return (th**2).sum(-1) + xb[:, 0]

    out = evaluate_quantity(quantity, theta, x, "q", chunk_rows=7)
    assert torch.equal(out, (theta**2).sum(-1) + x[:, 0])
    assert max(sizes) <= 7 and sum(sizes) == 150  # 2 draws × 3 observations per call
    with pytest.raises(DiagnosticInputError, match=r"test quantity 'bad' must map"):
        evaluate_quantity(lambda th, xb: th.sum(-1)[:1], theta, x, "bad", chunk_rows=7)


def test_zero_precomputed_draws_are_an_input_error_not_a_verdict():
    from sbitk.diagnostics import expected_coverage, tarp

    theta, x = torch.randn(20, 2), torch.randn(20, 2)
    none = torch.zeros(0, 20, 2)
    with pytest.raises(DiagnosticInputError, match="with L >= 1 draws"):
        sbc(theta, x, none)
    with pytest.raises(DiagnosticInputError, match="with L >= 1 draws"):
        tarp(theta, x, none)
    with pytest.raises(DiagnosticInputError, match="with L >= 1 draws"):
        expected_coverage(theta, x, none, lambda t, x: torch.zeros(t.shape[:2]))


def test_a_posteriors_own_sample_method_is_named_as_the_wrong_order():
    class Posterior:
        def sample(self, n, x):
            return torch.zeros(n, x.shape[0], 2)

    theta, x = torch.randn(20, 2), torch.randn(20, 2)
    with pytest.raises(DiagnosticInputError, match=r"lambda x, n: posterior.sample\(n, x\)"):
        sbc(theta, x, Posterior().sample)
    sbc(theta, x, lambda x, n: Posterior().sample(n, x), n_posterior_samples=10)  # it works


def test_tarp_names_itself_when_given_too_few_simulations():
    from sbitk.diagnostics import tarp

    with pytest.raises(DiagnosticInputError, match="TARP needs at least 2 samples, found 1"):
        tarp(torch.randn(1, 2), torch.randn(1, 2), torch.zeros(3, 1, 2))
