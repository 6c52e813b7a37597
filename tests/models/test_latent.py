"""The latent-variable family: bounds against a closed-form marginal, classification by
likelihood against the Bayes rate, NLE end to end, and the options (β, MMD, priors, dtypes)."""

import dataclasses
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbitk.errors import SbitkError
from sbitk.inference.training import TrainConfig, train
from sbitk.models.latent import Autoencoder, ConditionalVAE, mmd


def linear_gaussian_vae(sigma: float = 0.5) -> tuple[ConditionalVAE, torch.Tensor, torch.Tensor]:
    """An unconditional VAE whose decoder is set to the linear Gaussian a = W z + b + σ ε, so
    that p(a) = N(b, W Wᵀ + σ² I); its linear encoder is trained on the ELBO, decoder frozen.

    The posterior p(z | a) has covariance (I + WᵀW/σ²)⁻¹, not diagonal for this W, so the
    diagonal encoder cannot match it: the ELBO stays strictly below log p(a)."""
    torch.manual_seed(0)
    model = ConditionalVAE(
        3, 0, latent=2, decoder="gaussian", prior="standard", hidden_features=()
    )
    w = torch.tensor([[1.0, 0.5], [0.3, -0.8], [0.6, 0.9]])
    b = torch.tensor([0.5, -1.0, 0.2])
    with torch.no_grad():
        layer = model.decoder[0]
        layer.weight.zero_()
        layer.weight[:3] = w
        layer.bias[:3] = b
        # softplus(raw + shift) + 1e-3 = σ at raw = log(expm1(σ - 1e-3)) - shift
        raw = math.log(math.expm1(sigma - 1e-3)) - math.log(math.e - 1)
        layer.bias[3:] = raw
    model.decoder.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(4000, 2, generator=g) @ w.T + b) + sigma * torch.randn(
        4000, 3, generator=g
    )
    opt = torch.optim.Adam(model.encoder.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss(data[:2000]).mean().backward()
        opt.step()
    marginal = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(3))
    return model.eval(), data[2000:], marginal.log_prob(data[2000:])


