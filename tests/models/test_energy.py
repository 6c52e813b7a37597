"""The energy-based model: Langevin samples of a trained model against a 2-D mixture by MMD, the
noise Gaussian against the closed-form regression, and an amortised posterior end to end (a
linear-Gaussian problem through the training engine and DirectPosterior)."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.training import TrainConfig, train
from sbitk.models.contract import UNNORMALISED, check_estimator
from sbitk.models.divergences import mmd
from sbitk.models.energy import EnergyModel
from sbitk.posteriors.direct import DirectPosterior
from sbitk.simulation.priors import Normal

#: Kernel widths of the MMD: the modes' width and two coarser scales. The median heuristic
#: alone (about 2) hardly sees the modes: the fitted Gaussian scored 0.002-0.003 against the
#: mixture with it, 0.068-0.072 with these.
BANDWIDTHS = [0.25, 0.5, 1.0]
#: Tolerance on the MMD of 1,000 Langevin samples against 1,000 exact ones. Measured over ten
#: training seeds with the settings of the NCE test: -0.0006 to 0.0018 (two exact samples:
#: -0.0010 to 0.0019, the same spread); CD with short-run ULA chains from the noise (three
#: seeds, the default network, 1,500 steps at 11 times NCE's cost) -0.0003 to 0.0003, with
#: persistent chains up to 0.0015. The untrained model (its noise Gaussian) scores
#: 0.069-0.075, the mixture with one mode of weight 0.4 0.011-0.021, with 15 % too wide a ring
#: 0.015-0.019.
TOLERANCE = 0.005


def ring(n: int, generator: torch.Generator) -> torch.Tensor:
    """Four Gaussians (sd 0.25) at radius 1.5, equal weights."""
    k = torch.randint(4, (n,), generator=generator)
    angle = k * math.pi / 2 + math.pi / 4
    centre = 1.5 * torch.stack([angle.cos(), angle.sin()], -1)
    return centre + 0.25 * torch.randn(n, 2, generator=generator)


def fit(model, data, generator, steps=1500, batch=256):
    """Adam with a cosine decay to zero: the last iterate of a constant rate wanders (MMD of
    0.0002 to 0.047 over eight seeds)."""
    model.fit_standardization(data)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        rows = torch.randint(data.shape[0], (batch,), generator=generator)
        opt.zero_grad()
        model.loss(data[rows]).mean().backward()
        opt.step()
        schedule.step()
    return model.eval()


def test_nce_trained_energy_sampled_by_langevin_matches_a_mixture():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = ring(4000, g)
    model = EnergyModel(2)
    model.fit_standardization(data)
    truth = ring(1000, torch.Generator().manual_seed(200))
    untrained = model().sample((1000,), generator=torch.Generator().manual_seed(100))
    assert float(mmd(untrained, truth, bandwidth=BANDWIDTHS)) > 10 * TOLERANCE
    fit(model, data, g)
    samples = model().sample((1000,), generator=torch.Generator().manual_seed(100))
    assert float(mmd(samples, truth, bandwidth=BANDWIDTHS)) < TOLERANCE
    # NCE learns the normalising constant too: the density integrates to about 1 on a grid
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-3.5, 3.5, 141)] * 2, indexing="ij"), -1)
    with torch.no_grad():
        mass = model().log_prob(grid.reshape(-1, 2)).exp().sum() * 0.05**2
    assert float(mass) == pytest.approx(1.0, abs=0.1)


def test_contrastive_divergence_with_persistent_chains_matches_a_mixture():
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    data = ring(4000, g)
    model = fit(EnergyModel(2, hidden_features=(64, 64), objective="cd", cd_init="persistent",
                            cd_steps=10), data, g, steps=800)  # fmt: skip
    samples = model().sample((1000,), generator=torch.Generator().manual_seed(101))
    truth = ring(1000, torch.Generator().manual_seed(201))
    assert float(mmd(samples, truth, bandwidth=BANDWIDTHS)) < TOLERANCE


def test_the_noise_is_the_least_squares_gaussian_of_the_rows():
    g = torch.Generator().manual_seed(2)
    c = torch.randn(20000, 2, generator=g, dtype=torch.float64)
    weight = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)
    tril = torch.tensor([[0.5, 0.0], [0.4, 0.3]], dtype=torch.float64)
    a = c @ weight + torch.tensor([1.0, -1.0], dtype=torch.float64)
    a = a + torch.randn(20000, 2, generator=g, dtype=torch.float64) @ tril.T
    model = EnergyModel(2, 2).double().fit_standardization(a, c)
    # the noise, mapped back to a's units, is N(c W + b, L L^T)
    std = model.inputs.std
    cov = (model.noise_tril @ model.noise_tril.T) * std.outer(std)
    assert torch.allclose(cov, tril @ tril.T, atol=0.01)
    c0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    mean = model.inputs.inverse(model.noise_mean(model.standardized_context(c0)))
    assert torch.allclose(mean, c0 @ weight + torch.tensor([1.0, -1.0]).double(), atol=0.02)


def test_an_ebm_posterior_end_to_end_on_a_linear_gaussian_problem():
    """θ ~ N(0, I), x = θ + N(0, 0.5² I): the posterior is N(0.8 x, 0.2 I). The noise is made
    1.5 times too wide, so that the energy has something to learn."""
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(4000, 2, generator=g)
    x = theta + 0.5 * torch.randn(4000, 2, generator=g)
    torch.manual_seed(3)
    model = EnergyModel(2, 2, hidden_features=(64, 64), noise_scale=1.5, mcmc_warmup=100)
    train(model, theta, x, TrainConfig(max_epochs=40, progress=False, seed=3))
    posterior = DirectPosterior(model, Normal(0.0, 1.0, dim=2))
    assert posterior.density == UNNORMALISED and not posterior.amortized
    x_o = torch.tensor([[0.0, 0.0], [1.5, -1.0], [-1.5, 2.0]])
    draws = posterior.sample(2000, x_o, seed=4)  # (2000, 3, 2)
    # Sampled as NLE's posterior is: slice sampling, 200 chains of 10 kept draws each (the
    # last observation's chains are kept). Their R-hat was 1.01-1.03 and their ESS 1,900-2,100
    # with seeds 4, 5 and 6: slice sampling a 2-D Gaussian mixes in a sweep or two.
    chains = posterior.last_result
    assert chains.samples.shape == (200, 10, 2) and float(chains.rhat.max()) < 1.05
    assert torch.equal(chains.samples.transpose(0, 1).reshape(-1, 2), draws[:, 2])
    assert float(chains.ess.min()) > 1000
    # The mean's standard error is then sqrt(0.2 / 2000) = 0.01; the learned energy's own
    # error reaches 0.07 two standard deviations out. The noise alone has the right mean but
    # sd 0.67, which the second check tells from 0.45.
    assert torch.allclose(draws.mean(0), 0.8 * x_o, atol=0.08)
    assert torch.allclose(draws.std(0), torch.full((3, 2), math.sqrt(0.2)), atol=0.05)
    # log_prob is the true log density up to a constant per observation: the spread of the
    # difference was 0.05-0.11 nats against the exact log density's 0.93-0.96; the noise's own
    # log density (the untrained model) is off by 0.56 of the latter.
    lp = posterior.log_prob(draws[:200], x_o).detach()  # (200, 3)
    exact = -0.5 * (draws[:200] - 0.8 * x_o).square().sum(-1) / 0.2
    assert float((lp - exact).std(0).max()) < 0.2 * float(exact.std(0).min())
    assert torch.equal(posterior.sample(5, x_o, seed=4), posterior.sample(5, x_o, seed=4))


def test_validation_loss_is_fixed_and_blind_to_a_cd_energy_s_constant():
    g = torch.Generator().manual_seed(5)
    a, c = torch.randn(300, 2, generator=g), torch.randn(300, 1, generator=g)
    for objective, blind in (("nce", False), ("cd", True)):
        model = EnergyModel(2, 1, hidden_features=(16,), objective=objective)
        model.fit_standardization(a, c)
        before = model.validation_loss(a, c)
        assert torch.equal(before, model.validation_loss(a, c))
        with torch.no_grad():
            model.net.output_layer.bias += 3.0
        after = model.validation_loss(a, c)
        assert torch.allclose(before, after, atol=1e-4) == blind


@pytest.mark.parametrize("sampler", ["ula", "mala"])
def test_cd_runs_with_either_sampler_conditional_or_not(sampler):
    g = torch.Generator().manual_seed(6)
    a, c = torch.randn(64, 2, generator=g), torch.randn(64, 3, generator=g)
    for context in (None, c):
        options = dict(objective="cd", cd_sampler=sampler, cd_steps=3, hidden_features=(8,))
        model = EnergyModel(2, 0 if context is None else 3, **options)
        check_estimator(model.fit_standardization(a, context))
        loss = model.loss(a, context)
        assert loss.shape == (64,) and torch.isfinite(loss).all()
        loss.mean().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_bad_options_and_inputs_are_refused_with_a_message():
    with pytest.raises(SbitkError, match="objective"):
        EnergyModel(2, objective="ml")
    with pytest.raises(SbitkError, match="persistent chains cannot"):
        EnergyModel(2, 3, objective="cd", cd_init="persistent")
    with pytest.raises(SbitkError, match="unexpected keyword"):
        EnergyModel(2, steps=3)
    with pytest.raises(SbitkError, match="unconditional"):
        EnergyModel(2).loss(torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(SbitkError, match=r"context of shape \(\*, 3\)"):
        EnergyModel(2, 3)(torch.zeros(4, 2))
