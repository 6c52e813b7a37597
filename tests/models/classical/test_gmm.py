"""Gaussian mixtures by EM: parameter recovery, BIC, scikit-learn agreement, numerics."""

import numpy as np
import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.models.classical import GaussianMixture, fit_by_bic, kmeans_plus_plus

WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
COVS = torch.tensor(
    [[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.0, -0.3], [-0.3, 0.5]]],
    dtype=torch.float64,
)


def _draw(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    z = torch.randn(n, 2, 1, generator=g, dtype=torch.float64)
    return MEANS[comp] + (torch.linalg.cholesky(COVS)[comp] @ z)[..., 0]


def test_em_recovers_a_known_mixture():
    gmm = GaussianMixture(3).fit(_draw(3000, 0))
    order = torch.cdist(MEANS, gmm.means).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    # Largest absolute error over 20 seeds (N = 3000): means 0.115, weights 0.021, covariance
    # entries 0.263 (mean errors 0.060, 0.009, 0.116; sd 0.028, 0.005, 0.061). Theory for the
    # smallest component (600 points, variance 1): standard error of a mean about 0.04.
    assert float((gmm.means[order] - MEANS).abs().max()) < 0.2
    assert float((gmm.weights[order] - WEIGHTS).abs().max()) < 0.04
    assert float((gmm.covariances[order] - COVS).abs().max()) < 0.4
    assert gmm.converged


def test_bic_picks_the_true_number_of_components():
    # BIC chose 3 on all of 10 seeds (N = 1500, K = 1..5).
    selection = fit_by_bic(_draw(1500, 1), range(1, 6))
    assert selection.n_components == 3
    assert set(selection.bic) == {1, 2, 3, 4, 5}
    # BIC penalises the extra parameters: a 4th component buys too little likelihood.
    assert selection.bic[4] > selection.bic[3] and selection.bic[2] > selection.bic[3]


def test_log_likelihood_matches_scikit_learn():
    from sklearn.mixture import GaussianMixture as SkGMM

    x = _draw(3000, 2)
    ours = GaussianMixture(3, tol=1e-8).fit(x)
    theirs = SkGMM(3, covariance_type="full", tol=1e-8, random_state=0).fit(x.numpy())
    # Both reach the same optimum (measured difference 6e-8 nats per point).
    assert float(ours.log_prob(x).mean()) == pytest.approx(theirs.score(x.numpy()), abs=1e-5)
    # Our log_prob against scikit-learn's density formula, at scikit-learn's parameters.
    ours.weights = torch.from_numpy(theirs.weights_)
    ours.means = torch.from_numpy(theirs.means_)
    ours.covariances = torch.from_numpy(theirs.covariances_)
    ours._chol = torch.linalg.cholesky(ours.covariances)
    np.testing.assert_allclose(ours.log_prob(x).numpy(), theirs.score_samples(x.numpy()))


def test_log_prob_is_finite_far_from_every_component():
    gmm = GaussianMixture(2).fit(_draw(500, 3))
    far = torch.tensor([[1e3, -1e3]], dtype=torch.float64)
    lp = gmm.log_prob(far)
    assert bool(torch.isfinite(lp).all()) and float(lp) < -1e4  # log-sum-exp, no underflow


def test_samples_follow_the_fitted_mixture():
    gmm = GaussianMixture(3).fit(_draw(3000, 4))
    draws = gmm.sample((100_000,), generator=torch.Generator().manual_seed(5))
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    # Standard error of the mean: sqrt(var / n) <= sqrt(6 / 1e5) ≈ 0.008.
    assert float((draws.mean(0) - mean).abs().max()) < 0.04
    assert draws.shape == (100_000, 2)
    # The mixture's covariance, sum_k w_k (S_k + m_k m_k^T) - m m^T: within 0.011 to 0.030 over
    # draw seeds 0-4; draws from unit covariances instead miss it by 0.20.
    w, mu = gmm.weights[:, None, None], gmm.means
    second = (w * (gmm.covariances + mu[:, :, None] * mu[:, None, :])).sum(0)
    covariance = second - mean[:, None] * mean[None, :]
    assert float((torch.cov(draws.T) - covariance).abs().max()) < 0.08


def test_float32_and_batched_shapes():
    x = _draw(1000, 6).float()
    gmm = GaussianMixture(3).fit(x)
    assert gmm.means.dtype == torch.float32
    assert gmm.log_prob(x[:12].reshape(3, 4, 2)).shape == (3, 4)


def test_kmeans_plus_plus_separates_clusters():
    x = _draw(600, 7)
    centres = kmeans_plus_plus(x, 3, torch.Generator().manual_seed(0))
    assert float(torch.cdist(MEANS, centres).min(1).values.max()) < 0.5


def test_same_seed_same_fit():
    x = _draw(500, 8)
    a, b = GaussianMixture(3, seed=4).fit(x), GaussianMixture(3, seed=4).fit(x)
    assert torch.equal(a.means, b.means)
    # The first of several starts is the single start, so the best of them is no worse.
    c = GaussianMixture(3, seed=4, n_init=3).fit(x)
    assert float(c.log_prob(x).mean()) >= float(a.log_prob(x).mean()) - 1e-12


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GaussianMixture(0), "counts"),
        (lambda: GaussianMixture(2, tol=0.0), "tol"),
        (lambda: GaussianMixture(5).fit(torch.zeros(3, 2)), "at least 5"),
        (lambda: GaussianMixture(1).log_prob(torch.zeros(1, 2)), "not fitted"),
        (lambda: GaussianMixture(1).fit(torch.randn(10, 2)).log_prob(torch.zeros(3)), "(...,"),
        (lambda: fit_by_bic(torch.randn(10, 2), []), "empty"),
    ],
)
def test_bad_inputs_raise_package_errors(make, match):
    with pytest.raises(SbitkError, match=match.replace("(", r"\(")):
        make()
