"""Flow matching and its ODE solvers, against independent computations (float64): solvers of
the right order, exact and Hutchinson divergences against the trace, and the change-of-variables
density of the exact vector field of a Gaussian target against the Gaussian itself."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.training import TrainConfig, train
from sbitk.models.base import linear_gaussian_fit, residual_departure
from sbitk.models.continuous import STEP_CHOICES, UNCHOSEN_STEPS, FlowMatching
from sbitk.models.diffusion import Diffusion
from sbitk.models.ode import divergence, odeint

ROTATION = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)


def rotate(t, y):
    return y @ ROTATION.T


def exact_rotation(y0, t):
    c, s = math.cos(t), math.sin(t)
    return y0 @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64).T


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_solvers_converge_at_their_order(method, order):
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    errors = [
        float((odeint(rotate, y0, 0.0, 2.0, method=method, steps=n) - exact_rotation(y0, 2.0))
              .norm())
        for n in (20, 40)
    ]  # fmt: skip
    # halving the step divides the error by 2^order (within 25%)
    assert errors[0] / errors[1] == pytest.approx(2**order, rel=0.25)


def test_the_adaptive_solver_meets_its_tolerance_both_ways():
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    forward = odeint(rotate, y0, 0.0, 3.0, method="dopri5", rtol=1e-8, atol=1e-8)
    assert torch.allclose(forward, exact_rotation(y0, 3.0), atol=1e-6)
    back = odeint(rotate, forward, 3.0, 0.0, method="dopri5", rtol=1e-8, atol=1e-8)
    assert torch.allclose(back, y0, atol=1e-6)
    with pytest.raises(SbitkError, match="more than 3 steps"):
        odeint(rotate, y0, 0.0, 30.0, method="dopri5", rtol=1e-10, atol=1e-10, max_steps=3)
    with pytest.raises(SbitkError, match="ODE method"):
        odeint(rotate, y0, 0.0, 1.0, method="leapfrog")


def test_divergence_exact_and_hutchinson_against_the_trace():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)

    def f(y):
        return torch.tanh(y) @ a.T

    out, div = divergence(f, y)
    jac_trace = (1 - torch.tanh(y) ** 2) * torch.diagonal(a)  # d tanh(y_d) a_dd / dy_d
    assert torch.allclose(out, f(y)) and torch.allclose(div, jac_trace.sum(-1))
    signs = torch.randint(0, 2, (4000, 5, 3), generator=g).to(torch.float64) * 2 - 1
    _, estimate = divergence(f, y, signs)
    # the estimator's spread: off-diagonal terms of J, averaged over 4,000 probes
    assert torch.allclose(estimate, div, atol=5 * a.abs().sum() / math.sqrt(4000))


class GaussianTargetField(FlowMatching):
    """Flow matching whose vector field is the exact one for a N(μ, Σ) target:

    a_t = (1 - s t) ε + t a_1 is Gaussian with mean t μ and covariance (1 - s t)² I + t² Σ, and
    v(a, t) = E[a_1 - s ε | a_t = a] = μ + (t Σ - s (1 - s t) I) Var(a_t)⁻¹ (a - t μ).
    """

    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)

    def velocity(self, a, t, c):
        s, eye = 1 - self.config.sigma_min, torch.eye(2, dtype=torch.float64)
        t = t[..., None, None]
        var = (1 - s * t) ** 2 * eye + t**2 * self.sigma
        gain = (t * self.sigma - s * (1 - s * t) * eye) @ torch.linalg.inv(var)
        centred = (a - t[..., 0] * self.mu).unsqueeze(-1)
        return self.mu + (gain @ centred).squeeze(-1)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_the_density_of_the_exact_field_is_the_target_and_integrates_to_one(solver):
    model = GaussianTargetField(2, 0, solver=solver, steps=100, sigma_min=0.0).double()
    target = torch.distributions.MultivariateNormal(model.mu, model.sigma)
    torch.manual_seed(0)
    a = target.sample((50,))
    assert torch.allclose(model().log_prob(a), target.log_prob(a), atol=1e-4)
    axis = torch.linspace(-6, 6, 241, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis - 0.5, indexing="ij"), -1).reshape(-1, 2)
    density = model().log_prob(grid).exp().reshape(241, 241)
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert float(mass) == pytest.approx(1.0, abs=1e-3)
    draws = model().sample((20_000,), generator=torch.Generator().manual_seed(0))
    # sample moments within 5 standard errors of the target's
    assert torch.allclose(draws.mean(0), model.mu, atol=5 * math.sqrt(1.0 / 20_000))
    assert torch.allclose(torch.cov(draws.T), model.sigma, atol=5 * math.sqrt(2 / 20_000))


class NarrowTargetField(GaussianTargetField):
    """A target with a diagonal covariance Λ, 20 times narrower than the noise along its first
    axis. With σ = 0 the flow carries noise ε to μ + Λ^½ ε, and the paths bend just before the
    data."""

    sigma = torch.diag(torch.tensor([0.0025, 1.0], dtype=torch.float64))


def flow_error(**options) -> float:
    """RMS error per coordinate, in posterior standard deviations, of 2,000 draws of the narrow
    target's flow on a fixed-step solver against its exact flow map."""
    model = NarrowTargetField(2, 0, sigma_min=0.0, **options).double()
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    draws = model().sample((2000,), generator=gen.manual_seed(0))
    scale = model.sigma.diagonal().sqrt()
    return float(((draws - model.mu) / scale - eps).square().mean().sqrt())


