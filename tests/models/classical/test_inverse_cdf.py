"""Inverse-CDF samplers: KS tests against their targets, and the quantiles themselves."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbitk.errors import SbitkError
from sbitk.models.classical import (
    Discrete,
    Exponential,
    NumericalInverseCDF,
    SpikeAndSlab,
    invert_cdf,
)
from sbitk.models.classical.inverse_cdf import normal_cdf

N = 20_000
# Fixed seeds: under the target the KS p-value is uniform, so a pass at 1e-3 fails one seed in
# a thousand; a wrong target (the negative controls below) gives p-values below 1e-10.
LEVEL = 1e-3


def _ks(samples: torch.Tensor, cdf) -> float:
    return stats.kstest(samples.double().numpy(), cdf).pvalue


def test_exponential_closed_form_quantile_passes_ks():
    g = torch.Generator().manual_seed(0)
    x = Exponential(2.0).sample((N,), generator=g)
    assert _ks(x, stats.expon(scale=0.5).cdf) > LEVEL
    assert _ks(x, stats.expon(scale=0.55).cdf) < 1e-10  # a 10% wrong rate is caught


def test_exponential_quantile_inverts_its_cdf():
    d = Exponential(0.7)
    u = torch.linspace(0.001, 0.999, 101, dtype=torch.float64)
    torch.testing.assert_close(d.cdf(d.icdf(u)), u)
    assert float(d.log_prob(torch.tensor(-1.0))) == -math.inf


def _gamma_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.gammainc(torch.full_like(x, 2.5), x.clamp_min(0))


def _gamma_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(1.5 * x.log() - x - math.lgamma(2.5))


@pytest.mark.parametrize("pdf", [None, _gamma_pdf], ids=["bisection", "newton"])
def test_numerical_inversion_matches_scipy_quantiles_and_passes_ks(pdf):
    d = NumericalInverseCDF(_gamma_cdf, low=0.0, pdf=pdf)
    u = torch.tensor([1e-6, 0.01, 0.3, 0.5, 0.9, 0.999999], dtype=torch.float64)
    expected = torch.from_numpy(stats.gamma(2.5).ppf(u.numpy()))
    torch.testing.assert_close(d.icdf(u), expected, rtol=1e-8, atol=1e-10)
    x = d.sample((N,), generator=torch.Generator().manual_seed(1))
    assert _ks(x, stats.gamma(2.5).cdf) > LEVEL
    assert _ks(x, stats.gamma(2.7).cdf) < 1e-10


def test_numerical_inversion_on_an_unbounded_support_brackets_itself():
    u = torch.tensor([1e-12, 0.2, 0.5, 1 - 1e-9], dtype=torch.float64)
    cdf = lambda x: normal_cdf((x - 100.0) / 30.0)  # noqa: E731 - far from the start
    torch.testing.assert_close(invert_cdf(cdf, u), 100.0 + 30.0 * torch.special.ndtri(u))


def test_discrete_sampler_matches_its_probabilities():
    values = torch.tensor([3.0, -1.0, 0.5, 10.0], dtype=torch.float64)
    probs = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    d = Discrete(values, probs)
    x = d.sample((N,), generator=torch.Generator().manual_seed(2))
    counts = [(x == v).sum().item() for v in values]
    assert sum(counts) == N
    assert stats.chisquare(counts, (probs * N).numpy()).pvalue > LEVEL
    wrong = torch.tensor([0.12, 0.38, 0.3, 0.2]) * N
    assert stats.chisquare(counts, wrong.numpy()).pvalue < 1e-6
    torch.testing.assert_close(d.log_prob(values), probs.log())
    # The generalised inverse agrees with numerical inversion of the staircase CDF.
    u = torch.rand(500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    numerical = invert_cdf(d.cdf, u, low=-2.0, high=11.0)
    torch.testing.assert_close(numerical, d.icdf(u).double(), atol=1e-9, rtol=0)


def test_spike_and_slab_atom_and_slab():
    d = SpikeAndSlab(spike=0.3, mean=1.0, std=2.0)
    x = d.sample((N,), generator=torch.Generator().manual_seed(4)).double()
    at_zero = int((x == 0).sum())
    # The atom's count is Binomial(N, 0.3): p-value of the observed count, two-sided.
    assert stats.binomtest(at_zero, N, 0.3).pvalue > LEVEL
    assert stats.binomtest(at_zero, N, 0.32).pvalue < 1e-6
    slab = x[x != 0]
    assert _ks(slab, stats.norm(1.0, 2.0).cdf) > LEVEL
    assert _ks(slab, stats.norm(1.0, 2.2).cdf) < 1e-10
    # The closed-form quantile agrees with the generic generalised inverse, jump included.
    u = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    torch.testing.assert_close(invert_cdf(d.cdf, u), d.icdf(u), atol=1e-9, rtol=0)


def test_spike_and_slab_log_prob_integrates_with_its_atom():
    d = SpikeAndSlab(spike=0.25, mean=-1.0, std=0.5)
    grid = torch.linspace(-6, 4, 20001, dtype=torch.float64)
    continuous = torch.trapezoid(d.log_prob(grid[grid != 0]).exp(), grid[grid != 0])
    atom = d.log_prob(torch.zeros(1, dtype=torch.float64)).exp()
    assert float(continuous + atom) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Exponential(0.0), "rate"),
        (lambda: Discrete(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])), "distinct"),
        (lambda: Discrete(torch.tensor([1.0]), torch.tensor([-1.0])), "non-negative"),
        (lambda: SpikeAndSlab(1.0), "spike"),
        (lambda: NumericalInverseCDF(torch.special.ndtr, low=1.0, high=0.0), "low < high"),
        (lambda: invert_cdf(torch.special.ndtr, torch.tensor([0.0, 0.5])), r"\(0, 1\)"),
    ],
)
def test_bad_inputs_raise_package_errors(make, match):
    with pytest.raises(SbitkError, match=match):
        make()


def test_a_cdf_that_never_reaches_u_is_reported():
    with pytest.raises(SbitkError, match="bracket"):
        invert_cdf(lambda x: 0.5 * torch.special.ndtr(x), torch.tensor([0.9], dtype=torch.float64))


def test_same_seed_same_draws():
    d = SpikeAndSlab(0.5)
    a = d.sample((5,), generator=torch.Generator().manual_seed(7))
    b = d.sample((5,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert np.asarray(a).shape == (5,)
