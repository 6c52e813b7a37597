"""NPE and NLE on small problems: support, shapes, invalid rows, banks, i.i.d. trials."""

import math
import warnings
from unittest import mock

import pytest
import torch
from torch import nn

import sbitk
from sbitk.errors import SbitkError
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.posteriors.direct import DirectPosterior
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.priors import BoxUniform, LogNormal, Normal, Product

QUICK = TrainConfig(progress=False, max_epochs=15, batch_size=256)
MCMC = MCMCConfig(num_chains=64, warmup=30, sir_candidates=2000, progress=False)


def shifted(theta, generator):
    return theta + 0.3 * torch.randn(theta.shape, generator=generator)


def sometimes_failing(theta, generator):
    """x = θ + noise, NaN where θ_0 > 0.6 (a failure region in parameter space)."""
    x = shifted(theta, generator)
    x[theta[:, 0] > 0.6] = math.nan
    return x


def box_data(n=3000, seed=0, fn=shifted):
    prior = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    g = torch.Generator().manual_seed(seed)
    theta = prior.sample(n, g)
    return prior, theta, fn(theta, g)


def test_npe_samples_never_leave_a_box_prior_even_for_far_away_observations():
    prior, theta, x = box_data()
    posterior = NPE(prior, "gaussian", config=QUICK).fit(theta, x)
    far = torch.tensor([[50.0, -50.0], [0.0, 1.0], [-3.0, 9.0]])
    samples = posterior.sample(2000, x=far, seed=0)
    assert samples.shape == (2000, 3, 2)
    assert prior.support_contains(samples).all()
    assert posterior.acceptance_rate == 1.0


def test_npe_with_a_flow_stays_inside_a_product_prior_with_a_positive_parameter():
    prior = Product([BoxUniform(-1.0, 1.0), LogNormal(0.0, 0.5)])
    g = torch.Generator().manual_seed(1)
    theta = prior.sample(2000, g)
    x = torch.cat([theta[:, :1], theta[:, 1:].log()], -1) + 0.2 * torch.randn(2000, 2, generator=g)
    posterior = NPE(prior, "nsf", config=QUICK, transforms=2, hidden_features=(32, 32)).fit(
        theta, x
    )
    samples = posterior.sample(3000, x=torch.tensor([[5.0, 5.0], [-5.0, -5.0]]), seed=0)
    assert prior.support_contains(samples).all()


