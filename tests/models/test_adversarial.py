"""The adversarial estimator: mode coverage on a ring of Gaussians, the MMD it is selected by,
each player's gradient, and the dtypes and devices it runs on."""

import math

import pytest
import torch

from sbitk.diagnostics.c2st import c2st
from sbitk.inference.training import TrainConfig, train
from sbitk.models.adversarial import ConditionalGAN
from sbitk.models.divergences import energy_score, median_bandwidth, mmd

#: Training settings the GAN needs (see the report): a constant rate, as the plateau schedule
#: decays it on the noisy early validation curve before the generator has sharpened.
GAN_TRAINING = dict(
    schedule="constant", learning_rate=1e-3, batch_size=256, progress=False, device="cpu"
)
RADIUS, SD, MODES = 2.0, 0.05, 8


def ring(n: int, generator: torch.Generator) -> torch.Tensor:
    """A mixture of 8 equally weighted Gaussians (sd 0.05) on a circle of radius 2."""
    k = torch.randint(MODES, (n,), generator=generator)
    return centres()[k] + SD * torch.randn(n, 2, generator=generator)


def centres() -> torch.Tensor:
    angle = 2 * math.pi * torch.arange(MODES) / MODES
    return RADIUS * torch.stack([angle.cos(), angle.sin()], -1)


