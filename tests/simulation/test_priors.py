"""Priors: sampling, densities against torch, support, bijections, specs and errors."""

import math

import pytest
import torch
from torch.distributions import Beta, Gamma, Independent
from torch.distributions import LogNormal as TorchLogNormal
from torch.distributions import MultivariateNormal as TorchMVN
from torch.distributions import Normal as TorchNormal
from torch.distributions import Uniform as TorchUniform

from sbitk.errors import PriorError
from sbitk.simulation.bijections import bijection_from_spec
from sbitk.simulation.priors import (
    BoxUniform,
    LogNormal,
    MultivariateNormal,
    Normal,
    Product,
    TorchPrior,
    as_prior,
    prior_from_spec,
)

COV = torch.tensor([[1.0, 0.6, 0.0], [0.6, 2.0, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64)


def all_priors():
    """Each prior with the torch distribution that should have the same density."""
    return {
        "box": (
            BoxUniform([-1.0, 0.0], [1.0, 5.0]),
            Independent(TorchUniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 5.0])), 1),
        ),
        "normal": (
            Normal([0.5, -1.0], [2.0, 0.1]),
            Independent(TorchNormal(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.1])), 1),
        ),
        "mvn": (
            MultivariateNormal(torch.tensor([1.0, 0.0, -1.0]), COV),
            TorchMVN(torch.tensor([1.0, 0.0, -1.0]), COV.float()),
        ),
        "lognormal": (
            LogNormal([0.0, 1.0], [0.5, 0.25]),
            Independent(TorchLogNormal(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.25])), 1),
        ),
        "gamma": (
            TorchPrior(Gamma(2.0, 3.0)),
            Independent(Gamma(torch.tensor([2.0]), torch.tensor([3.0])), 1),
        ),
        "beta_vec": (
            TorchPrior(Beta(torch.tensor([2.0, 0.5]), torch.tensor([3.0, 0.5]))),
            Independent(Beta(torch.tensor([2.0, 0.5]), torch.tensor([3.0, 0.5])), 1),
        ),
    }


PRIORS = all_priors()


@pytest.mark.parametrize("name", PRIORS)
def test_sample_shape_support_and_determinism(name):
    prior, _ = PRIORS[name]
    a = prior.sample(500, generator=torch.Generator().manual_seed(3))
    b = prior.sample(500, generator=torch.Generator().manual_seed(3))
    c = prior.sample(500, generator=torch.Generator().manual_seed(4))
    assert a.shape == (500, prior.dim)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert prior.support_contains(a).all()


@pytest.mark.parametrize("name", PRIORS)
def test_log_prob_matches_torch(name):
    prior, reference = PRIORS[name]
    theta = prior.sample(200, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        prior.log_prob(theta), reference.log_prob(theta).float(), rtol=1e-5, atol=1e-5
    )
    # batch dimensions are kept
    assert prior.log_prob(theta.reshape(20, 10, prior.dim)).shape == (20, 10)


@pytest.mark.parametrize("name", PRIORS)
def test_sample_moments_match_declared_mean_and_std(name):
    prior, _ = PRIORS[name]
    n = 40_000
    theta = prior.sample(n, generator=torch.Generator().manual_seed(1)).double()
    std = prior.stddev.double()
    # 5 standard errors of the mean: a false failure has probability < 1e-5 per coordinate
    assert ((theta.mean(0) - prior.mean.double()).abs() <= 5 * std / math.sqrt(n)).all()
    # the sample std of these laws is within 5 % at this n (relative SE <= sqrt((kurtosis-1)/4n))
    torch.testing.assert_close(theta.std(0), std, rtol=0.05, atol=0.0)


def test_outside_support_has_minus_infinity_log_prob():
    box = BoxUniform(-1.0, 1.0, dim=2)
    theta = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, -1.01]])
    assert box.support_contains(theta).tolist() == [True, False, False]
    lp = box.log_prob(theta)
    assert lp[0] == pytest.approx(-math.log(4.0))
    assert torch.isinf(lp[1:]).all() and (lp[1:] < 0).all()
    ln = LogNormal(0.0, 1.0)
    assert ln.log_prob(torch.tensor([[-1.0], [0.0]])).isneginf().all()
    gamma = TorchPrior(Gamma(2.0, 1.0))
    assert gamma.log_prob(torch.tensor([[-0.5]])).isneginf().all()