def test_direct_posterior_density_integrates_to_one_over_the_box():
    prior = BoxUniform(-1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(2000, g)
    x = theta + 0.5 * torch.randn(2000, 1, generator=g)
    posterior = NPE(prior, "gaussian", config=QUICK).fit(theta, x)
    grid = torch.linspace(-1, 1, 20001)[1:-1].unsqueeze(-1)
    density = posterior.log_prob(grid, x=torch.tensor([0.3])).exp()
    # The log-determinant of the logit map is included: the density in θ integrates to 1.
    assert float(density.detach().sum() * (2 / 20000)) == pytest.approx(1.0, abs=2e-3)
    assert posterior.log_prob(torch.tensor([[1.5]]), x=torch.tensor([0.3])).item() == -math.inf


def test_direct_posterior_batched_shapes_and_map():
    prior = Normal(0.0, 1.0, dim=2)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(3000, g)
    x = theta + 0.3 * torch.randn(3000, 2, generator=g)
    posterior = NPE(prior, "gaussian", config=QUICK).fit(theta, x)
    xo = torch.tensor([[0.5, -0.5], [1.0, 1.0], [0.0, 0.0]])
    assert posterior.sample(7, x=xo, seed=0).shape == (7, 3, 2)
    assert posterior.sample(7, x=xo[0], seed=0).shape == (7, 2)
    assert posterior.log_prob(torch.zeros(5, 3, 2), x=xo).shape == (5, 3)
    assert posterior.log_prob(torch.zeros(5, 2), x=xo[0]).shape == (5,)
    with pytest.raises(SbitkError, match=r"\(\*, 3, 2\)"):
        posterior.log_prob(torch.zeros(5, 2), x=xo)
    # The exact posterior mode is x / (1 + 0.3²).
    modes = posterior.map(x=xo)
    assert modes.shape == (3, 2)
    assert torch.allclose(modes, xo / 1.09, atol=0.1)
    # and the ascent ends at the fitted density's own mode, where its gradient vanishes
    at_modes = modes.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(posterior.log_prob(at_modes, x=xo).sum(), at_modes)
    assert grad.abs().max() < 1e-3, grad
    assert torch.equal(posterior.sample(5, x=xo, seed=3), posterior.sample(5, x=xo, seed=3))


def test_flow_posterior_draws_in_chunks_of_whole_observations_follow_one_distribution():
    prior = Normal(0.0, 1.0, dim=2)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(1000, g)
    x = theta + 0.3 * torch.randn(1000, 2, generator=g)
    posterior = NPE(prior, "nsf", config=QUICK, transforms=2, hidden_features=(16,)).fit(theta, x)
    xo = torch.randn(3, 2, generator=g)
    n = 4000
    whole = posterior.sample(n, x=xo, seed=1, chunk_rows=100_000)
    # 7 rows per call: one observation at a time (its 4,000 draws do not fit), 7 draws a call
    chunked = posterior.sample(n, x=xo, seed=2, chunk_rows=7)
    assert chunked.shape == (n, 3, 2)
    assert torch.equal(chunked, posterior.sample(n, x=xo, seed=2, chunk_rows=7))
    # two independent sample means differ by sqrt(2) sd / sqrt(n); allow 4 of those
    tolerance = 4 * 2**0.5 * whole.std(0) / n**0.5
    assert ((chunked.mean(0) - whole.mean(0)).abs() < tolerance).all()
    # a sample sd has relative error 1 / sqrt(2n); the same 4 * sqrt(2) margin
    assert torch.allclose(chunked.std(0), whole.std(0), rtol=4 * 2**0.5 / (2 * n) ** 0.5)
    with pytest.raises(SbitkError, match="chunk_rows must be >= 1"):
        posterior.sample(5, x=xo, chunk_rows=0)
    # where a group of observations' draws fit in a call, each call draws all n of them
    assert calls_of(posterior, 50, torch.randn(5, 2, generator=g), 120) == [(2, 50)] * 2 + [
        (1, 50)
    ]
    # and where one observation's do not, calls draw for one observation at a time
    assert calls_of(posterior, 50, xo, 7) == ([(1, 7)] * 7 + [(1, 1)]) * 3


def calls_of(posterior, n: int, xo, chunk_rows: int) -> list[tuple[int, int]]:
    """(observations, draws) of each estimator call that ``posterior.sample`` makes."""
    calls, inner = [], posterior.estimator.forward

    def recording(xs):
        dist = inner(xs)
        own = dist.sample
        dist.sample = lambda shape: calls.append((xs.shape[0], shape[0])) or own(shape)
        return dist

    with mock.patch.object(posterior.estimator, "forward", recording):
        posterior.sample(n, x=xo, seed=0, chunk_rows=chunk_rows)
    return calls


def test_wrong_observations_are_refused_by_name():
    prior, theta, x = box_data(500)
    posterior = NPE(prior, "gaussian", config=QUICK).fit(theta, x)
    with pytest.raises(SbitkError, match=r"x must have shape \(2,\) or \(B, 2\)"):
        posterior.sample(3, x=torch.zeros(3))
    with pytest.raises(SbitkError, match="finite"):
        posterior.sample(3, x=torch.tensor([math.nan, 0.0]))
    with pytest.raises(SbitkError, match="pass the observation"):
        posterior.sample(3)
    with pytest.raises(SbitkError, match="estimator 'nope' is not installed"):
        NPE(prior, "nope").fit(theta, x)


def test_rejection_sampling_reports_its_acceptance_rate_and_gives_up_in_time():
    prior, theta, x = box_data(2000)
    posterior = NPE(prior, "gaussian", unconstrained=False, config=QUICK).fit(theta, x)
    samples = posterior.sample(500, x=torch.tensor([0.9, 1.9]), seed=0)
    assert prior.support_contains(samples).all()
    assert 0.05 < posterior.acceptance_rate < 1.0
    # Caps on attempts and time: an estimator with its mass far outside the box does not hang.
    far = DirectPosterior(
        far_gaussian(), prior, unconstrained=False, max_rejection_attempts=5, max_rejection_time=5
    )
    with pytest.warns(UserWarning, match=r"accepted only 0\.00%.*slice sampling"):
        samples = far.sample(10, x=torch.zeros(2), seed=0)
    assert prior.support_contains(samples).all() and far.mcmc_observations == [0]


def far_gaussian():
    """A Gaussian q(θ | x) = N((3, 3), 0.5² I) for every x: 7e-7 of its mass is in the box."""
    estimator = ConditionalGaussian(2, 2)
    nn.init.zeros_(estimator.net[-1].weight)
    nn.init.zeros_(estimator.net[-1].bias)
    estimator.input_mean.fill_(3.0)
    estimator.input_std.fill_(0.5)
    return estimator


def test_observations_rejection_cannot_serve_get_the_truncated_estimator_by_mcmc():
    from scipy.stats import truncnorm

    prior = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    posterior = DirectPosterior(far_gaussian(), prior, unconstrained=False)
    near = ConditionalGaussian(2, 2)  # mass inside the box: rejection serves it
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    with pytest.warns(UserWarning, match=r"2 observation\(s\)"):
        samples = posterior.sample(4000, x=x, seed=1)
    assert prior.support_contains(samples).all() and posterior.mcmc_observations == [0, 1]
    # The truncated N(3, 0.5²) factorises: each coordinate is a truncated normal. Its standard
    # deviations are 0.12 and 0.33; 4,000 draws of 64 chains keep an effective size above 400,
    # so 0.03 is more than four standard errors of either mean.
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])
    for j in range(2):
        a, b = (low[j] - 3.0) / 0.5, (high[j] - 3.0) / 0.5
        want = truncnorm(float(a), float(b), loc=3.0, scale=0.5).mean()
        assert samples[..., j].mean(0).sub(want).abs().max() < 0.03
    # Within the box the estimator is served by rejection alone.
    inside = DirectPosterior(near, prior, unconstrained=False)
    inside.sample(100, x=x, seed=0)
    assert inside.mcmc_observations == [] and inside.acceptance_rate > 0.05