def _mode_counts(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which draws lie within 5 sd of a centre (a mode spacing is 1.53, 30 sd), and the count
    of those at each centre."""
    distance, nearest = torch.cdist(samples, centres()).min(-1)
    on = distance < 5 * SD
    return on, torch.bincount(nearest[on], minlength=MODES)


def _shares(counts: torch.Tensor) -> torch.Tensor:
    """Each mode's count over its equal share of the counted draws (1 everywhere for equal
    weights, 0 for a dropped mode)."""
    return counts * MODES / counts.sum()


@pytest.mark.slow
def test_an_unconditional_gan_covers_every_mode_of_a_ring_and_resampling_sharpens_it():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # The default configuration (alternating updates, energy score in the generator's loss,
    # location-scale head, energy-score validation, then the critic's calibration stage),
    # trained with its default patience of 40.
    model = ConditionalGAN(2)
    train(model, ring(10_000, g), None, TrainConfig(max_epochs=400, patience=40, **GAN_TRAINING))
    dist = model(None)
    with torch.no_grad():  # the generator's own draws
        drawn = dist.rsample((4000,), generator=torch.Generator().manual_seed(1))
    # Bounds from the spread over training seeds 0 to 9 (this test is seed 0). The true mixture
    # puts all but exp(-12.5) of its mass within 5 sd of a centre; a generator that maps a
    # connected Gaussian onto 8 islands must leave some draws on the bridges between them: on a
    # mode 0.65 to 0.83 (mean 0.75, sd 0.07; the bound is the mean - 3 sd). No mode is dropped:
    # each holds 0.60 to 1.37 of its equal share of those draws (a collapsed mode holds 0; with
    # critic (128, 128, 128) one held 0.38), but the shares are uneven beyond sampling error
    # for 6 seeds of 10.
    on, counts = _mode_counts(drawn)
    assert on.float().mean() > 0.55, float(on.float().mean())
    assert _shares(counts).min() > 0.5, counts.tolist()
    # Resampled by the calibrated critic (32 candidates a draw): the bridges go (0.999 to 1.0
    # on a mode over the 10 seeds), every mode's count lies within 0.79 to 1.21 of its share
    # (sampling error alone, a 99.9 % interval for each of the 8, spans 0.83 to 1.17), and a
    # classifier can hardly tell the draws from the truth (C2ST 0.484 to 0.523, mean 0.507,
    # sd 0.012).
    resampled = dist.sample((4000,), generator=torch.Generator().manual_seed(1))
    on, counts = _mode_counts(resampled)
    assert on.float().mean() > 0.99, float(on.float().mean())
    shares = _shares(counts)
    assert shares.min() > 0.7 and shares.max() < 1.3, counts.tolist()
    truth = ring(4000, torch.Generator().manual_seed(5))
    assert c2st(truth, resampled, seed=0).accuracy < 0.53


def test_the_unbiased_mmd_is_centred_on_zero_under_the_null_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    null = torch.stack(
        [
            mmd(torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g))
            for _ in range(300)
        ]
    )
    # The U-statistic's mean is exactly zero under the null: its mean over 300 seeds lies within
    # four standard errors (measured spread) of zero, while the V-statistic is biased upwards.
    se = null.std() / math.sqrt(len(null))
    assert abs(float(null.mean())) < 4 * se
    x, y = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
    assert mmd(x, y, unbiased=False) > 0 and mmd(x, x, unbiased=False) == 0
    # A shift of half a standard deviation stands far out of the null spread.
    shifted = mmd(torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g) + 0.5)
    assert shifted > null.mean() + 5 * null.std()


def test_the_median_bandwidth_and_several_bandwidths():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert float(median_bandwidth(x)) == 5.0
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(50, 3, generator=g), torch.randn(60, 3, generator=g) + 1
    one, two = mmd(a, b, bandwidth=1.0), mmd(a, b, bandwidth=2.0)
    assert torch.allclose(mmd(a, b, bandwidth=[1.0, 2.0]), (one + two) / 2)
    assert torch.allclose(mmd(a, b), mmd(a, b, bandwidth=median_bandwidth(a, b)))


def linear_problem(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 1, generator=g)
    return 2 * c + 0.5 * torch.randn(n, 1, generator=g), c


@pytest.mark.parametrize("validation", ["energy", "mmd"])
def test_the_validation_loss_is_deterministic_and_falls_as_training_proceeds(validation):
    a, c = linear_problem(3000)
    torch.manual_seed(0)
    model = ConditionalGAN(
        1, 1, hidden_features=(32, 32), critic_hidden_features=(32, 32), validation=validation
    )
    model.fit_standardization(a, c)
    before = model.validation_loss(a[:500], c[:500])
    assert torch.equal(before, model.validation_loss(a[:500], c[:500]))
    history = train(model, a, c, TrainConfig(max_epochs=25, patience=25, **GAN_TRAINING))
    after = model.validation_loss(a[:500], c[:500])
    assert torch.equal(after, model.validation_loss(a[:500], c[:500]))
    # The least expected value: 0 for the MMD; for the energy score the CRPS of the true
    # conditional N(2c, 0.5²), sd/sqrt(pi) in standardised units (sd of a: sqrt(4.25)).
    floor = 0.0 if validation == "mmd" else 0.5 / math.sqrt(4.25) / math.sqrt(math.pi)
    # The initial generator is N(0, 1) in standardised units whatever the context: far off.
    assert history.best_val_loss - floor < 0.2 * (history.val_loss[0] - floor)
    assert after - floor < 0.2 * (before - floor)


def crps_normal(mu: torch.Tensor, sd: float, y: torch.Tensor) -> torch.Tensor:
    """The closed-form CRPS of N(mu, sd²) at y (Gneiting & Raftery 2007, eq. 21)."""
    t = (y - mu) / sd
    normal = torch.distributions.Normal(0.0, 1.0)
    pdf, cdf = normal.log_prob(t).exp(), normal.cdf(t)
    return sd * (t * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def test_the_energy_score_is_unbiased_for_the_crps_of_a_gaussian():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([-1.5, 0.0, 0.3, 2.0]).reshape(4, 1)
    mu, sd, m, reps = 0.2, 0.7, 8, 4000
    draws = mu + sd * torch.randn(reps, m, 4, 1, generator=g)
    scores = torch.stack([energy_score(d, y) for d in draws])  # (reps, 4)
    exact = crps_normal(torch.tensor(mu), sd, y.squeeze(-1))
    # The estimate from M = 8 draws is unbiased: its mean over 4000 repetitions lies within four
    # standard errors (from the measured spread) of the closed form at each observation.
    se = scores.std(0) / math.sqrt(reps)
    assert ((scores.mean(0) - exact).abs() < 4 * se).all(), (scores.mean(0), exact, se)


def test_the_energy_score_is_proper_in_several_dimensions():
    g = torch.Generator().manual_seed(1)
    d, n, m = 3, 3000, 16
    c = torch.randn(n, d, generator=g)
    y = c + 0.5 * torch.randn(n, d, generator=g)  # p(y | c) = N(c, 0.25 I)
    noise = torch.randn(m, n, d, generator=g)
    true = energy_score(c + 0.5 * noise, y)
    # Common random numbers: the same noise under each wrong conditional.
    wrong = {
        "shifted": energy_score(c + 0.2 + 0.5 * noise, y),
        "too wide": energy_score(c + 0.7 * noise, y),
        "too narrow": energy_score(c + 0.35 * noise, y),
        "ignores c": energy_score(math.sqrt(1.25) * noise, y),
    }
    for name, score in wrong.items():
        diff = score - true
        # Each wrong conditional scores higher in expectation: the mean paired difference is
        # more than four standard errors (measured spread) above zero.
        assert diff.mean() > 4 * diff.std() / math.sqrt(n), name
    # M = 2 draws (the training term) and M = 16 estimate the same expectation.
    two = energy_score(c + 0.5 * noise[:2], y)
    diff = two - true
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)


def test_the_energy_score_refuses_bad_shapes_and_exponents():
    from sbitk.errors import SbitkError

    with pytest.raises(SbitkError, match="draws"):
        energy_score(torch.zeros(1, 4, 2), torch.zeros(4, 2))
    with pytest.raises(SbitkError, match="draws"):
        energy_score(torch.zeros(3, 4, 2), torch.zeros(5, 2))
    with pytest.raises(SbitkError, match="beta"):
        energy_score(torch.zeros(3, 4, 2), torch.zeros(4, 2), beta=2.0)
    samples = torch.randn(5, 4, 2, requires_grad=True)
    energy_score(samples, torch.zeros(4, 2), beta=1.5).sum().backward()
    assert torch.isfinite(samples.grad).all()


@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_each_network_gets_only_its_own_objectives_gradient(objective):
    a, c = linear_problem(64)
    torch.manual_seed(0)
    model = ConditionalGAN(
        1, 1, objective=objective, hidden_features=(16,), updates="simultaneous", energy_weight=0
    )
    model.fit_standardization(a, c)
    torch.manual_seed(1)
    model.loss(a, c).mean().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    # The same draws, each player's objective (the module docstring) differentiated on its own.
    model.zero_grad()
    torch.manual_seed(1)
    fake = model.generate(model.latent((64,)), model.standardized_context(c))
    x, y = model.inputs(a), model.standardized_context(c)
    if objective == "non-saturating":
        generator_term = torch.nn.functional.softplus(-model.critic(fake, y))
    else:
        generator_term = -model.critic(fake, y)
    generator_term.mean().backward()
    for k, p in model.named_parameters():
        if not k.startswith("critic."):
            assert torch.allclose(got[k], p.grad, atol=1e-6), k
    model.zero_grad()
    torch.manual_seed(1)
    model.latent((64,))
    fake = fake.detach()
    if objective == "non-saturating":
        x.requires_grad_(True)
        grad = torch.autograd.grad(model.critic(x, y).sum(), x, create_graph=True)[0]
        term = (
            torch.nn.functional.softplus(-model.critic(x, y))
            + torch.nn.functional.softplus(model.critic(fake, y))
            + 0.5 * model.config.gradient_penalty * grad.square().sum(-1)
        )
    else:
        eps = torch.rand(64, 1)
        mix = (eps * x + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(model.critic(mix, y).sum(), mix, create_graph=True)[0]
        penalty = model.config.gradient_penalty * (grad.norm(dim=-1) - 1).square()
        term = model.critic(fake, y) - model.critic(x, y) + penalty
    term.mean().backward()
    for k, p in model.critic.named_parameters():
        assert torch.allclose(got[f"critic.{k}"], p.grad, atol=1e-6), k


@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_alternating_updates_give_one_player_a_gradient_per_step(objective):
    a, c = linear_problem(64)
    torch.manual_seed(0)
    model = ConditionalGAN(1, 1, objective=objective, hidden_features=(16,), energy_weight=0.5)
    model.fit_standardization(a, c)
    k = model.config.critic_steps
    assert k == {"non-saturating": 1, "wgan-gp": 5}[objective]
    critic = {id(p) for p in model.critic.parameters()}
    phases = []
    for _ in range(2 * (k + 1)):
        phase = model.phase()
        model.zero_grad(set_to_none=True)
        model.loss(a, c).mean().backward()
        with_grad = {id(p) for p in model.parameters() if p.grad is not None}
        # AdamW skips parameters without a gradient: only this phase's player moves.
        assert with_grad == (
            critic if phase == "critic" else set(map(id, model.parameters())) - critic
        )
        phases.append(phase)
    assert phases == (["critic"] * k + ["generator"]) * 2
    # Evaluation mode and no-grad calls neither alternate nor advance the cycle.
    model.eval()
    assert model.phase() == "both" and model.loss(a, c).shape == (64,)
    model.train()
    with torch.no_grad():
        model.loss(a, c)
    assert model.phase() == "critic"


@pytest.mark.parametrize("draws", [2, 4])
def test_the_hybrid_generator_loss_adds_the_energy_score_of_its_draws(draws):
    a, c = linear_problem(64)
    torch.manual_seed(0)
    model = ConditionalGAN(1, 1, hidden_features=(16,), updates="simultaneous",
                           energy_weight=0.5, energy_draws=draws)  # fmt: skip
    model.fit_standardization(a, c)
    torch.manual_seed(1)
    model.loss(a, c).mean().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters() if not k.startswith("critic.")}
    model.zero_grad()
    torch.manual_seed(1)
    x, y = model.inputs(a), model.standardized_context(c)
    fakes = [model.generate(model.latent((64,)), y) for _ in range(draws)]
    # The unbiased M-draw estimator: mean distance to the row minus half the mean pair distance.
    to_row = sum((d - x).abs() for d in fakes) / draws
    pairs = [(d - e).abs() for i, d in enumerate(fakes) for e in fakes[i + 1 :]]
    score = (to_row - sum(pairs) / len(pairs) / 2).squeeze(-1)
    term = torch.nn.functional.softplus(-model.critic(fakes[0], y)) + 0.5 * score
    term.mean().backward()
    for k, g in got.items():
        assert torch.allclose(g, dict(model.named_parameters())[k].grad, atol=1e-6), k


def test_the_critic_learns_faster_in_its_own_parameter_group():
    model = ConditionalGAN(2, 1, critic_lr_scale=3.0)
    generator, critic = model.optimizer_groups()
    assert (generator["lr_scale"], critic["lr_scale"]) == (1.0, 3.0)
    assert {id(p) for p in generator["params"]} == {id(p) for p in model.generator_parameters()}
    assert {id(p) for p in model.generator.parameters()} <= {id(p) for p in generator["params"]}
    assert len(generator["params"]) + len(critic["params"]) == len(list(model.parameters()))


def test_samples_shapes_seeds_and_no_density():
    model = ConditionalGAN(3, 2)
    c = torch.randn(4, 2)
    dist = model(c)
    assert (dist.batch_shape, dist.event_shape) == ((4,), (3,))
    assert not hasattr(dist, "log_prob")
    one = dist.sample((5,), generator=torch.Generator().manual_seed(0))
    assert one.shape == (5, 4, 3) and not one.requires_grad
    assert torch.equal(one, dist.sample((5,), generator=torch.Generator().manual_seed(0)))
    assert dist.rsample((2,)).requires_grad
    assert model(c[0]).sample().shape == (3,)


def test_the_config_round_trips_and_bad_options_are_refused():
    from dataclasses import asdict

    from sbitk.errors import SbitkError

    model = ConditionalGAN(2, 3, objective="wgan-gp", hidden_features=[16, 16])
    assert model.config.gradient_penalty == 10.0 and model.config.hidden_features == (16, 16)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.config).items()}
    assert ConditionalGAN.from_config(config).config == model.config
    with pytest.raises(SbitkError, match="objective"):
        ConditionalGAN(2, objective="minimax")
    with pytest.raises(SbitkError, match="candidates >= 1"):
        ConditionalGAN(2, candidates=0)
    assert model.training_stages() == ("adversarial", "calibration")
    assert ConditionalGAN(2, calibrate=False).training_stages() == ("adversarial",)
    with pytest.raises(SbitkError, match="no training stage 'polish'"):
        model.set_stage("polish")
    with pytest.raises(SbitkError, match=r"expected a context of shape \(\*, 3\), found None"):
        model(None)


@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_float64(objective):
    a, c = (t.double() for t in linear_problem(600))
    model = ConditionalGAN(
        1, 1, objective=objective, hidden_features=(16,), updates="simultaneous"
    ).double()
    model.fit_standardization(a, c)
    loss = model.loss(a, c)
    assert loss.dtype == torch.float64
    loss.mean().backward()
    assert all(p.grad.dtype == torch.float64 for p in model.parameters())
    assert model(c[:3]).sample((4,)).dtype == torch.float64
    assert model.validation_loss(a, c).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_cuda(objective):
    a, c = linear_problem(600)
    model = ConditionalGAN(1, 1, objective=objective, hidden_features=(16,))
    train(model, a, c, TrainConfig(max_epochs=2, **{**GAN_TRAINING, "device": "cuda"}))
    assert next(model.parameters()).is_cuda
    assert model(c[:3].cuda()).sample((4,), generator=torch.Generator().manual_seed(0)).is_cuda
    assert model(c[:3].cuda()).sample((4,)).is_cuda
    assert model.validation_loss(a.cuda(), c.cuda()).is_cuda


class _ExactLogRatio(torch.nn.Module):
    """log N(a; 1, 1) - log N(a; 0, 1) = a - 1/2 in one dimension: a critic at its optimum."""

    def forward(self, a, c):
        return a[..., 0] - 0.5


@pytest.mark.parametrize(("candidates", "calibrated"), [(64, True), (64, False), (1, True)])
def test_a_calibrated_critic_resamples_the_generators_draws_toward_the_data(
    candidates, calibrated
):
    """Generator N(0, 1), critic the exact log-ratio to N(1, 1): each draw picks one of K
    candidates with weight e^(a - 1/2), a law of mean 1 - O(1/K); uncalibrated, or with K = 1,
    the draws are the generator's."""
    model = ConditionalGAN(1, latent_features=1, candidates=candidates, location_scale=False)
    torch.nn.init.zeros_(model.generator.output_layer.weight)  # G(z) = z exactly
    torch.nn.init.zeros_(model.generator.output_layer.bias)
    model.critic = _ExactLogRatio()
    model.calibrated.fill_(calibrated)
    draws = model(None).sample((20_000,), generator=torch.Generator().manual_seed(0))[:, 0]
    resampled = calibrated and candidates > 1
    # SIR's mean with K candidates falls short of 1 by O(Var(w) / K), Var(w) = e - 1: at K = 64
    # it is 0.963 (sd 0.984) by simulation with 10^6 draws; the tolerance is 5 standard errors.
    mean = 0.963 if resampled else 0.0
    assert abs(float(draws.mean()) - mean) < 5 / math.sqrt(20_000)


def test_weights_saved_without_the_calibration_flag_load_as_not_calibrated():
    model = ConditionalGAN(2, 3)
    model.calibrated.fill_(True)
    state = {k: v for k, v in model.state_dict().items() if k != "calibrated"}
    fresh = ConditionalGAN(2, 3)
    fresh.calibrated.fill_(True)
    fresh.load_state_dict(state)  # strict: every other key matches
    assert not bool(fresh.calibrated)
    fresh.load_state_dict(model.state_dict())
    assert bool(fresh.calibrated)