def test_a_torch_prior_density_leaves_the_global_generator_alone():
    """Its anchor for θ outside the support is drawn under a forked generator, and only when
    some θ is outside."""
    gamma = TorchPrior(Gamma(2.0, 1.0))
    state = torch.get_rng_state()
    lp = gamma.log_prob(torch.tensor([[-0.5], [1.0]]))
    assert torch.equal(torch.get_rng_state(), state)
    assert lp[0].isneginf() and lp[1] == pytest.approx(-1.0)  # log(1 · e^-1 / Γ(2))


@pytest.mark.parametrize("name", PRIORS)
def test_bijection_is_invertible_with_correct_log_det(name):
    prior, _ = PRIORS[name]
    bij = prior.bijection()
    theta = prior.sample(16, generator=torch.Generator().manual_seed(2)).double()
    u, logdet = bij.forward(theta)
    assert u.shape == theta.shape and logdet.shape == (16,)
    torch.testing.assert_close(bij.inverse(u), theta, rtol=1e-9, atol=1e-9)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda t: bij.forward(t)[0], theta[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet)


def test_bijection_maps_box_to_the_whole_real_line():
    bij = BoxUniform([0.0, -2.0], [1.0, 2.0]).bijection()
    u = torch.tensor([[-30.0, 30.0], [0.0, 0.0], [30.0, -30.0]], dtype=torch.float64)
    theta = bij.inverse(u)
    assert ((theta >= torch.tensor([0.0, -2.0])) & (theta <= torch.tensor([1.0, 2.0]))).all()
    torch.testing.assert_close(theta[1], torch.tensor([0.5, 0.0], dtype=torch.float64))


def test_product_concatenates_components():
    prior = Product([BoxUniform(-1.0, 1.0, dim=2), LogNormal(0.0, 1.0), Normal(0.0, 1.0)])
    assert prior.dim == 4
    theta = prior.sample(100, generator=torch.Generator().manual_seed(0))
    expected = (
        PRIORS["box"][0].__class__(-1.0, 1.0, dim=2).log_prob(theta[:, :2])
        + LogNormal(0.0, 1.0).log_prob(theta[:, 2:3])
        + Normal(0.0, 1.0).log_prob(theta[:, 3:])
    )
    torch.testing.assert_close(prior.log_prob(theta), expected)
    bij = prior.bijection()
    u, _ = bij.forward(theta.double())
    torch.testing.assert_close(bij.inverse(u), theta.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PRIORS)
def test_spec_round_trip(name):
    prior, _ = PRIORS[name]
    rebuilt = prior_from_spec(prior.spec())
    theta = prior.sample(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt.log_prob(theta), prior.log_prob(theta))
    assert rebuilt == prior


def test_product_spec_and_bijection_spec_round_trip():
    prior = Product([BoxUniform(-1.0, 1.0, dim=2), LogNormal(0.0, 1.0), Normal(0.0, 1.0)])
    assert prior_from_spec(prior.spec()).spec() == prior.spec()
    bij = prior.bijection()
    theta = prior.sample(10, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(
        bijection_from_spec(bij.spec()).forward(theta)[0], bij.forward(theta)[0]
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BoxUniform([0.0, 1.0], [1.0, 1.0]), "high > low"),
        (lambda: BoxUniform([0.0, 0.0, 0.0], [1.0, 1.0]), "expected dim=3"),
        (lambda: Normal(0.0, -1.0), "scale > 0"),
        (lambda: Normal([0.0, math.inf], 1.0), "finite"),
        (lambda: MultivariateNormal(torch.zeros(2), -torch.eye(2)), "positive definite"),
        (lambda: MultivariateNormal(torch.zeros(2), torch.eye(3)), r"shape \(2, 2\)"),
        (lambda: TorchPrior(TorchNormal(torch.zeros(2, 2), 1.0)), "batch"),
        (lambda: as_prior("uniform"), "expected a prior"),
        (lambda: prior_from_spec({"type": "cauchy"}), "unknown prior type 'cauchy'"),
        (lambda: prior_from_spec({"type": "normal", "loc": [0.0]}), "malformed"),
        (
            lambda: prior_from_spec({"type": "torch", "class": "os.system", "params": {}}),
            "unknown torch distribution",
        ),
        (lambda: BoxUniform(0.0, 1.0, dim=2).log_prob(torch.zeros(5, 3)), r"shape \(\*, 2\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(PriorError, match=message):
        make()