def test_an_estimator_with_no_finite_density_in_the_support_is_a_clear_error():
    prior = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    nowhere = far_gaussian()
    nowhere.input_std.fill_(1e-30)  # the density underflows to zero on the whole box
    posterior = DirectPosterior(nowhere, prior, unconstrained=False, max_rejection_attempts=3)
    with pytest.raises(SbitkError, match=r"no samples inside.*prior draws.*unconstrained=True"):
        posterior.sample(10, x=torch.zeros(2), seed=0)


def test_npe_with_the_spline_flow_trains_on_theta_for_a_box_prior():
    prior, theta, x = box_data(500)
    quick = TrainConfig(max_epochs=1, progress=False)
    posterior = NPE(prior, "nsf", config=quick).fit(theta, x)
    assert not posterior.unconstrained
    cfg = posterior.estimator.config
    assert (cfg.bins, cfg.bound, cfg.hidden_features) == (10, 3.0, (64, 64, 64))
    # Asked for: the logit coordinates, and the flow's own defaults.
    posterior = NPE(prior, "nsf", unconstrained=True, config=quick, bins=6).fit(theta, x)
    assert posterior.unconstrained and posterior.estimator.config.bins == 6
    assert posterior.estimator.config.bound == 5.0
    # Options given win over the box defaults; other estimators keep the logit.
    posterior = NPE(prior, "nsf", config=quick, bins=6).fit(theta, x)
    assert (posterior.estimator.config.bins, posterior.estimator.config.bound) == (6, 3.0)
    assert NPE(prior, "gaussian", config=quick).fit(theta, x).unconstrained
    with pytest.raises(SbitkError, match="True, False or None"):
        NPE(prior, "nsf", unconstrained="yes")


