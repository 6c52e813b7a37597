"""Local C2ST verdicts and level, and the plots."""

import numpy as np
import pytest
import torch
from gaussian_posteriors import CASES, GaussianProblem
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures

from sbitk.diagnostics import (
    DiagnosticInputError,
    expected_coverage,
    local_c2st,
    local_c2st_from_samples,
    sbc,
    tarp,
    zscore_contraction,
)

PROBLEM = GaussianProblem(dim=2, noise=1.0)
X_O = torch.tensor([[0.5, -0.5]], dtype=torch.float64)


def _lc2st(case: str, seed: int = 0, n: int = 400, n_null: int = 99):
    g = torch.Generator().manual_seed(seed)
    theta, x = PROBLEM.simulate(n, g)
    sample = PROBLEM.sampler(case, g)
    return local_c2st_from_samples(
        theta,
        x,
        sample(x, 1)[0],
        X_O[0],
        sample(X_O, 500)[:, 0],
        classifier="quadratic",
        n_null=n_null,
        seed=seed,
    )


# Theory: at x_o every wrong posterior differs from the true one (the prior N(0, I) against
# N(x_o / 2, I / 2) too), so only the exact posterior is consistent.
@pytest.mark.parametrize("case", CASES)
def test_local_c2st_verdicts_match_theory(case):
    result = _lc2st(case)
    assert result.verdict == ("consistent" if case == "exact" else "inconsistent")
    assert result.probabilities.shape == (500,)
    assert result.null.shape == (99,)


@pytest.mark.slow
def test_local_c2st_false_alarms_at_nominal_rate():
    # The permutation null is exact: p-values are uniform on {1/100, ..., 1} for the exact
    # posterior, so the flag rate is 5% within binomial error.
    repeats = 200
    flags = sum(
        _lc2st("exact", seed=10 + s, n=200).verdict != "consistent" for s in range(repeats)
    )
    lo, hi = stats.binom.ppf([0.0005, 0.9995], repeats, 0.05)
    assert lo <= flags <= hi, flags


def test_quadratic_classifier_matches_scikit_learn():
    from sbitk.diagnostics.lc2st import _quadratic_logistic

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 3))
    labels = (feats[:, 0] * feats[:, 1] + rng.normal(size=300) > 0).astype(float)
    ridge = 1e-3
    ours = _quadratic_logistic(feats, labels[None], feats[:50], ridge=ridge)[0]
    clf = make_pipeline(
        PolynomialFeatures(2, include_bias=False),
        LogisticRegression(C=1 / (ridge * 300), tol=1e-10, max_iter=10_000),
    ).fit(feats, labels)
    np.testing.assert_allclose(ours, clf.predict_proba(feats[:50])[:, 0], atol=1e-5)


@pytest.mark.parametrize("case", ["exact", "narrow"])
def test_local_c2st_from_a_sampler_with_the_default_classifier(case):
    """The sampler path with the default classifier tells the exact posterior from one half as
    wide: with 39 null draws the smallest p-value is 1/40 < 0.05, so a wrong verdict, a p-value
    off the permutation grid or a statistic inside the null for the narrow one all fail."""
    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(200, g)
    r = local_c2st(theta, x, X_O[0], PROBLEM.sampler(case, g), n_eval=200, n_null=39)
    assert r.null.shape == (39,)
    assert r.p_value == pytest.approx((1 + (r.null >= r.statistic).sum()) / 40)
    if case == "exact":
        assert r.verdict == "consistent" and r.p_value > 0.5
    else:
        assert r.verdict == "inconsistent" and r.statistic > r.null.max()
        assert r.p_value == pytest.approx(1 / 40)


def test_local_c2st_input_errors():
    z = np.zeros((20, 2))
    with pytest.raises(DiagnosticInputError, match="x_o"):
        local_c2st_from_samples(z, z, z, np.zeros(3), z)
    with pytest.raises(DiagnosticInputError, match="same number of rows"):
        local_c2st_from_samples(z, z[:10], z, np.zeros(2), z)
    with pytest.raises(DiagnosticInputError, match="batched sampler"):
        local_c2st(z, z, np.zeros(2), z)


def test_plots_return_figures():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from sbitk.diagnostics import plots

    g = torch.Generator().manual_seed(0)
    theta, x = PROBLEM.simulate(100, g)
    sample = PROBLEM.sampler("narrow", g)
    figures = [
        plots.plot_sbc_ecdf(sbc(theta, x, sample, n_posterior_samples=30)),
        plots.plot_sbc_ecdf(sbc(theta, x, sample, n_posterior_samples=30), difference=False),
        plots.plot_coverage(
            expected_coverage(theta, x, sample, PROBLEM.log_prob("narrow"), n_posterior_samples=30)
        ),
        plots.plot_tarp(tarp(theta, x, sample, n_posterior_samples=30)),
        plots.plot_contraction(zscore_contraction(theta, x, sample, n_posterior_samples=30)),
    ]
    import matplotlib.pyplot as plt

    for fig in figures:
        assert isinstance(fig, Figure)
        titles = " ".join(ax.get_title() for ax in fig.axes)
        assert "miscalibrated" in titles or "overconfident" in titles, titles
        plt.close(fig)