@pytest.mark.parametrize(("grid", "steps"), [("cosine", 12), ("data", 8)])
def test_grids_finer_towards_the_data_follow_a_narrow_target_that_equal_steps_miss(grid, steps):
    """Along the narrow target equal steps are coarsest where the paths bend."""
    # measured: cosine 12 steps and data 8 steps 2e-4, equal 12 steps 2.1e-2
    assert flow_error(grid=grid, steps=steps) < 1e-3 < 0.01 < flow_error(grid="equal", steps=12)


@pytest.mark.parametrize(
    ("grid", "tolerance", "fewest"), [("cosine", 3e-3, 12), ("equal", 5e-3, 24)]
)
def test_auto_steps_are_the_fewest_within_the_tolerance_of_the_exact_flow(grid, tolerance, fewest):
    """``steps="auto"`` takes the fewest choices whose pilot draws come within the tolerance of
    the adaptive solver's. Measured against the narrow target's exact flow: cosine 8 steps
    9.7e-3, 12 steps 5.4e-4; equal 16 steps 9.0e-3, 24 steps 1.6e-3 (8 steps 3.5e-2, worse
    than 6 steps' 2.0e-2)."""
    model = NarrowTargetField(2, 0, sigma_min=0.0, grid=grid, step_tolerance=tolerance).double()
    assert model.ode_steps == UNCHOSEN_STEPS  # before training
    model.after_training(torch.zeros(8, 2, dtype=torch.float64))
    assert model.ode_steps == fewest
    assert flow_error(grid=grid, steps=fewest) < tolerance
    fewer = STEP_CHOICES[STEP_CHOICES.index(fewest) - 1]
    assert flow_error(grid=grid, steps=fewer) > tolerance


def test_training_settles_the_steps_of_each_member_and_records_them():
    """The training engine asks the trained model (each member of an ensemble) to choose its
    steps on the held-out rows, and records the choice in the history."""
    from sbitk.models.ensemble import Ensemble

    g = torch.Generator().manual_seed(0)
    context = torch.randn(400, 1, generator=g)
    inputs = torch.cat([context, -context], -1) + 0.3 * torch.randn(400, 2, generator=g)
    config = TrainConfig(max_epochs=2, progress=False, seed=0)
    single = FlowMatching(2, 1, hidden_features=(16, 16))
    history = train(single, inputs, context, config)
    assert history.settled == {"steps": single.ode_steps} and single.chosen_steps > 0
    assert history.summary()["settled"] == history.settled
    pair = Ensemble(2, 1, member="flow_matching", members=2, options={"hidden_features": [16]})
    history = train(pair, inputs, context, config)
    assert history.settled == {"steps": [m.ode_steps for m in pair.members]}
    assert all(m.ode_steps in STEP_CHOICES for m in pair.members)