def test_invalid_rows_are_excluded_and_reported():
    prior, theta, x = box_data(3000, fn=sometimes_failing)
    theta[0, 0] = 7.0  # outside the support
    x[0] = 0.0
    n_bad = int((~torch.isfinite(x).all(-1)).sum())
    assert n_bad > 100
    npe = NPE(prior, "gaussian", config=QUICK)
    with pytest.warns(UserWarning, match=f"{n_bad + 1} of 3000 rows excluded"):
        npe.fit(theta, x)
    assert npe.report.n_non_finite == n_bad and npe.report.n_outside_support == 1
    assert npe.history.n_train + npe.history.n_val == 3000 - n_bad - 1
    rows = npe.history.summary()["rows"]  # what model files keep
    assert rows == {
        "n_rows": 3000, "n_failed": 0, "n_non_finite": n_bad, "n_outside_support": 1
    }  # fmt: skip


@pytest.mark.filterwarnings("ignore::sbitk.simulation.runner.SimulationFailureWarning")
def test_npe_and_nle_train_from_a_bank_in_memory_and_streamed(tmp_path):
    sim = sbitk.simulator(
        "npe_bank_test",
        parameters={"theta": BoxUniform([-1.0, 0.0], [1.0, 2.0])},
        outputs={"x": (2,)},
        register=False,
    )(sometimes_failing)
    bank = sbitk.simulate(
        sim, 2000, seed=0, workers=1, batch_size=200, progress=False, bank=tmp_path / "bank.zarr"
    )
    n_bad = int((~bank.valid).sum())
    assert n_bad > 50
    for stream in (False, True):
        npe = NPE(estimator="gaussian", config=QUICK)
        with pytest.warns(UserWarning, match=f"{n_bad} of 2000 rows excluded"):
            posterior = npe.fit(bank, stream=stream)
        assert npe.report.n_failed == n_bad
        assert posterior.parameter_names == ["theta[0]", "theta[1]"]
        assert posterior.simulator_name == "npe_bank_test"
        samples = posterior.sample(200, x=torch.tensor([0.0, 1.0]), seed=0)
        assert samples.mean(0) == pytest.approx(torch.tensor([0.0, 1.0]), abs=0.15)
    with pytest.raises(SbitkError, match="invalid='exclude'"):
        NLE(estimator="gaussian", config=QUICK).fit(bank)
    with pytest.warns(UserWarning, match="biases the posterior"):
        NLE(estimator="gaussian", config=QUICK, invalid="exclude").fit(bank, stream=True)


@pytest.mark.slow
def test_nle_surrogate_simulates_and_its_posterior_combines_iid_trials():
    prior = Normal(0.0, 1.0, dim=1)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(3000, g)
    x = theta + 0.5 * torch.randn(3000, 1, generator=g)
    posterior = NLE(prior, "gaussian", config=QUICK, mcmc=MCMC).fit(theta, x)
    likelihood = posterior.likelihood
    sims = likelihood.sample(4000, torch.tensor([[1.0], [-2.0]]), seed=0)
    assert sims.shape == (4000, 2, 1)
    assert sims.mean(0).squeeze() == pytest.approx(torch.tensor([1.0, -2.0]), abs=0.1)
    assert sims.std(0).squeeze() == pytest.approx(torch.tensor([0.5, 0.5]), abs=0.08)
    # T trials at θ: posterior N(T x̄ / (T + 0.25), 0.25 / (T + 0.25)) for a N(0, 1) prior.
    trials = torch.full((10, 1), 0.8)
    samples = posterior.sample(3000, x=trials, seed=0)
    result = posterior.last_result
    assert samples.shape == (3000, 1)
    assert result.rhat.max() < 1.05 and result.ess.min() > 500
    # MCMC against the surrogate posterior computed on a grid: within Monte Carlo error.
    grid = torch.linspace(-1, 3, 4001).unsqueeze(-1)
    with torch.no_grad():
        weights = torch.softmax(posterior.log_prob(grid, x=trials), 0)
    mean = (weights * grid[:, 0]).sum()
    sd = (weights * (grid[:, 0] - mean) ** 2).sum().sqrt()
    assert abs(samples.mean() - mean) < 4 * sd / result.ess[0].sqrt()
    assert samples.std().item() == pytest.approx(sd.item(), rel=4 * math.sqrt(0.5 / 500))
    # And the surrogate posterior near the exact one (the surrogate's own error dominates).
    assert mean.item() == pytest.approx(8 / 10.25, abs=0.1)
    assert sd.item() == pytest.approx(math.sqrt(0.25 / 10.25), rel=0.2)
    single = posterior.sample(3000, x=torch.tensor([0.8]), seed=0)
    assert single.std().item() > 2 * samples.std().item()
    assert posterior.map(x=trials).item() == pytest.approx(grid[weights.argmax()].item(), abs=0.01)
    lp = posterior.log_prob(torch.tensor([[0.8], [0.0]]), x=trials)
    assert lp.shape == (2,) and lp[0] > lp[1]


