"""Divergences: closed forms against Monte Carlo, MMD under the null, kernels, JS and C2ST."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.spatial.distance import cdist

from sbitk.errors import SbitkError
from sbitk.models.divergences import (
    KERNELS,
    c2st,
    c2st_folds,
    forward_kl,
    gaussian_kl,
    js_divergence,
    kernel_matrix,
    kl_monte_carlo,
    median_bandwidth,
    mmd,
    mmd_from_labels,
    reverse_kl,
)

F64 = torch.float64


def _spd(d: int, g: torch.Generator, batch: tuple[int, ...] = ()) -> torch.Tensor:
    a = torch.randn(*batch, d, d, generator=g, dtype=F64)
    return a @ a.transpose(-1, -2) + 0.5 * torch.eye(d, dtype=F64)


def test_gaussian_kl_matches_torch_distributions_batched():
    g = torch.Generator().manual_seed(0)
    mp, mq = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    cp, cq = _spd(3, g, (4,)), _spd(3, g, (4,))
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mp, cp),
        torch.distributions.MultivariateNormal(mq, cq),
    )
    torch.testing.assert_close(gaussian_kl(mp, cp, mq, cq), ref)
    torch.testing.assert_close(gaussian_kl(mp, cp, mp, cp), torch.zeros(4, dtype=F64))


def test_forward_and_reverse_kl_by_monte_carlo_match_the_closed_form():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.zeros(3, dtype=F64), torch.tensor([0.5, -0.5, 1.0], dtype=F64)
    cp, cq = _spd(3, g), _spd(3, g)
    p = torch.distributions.MultivariateNormal(mp, cp)
    q = torch.distributions.MultivariateNormal(mq, cq)
    torch.manual_seed(2)
    fwd = forward_kl(p.log_prob, q.log_prob, p.sample((20_000,)))
    rev = reverse_kl(p.log_prob, q.log_prob, q.sample((20_000,)))
    exact_fwd, exact_rev = gaussian_kl(mp, cp, mq, cq), gaussian_kl(mq, cq, mp, cp)
    # Unbiased estimates: within 4 standard errors (a false failure about 1 in 16,000).
    assert abs(float(fwd.value - exact_fwd)) < 4 * float(fwd.stderr)
    assert abs(float(rev.value - exact_rev)) < 4 * float(rev.stderr)
    # KL is not symmetric, and the estimates tell the two directions apart.
    assert abs(float(exact_fwd - exact_rev)) > 4 * float(fwd.stderr + rev.stderr)
    assert abs(float(fwd.value - exact_rev)) > 4 * float(fwd.stderr)


def test_monte_carlo_standard_error_is_honest():
    # Over 200 repetitions the z-scores (estimate - exact) / stderr have sd 1 (a chi-square
    # band for 200 draws: sd in [0.8, 1.2] holds with probability above 0.995).
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 2.0)
    exact = float(torch.distributions.kl_divergence(p, q))
    g = torch.Generator().manual_seed(3)
    z = []
    for _ in range(200):
        est = kl_monte_carlo(p.log_prob, q.log_prob, torch.randn(200, generator=g))
        z.append(float((est.value - exact) / est.stderr))
    assert 0.8 < np.std(z) < 1.2 and abs(np.mean(z)) < 4 / math.sqrt(200)


def test_kl_is_infinite_where_the_model_has_no_mass():
    p = torch.distributions.Normal(0.0, 1.0)

    def uniform(v: torch.Tensor) -> torch.Tensor:  # U(-1, 1), -inf outside
        return torch.where(v.abs() < 1, -math.log(2.0), -math.inf)

    inside, outside = torch.tensor([0.0, 0.5]), torch.tensor([0.0, 3.0])
    assert math.isfinite(float(forward_kl(p.log_prob, uniform, inside)))
    assert float(forward_kl(p.log_prob, uniform, outside)) == math.inf


def test_js_divergence_against_quadrature_and_its_bounds():
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 1.5)

    def integrand(x: float) -> float:
        lp, lq = p.log_prob(torch.tensor(x, dtype=F64)), q.log_prob(torch.tensor(x, dtype=F64))
        lm = torch.logaddexp(lp, lq) - math.log(2)
        return float(0.5 * lp.exp() * (lp - lm) + 0.5 * lq.exp() * (lq - lm))

    exact = integrate.quad(integrand, -15, 15)[0]
    g = torch.Generator().manual_seed(4)
    x, y = (
        torch.randn(20_000, generator=g, dtype=F64),
        1 + 1.5 * torch.randn(20_000, generator=g, dtype=F64),
    )
    est = js_divergence(p.log_prob, q.log_prob, x, y)
    assert abs(float(est.value) - exact) < 4 * float(est.stderr)
    assert float(js_divergence(p.log_prob, p.log_prob, x, x).value) == pytest.approx(0, abs=1e-15)
    swapped = js_divergence(q.log_prob, p.log_prob, y, x)
    assert float(swapped.value) == pytest.approx(float(est.value), rel=1e-12)  # symmetric


def _mmd2_gaussians(mu: float, s1: float, s2: float, sigma: float, d: int) -> float:
    """Closed-form MMD^2 with a Gaussian kernel between N(0, s1^2 I) and N(mu 1, s2^2 I)."""

    def e_k(
        a2: float, shift2: float
    ) -> float:  # E exp(-|x - y|^2 / 2 sigma^2), x - y ~ N(m, a2 I)
        v = sigma**2 + a2
        return (sigma**2 / v) ** (d / 2) * math.exp(-shift2 / (2 * v))

    return e_k(2 * s1**2, 0.0) + e_k(2 * s2**2, 0.0) - 2 * e_k(s1**2 + s2**2, d * mu**2)


def test_mmd_matches_its_closed_form_between_gaussians():
    d, sigma = 2, 1.5
    exact = _mmd2_gaussians(0.5, 1.0, 1.3, sigma, d)
    g = torch.Generator().manual_seed(5)
    est = []
    for _ in range(40):
        x = torch.randn(300, d, generator=g, dtype=F64)
        y = 0.5 + 1.3 * torch.randn(300, d, generator=g, dtype=F64)
        est.append(float(mmd(x, y, bandwidth=sigma)))
    se = np.std(est, ddof=1) / math.sqrt(len(est))
    assert abs(np.mean(est) - exact) < 4 * se
    assert abs(np.mean(est) - _mmd2_gaussians(0.6, 1.0, 1.3, sigma, d)) > 4 * se  # sees 0.1


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_mmd_is_centred_at_zero_under_the_null(kernel):
    g = torch.Generator().manual_seed(6)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = (
            torch.randn(40, 2, generator=g, dtype=F64),
            torch.randn(40, 2, generator=g, dtype=F64),
        )
        unbiased.append(float(mmd(x, y, kernel, bandwidth=1.0)))
        biased.append(float(mmd(x, y, kernel, bandwidth=1.0, unbiased=False)))
    se = np.std(unbiased, ddof=1) / math.sqrt(200)
    assert abs(np.mean(unbiased)) < 4 * se
    # The V-statistic is biased upwards (by about (1 - E k(x, x')) (1/n + 1/m)).
    assert np.mean(biased) > 10 * se and min(biased) >= 0
    # Under a shift of one standard deviation every kernel sees a difference.
    shifted = [
        float(
            mmd(
                torch.randn(40, 2, generator=g, dtype=F64),
                1.0 + torch.randn(40, 2, generator=g, dtype=F64),
                kernel,
                1.0,
            )
        )
        for _ in range(20)
    ]
    assert np.mean(shifted) > 10 * se


def test_kernel_matrices_against_their_formulas():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    r = cdist(a.numpy(), b.numpy())
    expected = {
        "gaussian": np.exp(-(r**2) / (2 * 0.8**2)),
        "imq": 1 / np.sqrt(1 + r**2 / 0.8**2),
        "laplace": np.exp(-r / 0.8),
    }
    for kernel, value in expected.items():
        np.testing.assert_allclose(kernel_matrix(a, b, kernel, 0.8).numpy(), value, rtol=1e-12)
    multi = kernel_matrix(a, b, "laplace", [0.8, 2.0]).numpy()
    np.testing.assert_allclose(multi, 0.5 * (expected["laplace"] + np.exp(-r / 2.0)), rtol=1e-12)


def test_permutation_form_equals_the_direct_statistic():
    g = torch.Generator().manual_seed(8)
    pooled = torch.randn(30, 2, generator=g, dtype=F64)
    labels = torch.zeros(3, 30, dtype=F64)
    for i in range(3):
        labels[i, torch.randperm(30, generator=g)[:12]] = 1.0
    k = kernel_matrix(pooled, pooled, "gaussian", 1.1).fill_diagonal_(0.0)
    stats_all = mmd_from_labels(k, labels, 12)
    for i in range(3):
        a, b = pooled[labels[i] == 1], pooled[labels[i] == 0]
        assert float(stats_all[i]) == pytest.approx(float(mmd(a, b, bandwidth=1.1)), rel=1e-10)


def test_median_heuristic_is_the_median_pairwise_distance():
    x = torch.randn(51, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    d = cdist(x.numpy(), x.numpy())[np.triu_indices(51, 1)]
    assert float(median_bandwidth(x)) == pytest.approx(np.sort(d)[(len(d) - 1) // 2])


def test_c2st_core_agrees_with_the_diagnostic_and_with_theory():
    from sbitk.diagnostics import c2st as c2st_test

    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(200, 2, generator=g, dtype=F64), torch.randn(200, 2, generator=g, dtype=F64)
    folds = c2st_folds(a, b + 2.0, seed=3)
    assert tuple(folds) == c2st_test(a, b + 2.0, seed=3).fold_accuracies
    # Bayes accuracy for a shift of 2 per axis in 2-D, within 4 binomial standard errors.
    bayes = stats.norm.cdf(math.sqrt(8) / 2)
    assert float(np.mean(folds)) == pytest.approx(
        bayes, abs=4 * math.sqrt(bayes * (1 - bayes) / 400)
    )
    # Same distribution: chance, within 4 binomial standard errors sqrt(0.25 / 400) = 0.025.
    assert abs(c2st(a, b) - 0.5) < 0.1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: mmd(x, x, kernel="cauchy"), "kernel must be one of"),
        (lambda x: mmd(x, x, bandwidth=0.0), "bandwidths must be > 0"),
        (lambda x: mmd(x, x[:, :1]), r"\(N, D\)"),
        (lambda x: mmd(x[:1], x), "at least 2"),
        (lambda x: gaussian_kl(x[0], torch.eye(2), x[0], -torch.eye(2)), "positive definite"),
        (lambda x: gaussian_kl(x[0], torch.eye(3), x[0], torch.eye(3)), r"\(\*B, D, D\)"),
        (lambda x: forward_kl(1.0, 2.0, x), "callables"),
        (lambda x: forward_kl(lambda v: v, lambda v: v, x), "must return"),
        (lambda x: c2st_folds(x, x[:, :1]), "same D"),
        (lambda x: c2st_folds(x[:3], x), "n_folds"),
        (lambda x: c2st_folds(x, x, classifier="svm"), "classifier"),
    ],
)
def test_bad_inputs_raise_package_errors(call, match):
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SbitkError, match=match):
        call(x)