def test_hutchinson_densities_agree_with_the_exact_divergence_within_their_spread():
    """The field is linear in a, so with probes fixed along the path the log density errs by
    the mean over K probes of εᵀMε − tr M, M = ∫₀¹ J_t dt: a spread of |M₁₂ + M₂₁| / √K."""
    probes = 64
    model = GaussianTargetField(2, 0, steps=40, sigma_min=0.0, divergence="hutchinson",
                                probes=probes).double()  # fmt: skip
    exact = GaussianTargetField(2, 0, steps=40, sigma_min=0.0).double()
    a = torch.randn(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = torch.linspace(0, 1, 2001, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    jac = torch.stack([(t * model.sigma - (1 - t) * eye) @ torch.linalg.inv((1 - t) ** 2 * eye
                       + t**2 * model.sigma) for t in ts])  # fmt: skip
    m = torch.trapezoid(jac, ts, dim=0)
    spread = float((m[0, 1] + m[1, 0]).abs()) / math.sqrt(probes)
    error = model().log_prob(a) - exact().log_prob(a)
    assert error.abs().max() < 5 * spread
    assert error.std() > 0.2 * spread  # the estimate is noisy, as it should be
    assert torch.equal(model().log_prob(a), model().log_prob(a))  # fixed probes


def test_bad_options_are_refused_by_name():
    with pytest.raises(SbitkError, match="solver among"):
        FlowMatching(2, 1, solver="leapfrog")
    with pytest.raises(SbitkError, match="grid among"):
        FlowMatching(2, 1, grid="log")
    with pytest.raises(SbitkError, match="steps 'auto' or an integer"):
        FlowMatching(2, 1, steps="many")
    with pytest.raises(SbitkError, match="step_tolerance > 0"):
        FlowMatching(2, 1, step_tolerance=0.0)
    with pytest.raises(SbitkError, match="even time_features"):
        FlowMatching(2, 1, time_features=3)
    with pytest.raises(SbitkError, match="unexpected keyword"):
        FlowMatching(2, 1, bins=3)
    with pytest.raises(SbitkError, match=r"context of shape \(\*, 1\)"):
        FlowMatching(2, 1)(torch.zeros(3, 2))
    with pytest.raises(SbitkError, match="skip among"):
        FlowMatching(2, 1, skip="affine")


@pytest.mark.slow
def test_trained_on_a_linear_gaussian_it_learns_the_conditional_density():
    """a = 2c + 0.5 ε: held-out log-likelihood within 0.05 nats of the truth (its Monte Carlo
    standard error over 1,000 rows is about 0.02)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(6000, 1, generator=g)
    a = torch.cat([2 * c, -c], -1) + 0.5 * torch.randn(6000, 2, generator=g)
    model = FlowMatching(2, 1, hidden_features=(64, 64, 64), steps=20)
    train(model, a[:5000], c[:5000], TrainConfig(max_epochs=60, progress=False))
    held_a, held_c = a[5000:], c[5000:]
    truth = torch.distributions.Normal(torch.cat([2 * held_c, -held_c], -1), 0.5)
    exact = truth.log_prob(held_a).sum(-1).mean()
    learnt = model(held_c).log_prob(held_a).mean()
    assert float(learnt) == pytest.approx(float(exact), abs=0.05)


def set_skip(model, mu, sigma, weight=None):
    """Give a ``skip="linear"`` model the Gaussian N(c W + μ, Σ)."""
    variances, basis = torch.linalg.eigh(sigma)
    with torch.no_grad():
        model.skip.bias.copy_(mu)
        model.skip.basis.copy_(basis)
        model.skip.variances.copy_(variances)
        if weight is not None:
            model.skip.weight.copy_(weight)


def exact_diffusion_noise(model, a, t, mu, sigma):
    """ε̂ = s (m² Σ + s² I)⁻¹ (a - m μ): the noise of a N(μ, Σ) target (a solve, not a basis)."""
    m, s = model.marginal(t)
    var = m[..., None, None] ** 2 * sigma + s[..., None, None] ** 2 * torch.eye(2).double()
    centred = (a - m.unsqueeze(-1) * mu).unsqueeze(-1)
    return s.unsqueeze(-1) * torch.linalg.solve(var, centred).squeeze(-1)


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_the_linear_skip_is_the_exact_field_of_its_gaussian_until_trained(family):
    """The network's output layer starts at zero, so an untrained model with the skip of
    N(c W + μ, Σ) has the exact field of that Gaussian (computed independently, by a solve)."""
    g = torch.Generator().manual_seed(0)
    mu, sigma = GaussianTargetField.mu, GaussianTargetField.sigma
    weight = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    model = family(2, 1, skip="linear", hidden_features=(16, 16)).double()
    set_skip(model, mu, sigma, weight)
    a = torch.randn(6, 2, generator=g, dtype=torch.float64)
    c = torch.randn(6, 1, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.98 + 0.01
    exact = GaussianTargetField(2, 0, sigma_min=model.config.sigma_min).double()
    for row in range(6):
        shifted = mu + c[row] @ weight  # the target's mean at this context
        if family is FlowMatching:
            exact.mu = shifted
            want = exact.velocity(a[row], t[row], None)
            got = model.velocity(a[row : row + 1], t[row : row + 1], c[row : row + 1])[0]
        else:
            want = exact_diffusion_noise(model, a[row], t[row], shifted, sigma)
            got = model.noise(a[row : row + 1], t[row : row + 1], c[row : row + 1])[0]
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_fitted_to_a_linear_gaussian_the_untrained_model_is_its_density(family):
    """a = (c, -c) / 2 + ε / 2, whose residual variance is half a's own, above the skip's
    floor: the mean held-out log-likelihood within 0.005 nats of the truth (measured within
    0.0007 over three data seeds for both families; single rows err by up to 0.22 in the
    tails, from the fitted covariance). A narrower residual is floored."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(20_000, 1, generator=g, dtype=torch.float64)
    a = 0.5 * torch.cat([c, -c], -1) + 0.5 * torch.randn(20_000, 2, generator=g,
                                                         dtype=torch.float64)  # fmt: skip
    model = family(2, 1, skip="linear", hidden_features=(16, 16), steps=40).double()
    model.fit_standardization(a[:18_000], c[:18_000])
    held_a, held_c = a[18_000:], c[18_000:]
    truth = torch.distributions.Normal(0.5 * torch.cat([held_c, -held_c], -1), 0.5)
    exact = truth.log_prob(held_a).sum(-1).mean()
    assert float(model(held_c).log_prob(held_a).mean()) == pytest.approx(float(exact), abs=0.005)
    narrow = a + 3 * c  # residual variances 2 % and 4 % of a's own
    model.fit_standardization(narrow[:18_000], c[:18_000])
    assert torch.equal(model.skip.variances, torch.full_like(model.skip.variances, 0.25))


@pytest.mark.parametrize("network", ["residual", "mlp"])
@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
@pytest.mark.parametrize("skip", ["standard", "linear"])
def test_one_time_and_context_for_many_samples_is_the_field_of_every_row(network, family, skip):
    torch.manual_seed(0)
    model = family(3, 2, hidden_features=(16, 16, 16), network=network, skip=skip).double()
    with torch.no_grad():  # a non-trivial field: the blocks start near zero
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    if skip == "linear":
        set_skip(model, torch.randn(3).double(), torch.eye(3).double() * 0.5, torch.randn(2, 3))
    a = torch.randn(5, 4, 3, dtype=torch.float64)  # 5 samples for each of 4 contexts
    c = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    broadcast = model.velocity(a, t, c)
    every_row = model.velocity(a, t.expand(5, 4), c.expand(5, 4, 2))
    assert broadcast.shape == every_row.shape == (5, 4, 3)
    torch.testing.assert_close(broadcast, every_row)
    assert not torch.allclose(broadcast[:, 0], broadcast[:, 1])  # the contexts do differ


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_a_saved_linear_skip_is_read_back_with_its_fit(family, tmp_path):
    from sbitk.io.modelfile import load_model, save_model
    from sbitk.posteriors.direct import DirectPosterior
    from sbitk.simulation.priors import Normal

    g = torch.Generator().manual_seed(0)
    c = torch.randn(500, 1, generator=g)
    a = torch.cat([c, -c], -1) + torch.randn(500, 2, generator=g)
    model = family(2, 1, skip="linear", hidden_features=(8, 8), steps=4)
    model.fit_standardization(a, c)
    posterior = DirectPosterior(model, Normal(0.0, 3.0, dim=2))
    save_model(tmp_path / "skip.safetensors", posterior)
    loaded = load_model(tmp_path / "skip.safetensors")
    assert torch.equal(loaded.estimator.skip.weight, model.skip.weight)
    theta, x = a[:5], c[0]
    torch.testing.assert_close(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_dropout_acts_in_training_only_and_survives_a_model_file(family, tmp_path):
    from sbitk.io.modelfile import load_model, save_model
    from sbitk.posteriors.direct import DirectPosterior
    from sbitk.simulation.priors import Normal

    torch.manual_seed(0)
    model = family(2, 1, hidden_features=(8, 8, 8), steps=4, dropout=0.5)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2
    with torch.no_grad():  # a non-trivial field: the blocks start near zero
        for p in model.field.parameters():
            p.normal_(0.0, 0.5)
    a, c, t = torch.randn(6, 2), torch.randn(6, 1), torch.full((6,), 0.5)
    field = model.velocity if family is FlowMatching else model.noise
    model.train()
    assert not torch.equal(field(a, t, c), field(a, t, c))  # units dropped at random
    model.eval()
    assert torch.equal(field(a, t, c), field(a, t, c))
    model.fit_standardization(a, c)
    posterior = DirectPosterior(model, Normal(0.0, 3.0, dim=2))
    save_model(tmp_path / "dropout.safetensors", posterior)
    loaded = load_model(tmp_path / "dropout.safetensors")
    assert loaded.estimator.config.dropout == 0.5
    torch.testing.assert_close(loaded.log_prob(a, x=c[0]), posterior.log_prob(a, x=c[0]))


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_bad_dropout_is_refused_by_name(family):
    for options in ({"dropout": 1.0}, {"dropout": -0.1}, {"dropout": 0.1, "network": "mlp"}):
        with pytest.raises(SbitkError, match="dropout"):
            family(2, 1, **options)


def rows(kind, n=20_000, seed=0):
    """Rows a (n, 2) on a context c (n, 2): linear-Gaussian, or departing from it in the
    noise's shape (a two-scale mixture, kurtosis ratio 1.96), in its spread (growing with |c|)
    or in the mean (curved in c)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    mean = c @ torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    if kind == "mixture":
        noise = noise * torch.where(torch.rand(n, 1, generator=g) < 0.5, 1.0, 0.1)
    elif kind == "spread":
        noise = noise * (0.3 + c[:, :1].abs())
    elif kind == "curved":
        mean = mean + c.square()
    return mean + 0.5 * noise, c


@pytest.mark.parametrize(
    ("kind", "kurtosis", "spread"),
    # with 20,000 rows a Gaussian's kurtosis departs by about 0.023 (one standard error) along
    # each direction, and the spread's adjusted R² by a few 10⁻⁴; the mixture's by 0.96 in
    # theory (1.01 measured: its fourth moment is noisier)
    [("linear", (0.0, 0.05), (-0.01, 0.01)), ("mixture", (0.8, 1.2), (-0.01, 0.01)),
     ("spread", (0.3, 10.0), (0.1, 1.0)), ("curved", (0.3, 10.0), (0.1, 1.0))],
)  # fmt: skip
def test_the_residual_departure_tells_a_linear_gaussian_from_others(kind, kurtosis, spread):
    a, c = rows(kind)
    got = residual_departure(a, c, *linear_gaussian_fit(a, c, "test"))
    assert kurtosis[0] <= got[0] <= kurtosis[1]
    assert spread[0] <= got[1] <= spread[1]
    assert residual_departure(a[:50], c[:50], *linear_gaussian_fit(a[:50], c[:50], "t")) == (
        math.inf, math.inf)  # fmt: skip


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
@pytest.mark.parametrize("kind", ["linear", "mixture", "spread", "curved"])
def test_auto_takes_the_linear_skip_only_where_the_rows_look_linear_gaussian(family, kind):
    a, c = rows(kind, n=5000)
    torch.manual_seed(0)
    model = family(2, 2, hidden_features=(8, 8)).double()
    torch.manual_seed(0)
    own = family(2, 2, hidden_features=(8, 8), skip=family.own_skip).double()
    assert model.config.skip == "auto" and model.skip_kind == family.own_skip  # not fitted yet
    model.fit_standardization(a, c)
    own.fit_standardization(a, c)
    x, t, z = c[:4], torch.full((4,), 0.4, dtype=torch.float64), a[:4]
    field = "velocity" if family is FlowMatching else "noise"
    if kind == "linear":
        assert model.skip_kind == "linear"
        linear = family(2, 2, hidden_features=(8, 8), skip="linear").double()
        linear.fit_standardization(a, c)
        want = getattr(linear, field)(z, t, x)  # the fitted Gaussian's exact field
        torch.testing.assert_close(getattr(model, field)(z, t, x), want)
    else:
        assert model.skip_kind == family.own_skip
        torch.testing.assert_close(getattr(model, field)(z, t, x), getattr(own, field)(z, t, x))


@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_the_auto_decision_is_made_once_and_kept_in_a_model_file(family, tmp_path):
    from sbitk.io.modelfile import load_model, save_model
    from sbitk.posteriors.direct import DirectPosterior
    from sbitk.simulation.priors import Normal

    a, c = rows("linear", n=2000)
    model = family(2, 2, hidden_features=(8, 8), steps=4).double()
    model.fit_standardization(a, c)
    with torch.no_grad():  # as if trained
        model.field.output_layer.weight.normal_()
    trained = model.field.output_layer.weight.clone()
    curved, _ = rows("curved", n=2000)
    model.fit_standardization(curved, c)  # refitted: the decision and the weights stay
    assert model.skip_kind == "linear"
    assert torch.equal(model.field.output_layer.weight, trained)
    posterior = DirectPosterior(model.float(), Normal(0.0, 3.0, dim=2))
    save_model(tmp_path / "auto.safetensors", posterior)
    loaded = load_model(tmp_path / "auto.safetensors")
    assert loaded.estimator.skip_kind == "linear"
    theta, x = a[:5].float(), c[0].float()
    torch.testing.assert_close(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))
    other = family(2, 2, hidden_features=(8, 8), steps=4)
    other.fit_standardization(curved.float(), c.float())
    save_model(tmp_path / "own.safetensors", DirectPosterior(other, Normal(0.0, 3.0, dim=2)))
    assert load_model(tmp_path / "own.safetensors").estimator.skip_kind == family.own_skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", [FlowMatching, Diffusion])
def test_the_auto_skip_is_decided_and_sampled_on_cuda(family):
    a, c = rows("linear", n=2000)
    model = family(2, 2, hidden_features=(8, 8), steps=4).cuda()
    model.fit_standardization(a.float().cuda(), c.float().cuda())
    assert model.skip_kind == "linear" and model.skip.decision.is_cuda
    assert model(c[:3].float().cuda()).sample((5,)).is_cuda
