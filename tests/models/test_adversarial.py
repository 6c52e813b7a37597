"""The adversarial estimator: mode coverage on a ring of Gaussians, the MMD it is selected by,
each player's gradient, and the dtypes and devices it runs on."""

import math

import pytest
import torch
from scipy import stats

from sbitk.inference.training import TrainConfig, train
from sbitk.models.adversarial import ConditionalGAN
from sbitk.models.divergences import median_bandwidth, mmd

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


@pytest.mark.slow
def test_an_unconditional_gan_covers_every_mode_of_a_ring_in_equal_shares():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ConditionalGAN(2, hidden_features=(64, 64), critic_hidden_features=(64, 64))
    train(model, ring(10_000, g), None, TrainConfig(max_epochs=100, patience=100, **GAN_TRAINING))
    samples = model(None).sample((4000,), generator=torch.Generator().manual_seed(1))
    distance, nearest = torch.cdist(samples, centres()).min(-1)
    # Off-mode: farther than 5 sd from every centre (a mode spacing is 1.53, 30 sd).
    on = distance < 5 * SD
    assert on.float().mean() > 0.75  # measured 0.868 (within 4 sd: 0.850), one seed
    counts = torch.bincount(nearest[on], minlength=MODES)
    # Given the on-mode total, equal weights make each count Binomial(n_on, 1/8): a two-sided
    # 99.9% interval with a Bonferroni correction over the 8 modes.
    n_on = int(on.sum())
    low, high = stats.binom.interval(1 - 0.001 / MODES, n_on, 1 / MODES)
    assert ((counts >= low) & (counts <= high)).all(), (counts.tolist(), low, high)


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


def test_the_validation_loss_is_deterministic_and_falls_as_training_proceeds():
    a, c = linear_problem(3000)
    torch.manual_seed(0)
    model = ConditionalGAN(1, 1, hidden_features=(32, 32), critic_hidden_features=(32, 32))
    model.fit_standardization(a, c)
    before = model.validation_loss(a[:500], c[:500])
    assert torch.equal(before, model.validation_loss(a[:500], c[:500]))
    history = train(model, a, c, TrainConfig(max_epochs=25, patience=25, **GAN_TRAINING))
    after = model.validation_loss(a[:500], c[:500])
    assert torch.equal(after, model.validation_loss(a[:500], c[:500]))
    # The initial generator is N(0, 1) in standardised units whatever the context: far off.
    assert history.best_val_loss < 0.2 * history.val_loss[0]
    assert after < 0.2 * before


@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_each_network_gets_only_its_own_objectives_gradient(objective):
    a, c = linear_problem(64)
    torch.manual_seed(0)
    model = ConditionalGAN(1, 1, objective=objective, hidden_features=(16,))
    model.fit_standardization(a, c)
    torch.manual_seed(1)
    model.loss(a, c).mean().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    # The same draws, each player's objective (the module docstring) differentiated on its own.
    model.zero_grad()
    torch.manual_seed(1)
    fake = model.generate(model.latent((64,)), model.context_norm(c))
    x, y = model.input_norm(a), model.context_norm(c)
    if objective == "non-saturating":
        generator_term = torch.nn.functional.softplus(-model.critic(fake, y))
    else:
        generator_term = -model.critic(fake, y)
    generator_term.mean().backward()
    for k, p in model.generator.named_parameters():
        assert torch.allclose(got[f"generator.{k}"], p.grad, atol=1e-6), k
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


def test_the_critic_learns_faster_in_its_own_parameter_group():
    model = ConditionalGAN(2, 1, critic_lr_scale=3.0)
    generator, critic = model.optimizer_groups()
    assert (generator["lr_scale"], critic["lr_scale"]) == (1.0, 3.0)
    assert {id(p) for p in generator["params"]} == {id(p) for p in model.generator.parameters()}
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
    with pytest.raises(SbitkError, match="conditional"):
        model(None)


@pytest.mark.parametrize("objective", ["non-saturating", "wgan-gp"])
def test_float64(objective):
    a, c = (t.double() for t in linear_problem(600))
    model = ConditionalGAN(1, 1, objective=objective, hidden_features=(16,)).double()
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