def test_nle_conditions_on_theta_for_a_box_prior_with_its_own_training_defaults():
    prior, theta, x = box_data(n=1500)
    config = TrainConfig(progress=False, max_epochs=2)
    fast = {"transforms": 2, "hidden_features": (16,)}
    posterior = NLE(prior, "nsf", config=config, mcmc=MCMC, **fast).fit(theta, x)
    likelihood = posterior.likelihood
    assert likelihood.unconstrained is False
    assert likelihood.estimator.config.permutation == "lu"  # NLE_NSF_OPTIONS under given ones
    assert posterior.history.batch_size == 256  # NLE's default batch below 50,000 rows
    # The context is θ itself: the estimator's density at θ is the likelihood's.
    xo, th = x[:1], theta[:5]
    with torch.no_grad():
        direct = likelihood.estimator(th).log_prob(xo.expand(5, -1))
    assert torch.allclose(likelihood.log_prob(xo, th), direct)
    # Chosen explicitly, or a prior that is not a box: the unconstrained f(θ).
    explicit = NLE(prior, "gaussian", unconstrained=True, config=config, mcmc=MCMC)
    assert explicit.fit(theta, x).likelihood.unconstrained is True
    normal = Normal(0.0, 1.0, dim=2)
    assert NLE(normal, "gaussian", config=config, mcmc=MCMC).fit(theta, x).likelihood.unconstrained


def test_nle_training_defaults_apply_only_where_the_config_leaves_them_open():
    resolved = NLE(config=TrainConfig())._train_config(10_000)
    assert (resolved.batch_size, resolved.patience, resolved.lr_patience) == (256, 16, 8)
    assert NLE(config=TrainConfig())._train_config(100_000).batch_size == 512
    given = TrainConfig(batch_size=64, patience=3, lr_patience=2)
    assert NLE(config=given)._train_config(10_000) == given
    # NPE keeps the engine's defaults (512 rows, patience 10 and 4, resolved in training).
    assert NPE(config=TrainConfig())._train_config(10_000) == TrainConfig()


def test_map_of_a_density_without_a_gradient_is_the_best_draw_by_its_density():
    """Flow matching's density comes through an ODE without autograd: map is the best of the
    draws (NPE) or of the chains' draws (NLE), by that density, where an ascent would raise
    (NPE) or follow the prior alone (NLE)."""
    prior = Normal(0.0, 1.0, dim=2)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(600, g)
    x = theta + 0.3 * torch.randn(600, 2, generator=g)
    config = TrainConfig(progress=False, max_epochs=3, batch_size=256)
    xo = torch.tensor([0.5, -0.5])
    npe = NPE(prior, "flow_matching", config=config).fit(theta, x)
    draws = npe.sample(50, x=xo, seed=1)
    best = draws[npe.log_prob(draws, x=xo).argmax()]
    assert torch.equal(npe.map(x=xo, n_init=50, seed=1), best)
    mcmc = MCMCConfig(num_chains=4, warmup=5, sir_candidates=200, progress=False)
    nle = NLE(prior, "flow_matching", config=config, mcmc=mcmc).fit(theta, x)
    mode = nle.map(x=xo, seed=1)
    chains = nle.sample(mcmc.num_chains * 10, x=xo, seed=1)
    assert torch.equal(mode, chains[nle.log_prob(chains, x=xo).argmax()])


