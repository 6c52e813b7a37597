"""The multivariate Gaussian through its eigendecomposition: whitening, sampling, density."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.models.classical import DensityEstimator, MultivariateGaussian

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
COV = torch.tensor([[2.0, 0.8, 0.1], [0.8, 1.0, -0.3], [0.1, -0.3, 0.5]], dtype=torch.float64)


def test_whitening_is_the_inverse_of_unwhitening_and_decorrelates():
    gauss = MultivariateGaussian(MEAN, COV)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(gauss.unwhiten(gauss.whiten(x)), x)
    # z^T z is the Mahalanobis distance (x - mu)^T Sigma^-1 (x - mu).
    maha = ((x - MEAN) @ torch.linalg.inv(COV) * (x - MEAN)).sum(-1)
    torch.testing.assert_close(gauss.whiten(x).square().sum(-1), maha)
    # The eigendecomposition reproduces the covariance.
    rebuilt = gauss.eigenvectors @ torch.diag(gauss.eigenvalues) @ gauss.eigenvectors.T
    torch.testing.assert_close(rebuilt, COV)


def test_log_prob_matches_torch_distributions():
    gauss = MultivariateGaussian(MEAN, COV)
    ref = torch.distributions.MultivariateNormal(MEAN, COV)
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(gauss.log_prob(x), ref.log_prob(x))


def test_samples_have_the_right_moments_and_fit_recovers_them():
    gauss = MultivariateGaussian(MEAN, COV)
    draws = gauss.sample((200_000,), generator=torch.Generator().manual_seed(2))
    # Standard errors: mean sqrt(2 / 2e5) ≈ 0.003, covariance entries at most ≈ 0.007.
    torch.testing.assert_close(draws.mean(0), MEAN, atol=0.02, rtol=0)
    fitted = MultivariateGaussian().fit(draws)
    assert isinstance(fitted, DensityEstimator)
    torch.testing.assert_close(fitted.covariance, COV, atol=0.04, rtol=0)
    with pytest.raises(AssertionError):  # the check does see a wrong covariance
        torch.testing.assert_close(fitted.covariance, 1.05 * COV, atol=0.04, rtol=0)


def test_same_seed_same_samples():
    gauss = MultivariateGaussian(MEAN, COV)
    a = gauss.sample((3,), generator=torch.Generator().manual_seed(3))
    b = gauss.sample((3,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (3, 3)
    assert gauss.log_prob(MEAN).item() == pytest.approx(
        -0.5 * (3 * math.log(2 * math.pi) + torch.logdet(COV).item())
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MultivariateGaussian(MEAN), "both"),
        (lambda: MultivariateGaussian(MEAN, COV[:2, :2]), r"\(D, D\)"),
        (lambda: MultivariateGaussian(MEAN, COV + torch.triu(COV, 1)), "symmetric"),
        (lambda: MultivariateGaussian(MEAN, -COV), "positive definite"),
        (lambda: MultivariateGaussian().sample((2,)), "not fitted"),
        (lambda: MultivariateGaussian(MEAN, COV).whiten(torch.zeros(2)), r"\(\.\.\., 3\)"),
    ],
)
def test_bad_inputs_raise_package_errors(make, match):
    with pytest.raises(SbitkError, match=match):
        make()