def analytic_elbo(model: ConditionalVAE, a: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """The ELBO of the linear-Gaussian VAE in closed form, per row: the expected Gaussian
    log-likelihood under q = N(μ, diag s²) minus KL[q ‖ N(0, I)]."""
    layer = model.decoder[0]
    w, b = layer.weight[:3], layer.bias[:3]
    mu, s = model.encode(a, None)
    resid = (a - mu @ w.T - b).square().sum(-1) + (s.square() @ w.square().T).sum(-1)
    expected = -0.5 * resid / sigma**2 - 3 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    kl = 0.5 * (s.square() + mu.square() - 1 - s.square().log()).sum(-1)
    return expected - kl


def test_elbo_and_iwae_bound_the_exact_marginal_and_the_gap_shrinks_with_k():
    """ELBO ≤ IWAE_10 ≤ IWAE_100 ≤ log p on average, and log p − IWAE_K falls with K.

    Per seed, 1,000 shared draws give IWAE_K as the mean over 1000/K disjoint blocks, so the
    three gaps are paired; margins are 4 standard errors of the per-seed means (the spread
    measured here). The Monte Carlo ELBO is checked against its closed form too.
    """
    model, a, log_p = linear_gaussian_vae()
    dist = model()
    gaps = []
    with torch.no_grad():
        for seed in range(10):
            lw = dist.log_weights(a, 1000, seed=seed)
            gaps.append(
                [
                    (log_p - torch.logsumexp(lw.reshape(1000 // k, k, -1), 1) + math.log(k)).mean()
                    for k in (1, 10, 100)
                ]
            )
        elbo_exact = analytic_elbo(model, a).mean()
    gaps = torch.tensor(gaps)  # (seeds, 3): K = 1, 10, 100
    n = gaps.shape[0]
    gap, se = gaps.mean(0), gaps.std(0) / math.sqrt(n)
    steps = gaps[:, :-1] - gaps[:, 1:]
    step, step_se = steps.mean(0), steps.std(0) / math.sqrt(n)
    # The mean of single-draw IWAE_1 is the Monte Carlo ELBO (over 10 seeds × 1,000 draws).
    elbo_mc = log_p.mean() - gap[0]
    assert float(elbo_mc) == pytest.approx(float(elbo_exact), abs=4 * float(se[0]))
    assert float(gap[0]) > 0.05  # a diagonal q cannot fit this posterior: ELBO < log p
    assert bool((step > 4 * step_se).all()), (gap, step, step_se)  # shrinks with K
    assert float(gap[2]) > -4 * float(se[2])  # IWAE_100 stays below log p


def three_gaussians(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of each of three overlapping unit-variance 2-D Gaussians, labels as integers."""
    means = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3]])
    y = torch.arange(3).repeat_interleave(n)
    return means[y] + torch.randn(3 * n, 2, generator=g), y


def test_classification_by_likelihood_reaches_the_bayes_accuracy():
    """argmax_y log p(x | y) of a trained CVAE against the Bayes classifier on held-out points.

    With equal priors the Bayes rule is argmax_y N(x; m_y, I), evaluated on the same points.
    Margin: 4 binomial standard errors of the accuracy over 3,000 points (4 · 0.009) plus 0.01
    for the fit of three 2-D densities from 1,000 rows each (the Bayes boundaries are lines, so
    small density errors move few points across them).
    """
    g = torch.Generator().manual_seed(0)
    x, y = three_gaussians(1000, g)
    model = ConditionalVAE(2, 3, hidden_features=(32, 32), transforms=2, iw_samples=32)
    train(model, x, torch.eye(3)[y], TrainConfig(max_epochs=60, progress=False, seed=0))
    x_test, y_test = three_gaussians(1000, g)
    with torch.no_grad():
        log_lik = torch.stack([model(torch.eye(3)[k]).log_prob(x_test) for k in range(3)], -1)
    means = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.75, 1.3]])
    bayes = -(x_test.unsqueeze(1) - means).square().sum(-1)
    bayes_acc = float((bayes.argmax(-1) == y_test).float().mean())
    acc = float((log_lik.argmax(-1) == y_test).float().mean())
    se = math.sqrt(bayes_acc * (1 - bayes_acc) / len(y_test))
    assert acc >= bayes_acc - 4 * se - 0.01, (acc, bayes_acc)


def test_nle_with_the_cvae_samples_a_posterior_and_simulates():
    from sbitk.inference.nle import NLE
    from sbitk.posteriors.mcmc import MCMCConfig
    from sbitk.simulation.priors import Normal

    prior = Normal(0.0, 1.0, dim=2)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(1000, g)
    x = theta + 0.3 * torch.randn(1000, 2, generator=g)
    nle = NLE(
        prior,
        "cvae",
        config=TrainConfig(max_epochs=5, progress=False),
        mcmc=MCMCConfig(num_chains=10, warmup=5, sir_candidates=100, progress=False),
        hidden_features=(16,),
        transforms=2,
        iw_samples=8,
    )
    posterior = nle.fit(theta, x)
    samples = posterior.sample(20, x=torch.zeros(2), seed=0)
    assert samples.shape == (20, 2) and torch.isfinite(samples).all()
    assert posterior.likelihood.sample(3, torch.zeros(4, 2), seed=0).shape == (3, 4, 2)
    assert posterior.likelihood.estimator.config.permutation == "lu"  # the likelihood default


@pytest.mark.parametrize("decoder", ["flow", "gaussian", "full"])
def test_log_prob_is_a_deterministic_function_of_each_row(decoder):
    """Common random numbers: a row's estimate depends on nothing but the row (not on the call,
    nor on the other rows in the batch), as MCMC needs."""
    model = ConditionalVAE(2, 3, decoder=decoder, iw_samples=16)
    a, c = torch.randn(10, 2), torch.randn(10, 3)
    with torch.no_grad():
        full = model(c).log_prob(a)
        assert torch.equal(full, model(c).log_prob(a))
        assert torch.allclose(full[3:5], model(c[3:5]).log_prob(a[3:5]), atol=1e-5)
        assert not torch.equal(full, model(c).iwae(a, seed=1))
        assert bool((model(c).elbo(a) <= full + 1e-5).all())  # Jensen, draw by draw


@pytest.mark.parametrize(
    "options",
    [
        {"beta": 4.0},
        {"mmd_weight": 10.0},
        {"prior": "conditional", "decoder": "gaussian"},
        {"decoder": "gaussian", "latent": 1},
        {"decoder": "full", "prior": "standard", "free_bits": 0.0},
        {"decoder": "flow", "prior": "standard", "free_bits": 0.0},
        {"decoder": "flow", "prior": "flow"},
    ],
)
def test_the_variants_train_and_rebuild_from_their_config(options):
    model = ConditionalVAE(2, 1, hidden_features=[16], transforms=2, iw_samples=8, **options)
    a, c = torch.randn(300, 2), torch.randn(300, 1)
    history = train(model, a, c, TrainConfig(max_epochs=3, progress=False))
    assert all(math.isfinite(v) for v in history.val_loss)
    copy = ConditionalVAE.from_config(
        {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(model.config).items()
        }
    )
    copy.load_state_dict(model.state_dict())
    assert copy.config == model.config and copy.config.hidden_features == (16,)
    with torch.no_grad():
        assert torch.equal(copy(c[:4]).log_prob(a[:4]), model(c[:4]).log_prob(a[:4]))


def test_mmd_separates_distributions_and_vanishes_for_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    assert float(mmd(x, y)) < 0.02 < float(mmd(x, y + 1.0))


def test_float64_and_unconditional_sampling():
    model = ConditionalVAE(3, 0, iw_samples=4).double()
    s = model().sample((6,), torch.Generator().manual_seed(0))
    assert s.shape == (6, 3) and s.dtype == torch.float64
    assert model().log_prob(s).dtype == torch.float64
    with pytest.raises(SbitkError, match="unconditional"):
        model(torch.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda():
    model = ConditionalVAE(2, 3, iw_samples=8).cuda()
    c = torch.randn(5, 3, device="cuda")
    dist = model(c)
    s = dist.sample((4,), torch.Generator(device="cuda").manual_seed(0))
    assert s.device.type == "cuda" and dist.log_prob(s).shape == (4, 5)
    assert model.loss(s[0], c).shape == (5,)


def test_bad_options_are_named():
    with pytest.raises(SbitkError, match="decoder"):
        ConditionalVAE(2, 1, decoder="mixture")
    with pytest.raises(SbitkError, match="conditional prior"):
        ConditionalVAE(2, 0, prior="conditional")
    with pytest.raises(SbitkError, match="widths"):
        ConditionalVAE(2, 1, widths=3)


def test_the_autoencoder_reconstructs_a_line_through_a_one_wide_code():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, 1, generator=g)
    data = torch.cat([t, 2 * t + 1, -t], -1) + 0.01 * torch.randn(1000, 3, generator=g)
    ae = Autoencoder(3, latent=1, hidden_features=(32,))
    train(ae, data, None, TrainConfig(max_epochs=40, batch_size=50, progress=False))
    with torch.no_grad():
        error = (ae(data) - data).square().mean() / data.var(0).mean()
    assert float(error) < 0.01


@pytest.mark.parametrize("decoder", ["flow", "gaussian", "full"])
def test_rsample_is_differentiable_in_the_weights(decoder):
    model = ConditionalVAE(2, 1, decoder=decoder, hidden_features=(8,), transforms=1)
    model(torch.randn(3, 1)).rsample((4,)).square().sum().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.prior_flow.parameters())  # the default prior


def affine_flow_prior(model: ConditionalVAE, loc: torch.Tensor, scale: torch.Tensor) -> None:
    """Set the flow prior to the affine map z = loc + scale · u, u ~ N(0, I), whatever the
    context: identity splines (zero conditioner outputs but the unit slopes) after the flow's
    z-scoring, whose mean and std become loc and scale, so p(z | c) = N(loc, diag scale²)."""
    from sbitk.models.flows.splines import IDENTITY_DERIVATIVE

    flow = model.prior_flow
    bins = flow.config.bins
    with torch.no_grad():
        for step in flow.transform.transforms[1:]:
            out = step.conditioner.output
            out.weight.zero_()
            out.bias.zero_()
            out.bias[2 * bins :] = IDENTITY_DERIVATIVE
        flow.input_standardization.mean.copy_(loc)
        flow.input_standardization.std.copy_(scale)


def test_the_flow_prior_kl_term_matches_the_closed_form_for_an_affine_prior():
    """With the prior flow an affine map, log p(z | c) is a Gaussian's draw by draw, and the
    Monte Carlo KL (mean over 20,000 reparametrised draws) matches the closed form within 4
    standard errors; the IWAE weights use the same prior density."""
    torch.manual_seed(0)
    model = ConditionalVAE(2, 3, prior="flow", permutation="none", transforms=2)
    loc, scale = torch.tensor([0.5, -1.0]), torch.tensor([0.7, 1.6])
    affine_flow_prior(model, loc, scale)
    c = torch.randn(3)
    mu, sigma = torch.tensor([0.2, 0.3]), torch.tensor([0.4, 1.1])
    z = mu + sigma * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gaussian = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        assert torch.allclose(model.prior_log_prob(z, c), gaussian, atol=1e-4)
        kl_mc = model.kl(z, mu, sigma, c)
    q, p = torch.distributions.Normal(mu, sigma), torch.distributions.Normal(loc, scale)
    closed = float(torch.distributions.kl_divergence(q, p).sum())
    se = float(kl_mc.std()) / math.sqrt(len(kl_mc))
    assert float(kl_mc.mean()) == pytest.approx(closed, abs=4 * se)


def test_the_full_covariance_decoder_is_a_gaussian_with_the_networks_cholesky_factor():
    torch.manual_seed(0)
    model = ConditionalVAE(3, 2, decoder="full", hidden_features=(16,))
    z, c, a = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 3)
    with torch.no_grad():
        loc, tril = model._decoder_gaussian(torch.cat([z, c], -1))
        expected = MultivariateNormal(loc, scale_tril=tril).log_prob(a)
        assert torch.allclose(model.decoder_log_prob(a, z, c), expected, atol=1e-5)
        draws = model.decoder_sample(z.expand(20_000, 5, 3), c, torch.Generator().manual_seed(0))
    assert bool((tril.triu(1) == 0).all()) and bool((tril.tril(-1) != 0).any())
    cov = torch.cov(draws[:, 0].T)
    assert torch.allclose(cov, tril[0] @ tril[0].T, atol=0.1 * float(cov.abs().max()))


def test_the_default_latent_carries_information_on_a_ring():
    """A thin ring needs the code: after training the default CVAE (flow prior, Gaussian
    decoder) the KL per row is well above zero and drawing z from the prior instead of the
    encoder costs the decoder many nats (an idle code would cost nothing)."""
    g = torch.Generator().manual_seed(0)
    angle = 2 * math.pi * torch.rand(2000, generator=g)
    a = torch.stack([angle.cos(), angle.sin()], -1) + 0.05 * torch.randn(2000, 2, generator=g)
    model = ConditionalVAE(2, 0, hidden_features=(32, 32), transforms=2, iw_samples=16)
    train(model, a, None, TrainConfig(max_epochs=30, progress=False, seed=0))
    with torch.no_grad():
        s = model.inputs(a[:500])
        mu, sigma = model.encode(s, None)
        z = mu + sigma * torch.randn(16, *mu.shape, generator=g)
        kl = float(model.kl(z, mu, sigma, None).mean())
        rec_q = float(model.decoder_log_prob(s.expand(16, -1, -1), z, None).mean())
        z_p = model.prior_sample((16, 500), None, g)
        rec_p = float(model.decoder_log_prob(s.expand(16, -1, -1), z_p, None).mean())
    assert kl > 1.0 and rec_q - rec_p > 2.0, (kl, rec_q, rec_p)


def test_free_bits_leave_a_small_kl_unpenalised():
    """Below the free bits the KL term is the constant free_bits (no gradient to the encoder
    from it); with free_bits=0 the loss is the plain negative ELBO."""
    torch.manual_seed(0)
    a, c = torch.randn(64, 2), torch.randn(64, 1)
    free = ConditionalVAE(2, 1, prior="standard", free_bits=50.0, hidden_features=(8,))
    plain = ConditionalVAE(2, 1, prior="standard", free_bits=0.0, hidden_features=(8,))
    plain.load_state_dict(free.state_dict())
    torch.manual_seed(1)
    lf = free.loss(a, c)
    torch.manual_seed(1)
    lp = plain.loss(a, c)
    sa = plain.inputs(a)
    mu, sigma = plain.encode(sa, plain.standardized_context(c))
    kl = plain.kl(mu, mu, sigma, None).detach()
    assert float(kl.mean()) < 50.0
    assert torch.allclose(lf - lp, 50.0 - kl, atol=1e-4)


def test_posterior_role_widens_every_network():
    """As a posterior the networks are POSTERIOR_HIDDEN wide, on a box too (where the NSF's
    spline options still apply); as a likelihood the config's default widths stay."""
    from sbitk.models.flows.nsf import BOX_NSF_OPTIONS
    from sbitk.models.latent import POSTERIOR_HIDDEN

    box = ConditionalVAE.role_options("posterior", True)
    assert box["hidden_features"] == POSTERIOR_HIDDEN == (128, 128)
    assert box["bins"] == BOX_NSF_OPTIONS["bins"] and box["bound"] == BOX_NSF_OPTIONS["bound"]
    assert ConditionalVAE.role_options("posterior", False) == {"hidden_features": (128, 128)}
    assert "hidden_features" not in ConditionalVAE.role_options("likelihood", False)
    model = ConditionalVAE(2, 3, **ConditionalVAE.role_options("posterior", True))
    assert model.config.hidden_features == (128, 128)
    assert model.prior_flow.config.hidden_features == (128, 128)