def test_moving_a_posterior_to_a_device_it_lacks_or_does_not_know_is_one_line():
    prior = Normal(0.0, 1.0, dim=2)
    theta = prior.sample(300, torch.Generator().manual_seed(0))
    config = TrainConfig(progress=False, max_epochs=1)
    npe = NPE(prior, "gaussian", config=config).fit(theta, theta + 0.1)
    nle = NLE(prior, "gaussian", config=config, mcmc=MCMC).fit(theta, theta + 0.1)
    missing = "mps" if not torch.backends.mps.is_available() else "cuda:99"
    for posterior in (npe, nle):
        with pytest.raises(SbitkError, match=r"this machine has no|numbered from 0"):
            posterior.to(missing)
        with pytest.raises(SbitkError, match="device must be 'auto', 'cpu' or 'cuda"):
            posterior.to("gpu")
        assert posterior.to("cpu") is posterior and posterior.device.type == "cpu"


def test_the_number_of_draws_and_the_seed_are_integers_of_any_kind_in_both_posteriors():
    import numpy as np

    prior = BoxUniform([-1.0, -1.0], [1.0, 1.0])  # NPE's draws are truncated to the box
    theta = prior.sample(300, torch.Generator().manual_seed(0))
    config = TrainConfig(progress=False, max_epochs=1)
    npe = NPE(prior, "nsf", config=config).fit(theta, theta + 0.1)
    nle = NLE(prior, "gaussian", config=config, mcmc=MCMC).fit(theta, theta + 0.1)
    xo = torch.tensor([0.1, 0.2])
    for posterior in (npe, nle):
        same = posterior.sample(np.int64(20), x=xo, seed=np.int64(3))
        assert torch.equal(same, posterior.sample(20, x=xo, seed=3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no draws asked: no acceptance rate to warn of
            assert posterior.sample(0, x=xo).shape == (0, 2)
        for bad in (10.0, (5, 2), True, "10"):
            with pytest.raises(SbitkError, match="n must be an integer"):
                posterior.sample(bad, x=xo)
        with pytest.raises(SbitkError, match="n must be >= 0, got -1"):
            posterior.sample(-1, x=xo)
        with pytest.raises(SbitkError, match=r"seed must be an integer, got 1\.5"):
            posterior.sample(5, x=xo, seed=1.5)
    with pytest.raises(SbitkError, match="x holds no observation"):
        nle.sample(5, x=xo[None][:0])


@pytest.mark.parametrize("estimator", ["gaussian", "cvae", "maf"])
def test_log_prob_is_minus_infinity_outside_the_support_and_empty_for_no_rows(estimator):
    prior = BoxUniform([-1.0, -1.0], [1.0, 1.0])
    theta = prior.sample(300, torch.Generator().manual_seed(0))
    config = TrainConfig(progress=False, max_epochs=1)
    posterior = NPE(prior, estimator, config=config).fit(theta, theta + 0.1)
    xo = torch.tensor([0.1, 0.2])
    points = torch.tensor([[math.nan, 0.0], [0.5, 0.5], [3.0, 0.0]])
    lp = posterior.log_prob(points, x=xo)
    assert lp[0] == -math.inf and lp[2] == -math.inf and torch.isfinite(lp[1])
    assert posterior.log_prob(torch.zeros(0, 2), x=xo).shape == (0,)
    batch = torch.zeros(0, 3, 2)
    assert posterior.log_prob(batch, x=xo.expand(3, 2)).shape == (0, 3)
