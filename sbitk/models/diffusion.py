r"""Score-based diffusion: a network learns the score of noised data, and the reverse process
carries noise back to the target.

A forward SDE :math:`da = f(a, t)\,dt + g(t)\,dw` turns a (standardised) training row
:math:`a_0` into :math:`a_t = m(t)\,a_0 + s(t)\,\epsilon`, :math:`\epsilon \sim \mathcal{N}(0, I)`:

* variance preserving (VP): :math:`\beta(t) = \beta_0 + t(\beta_1 - \beta_0)`,
  :math:`f = -\tfrac12 \beta(t) a`, :math:`g^2 = \beta(t)`,
  :math:`m = e^{-\frac12 \int_0^t \beta}`, :math:`s^2 = 1 - m^2`;
* variance exploding (VE): :math:`\sigma(t) = \sigma_0 (\sigma_1 / \sigma_0)^t`, :math:`f = 0`,
  :math:`g^2 = d\sigma^2/dt`, :math:`m = 1`, :math:`s = \sigma(t)`.

The network predicts the noise, :math:`\hat\epsilon_\phi(a_t, t, c)`, so that the score is
:math:`\nabla_a \log p_t(a \mid c) \approx -\hat\epsilon_\phi / s(t)`. Denoising score matching
weighted by :math:`s(t)^2` is then the regression

.. math::
    \ell(a_0 \mid c) = \mathbb{E}_{t \sim U(t_\varepsilon, 1), \epsilon}
    \big\| \hat\epsilon_\phi(m(t) a_0 + s(t) \epsilon, t, c) - \epsilon \big\|^2 .

Sampling runs the reverse SDE :math:`da = [f - g^2 \nabla \log p_t]\,dt + g\,d\bar w` from
:math:`t = 1` to :math:`t_\varepsilon` (Euler–Maruyama, then one denoising step), or the
probability-flow ODE :math:`\dot a = f - \tfrac12 g^2 \nabla \log p_t`, which has the same
marginals; the density follows from the ODE by the instantaneous change of variables, as for flow
matching (:class:`sbitk.models.continuous.ProbabilityFlowDistribution`). Samples come from the
SDE by default: its noise corrects part of a learned score's error, which the ODE keeps.

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), Score-based generative modeling
    through stochastic differential equations, arXiv:2011.13456.
    Geffner, Papamakarios & Mnih (2023), Compositional score modeling for simulation-based
    inference, arXiv:2209.14249.
    Sharrock, Simons, Liu & Beaumont (2024), Sequential neural score estimation, arXiv:2210.04872.
    Karras, Aittala, Aila & Laine (2022), Elucidating the design space of diffusion-based
    generative models, arXiv:2206.00364.

Example:
    >>> import torch
    >>> model = Diffusion(2, 3, hidden_features=(32, 32), steps=10)
    >>> dist = model(torch.zeros(4, 3))
    >>> dist.sample((5,)).shape, dist.log_prob(torch.zeros(4, 2)).shape
    (torch.Size([5, 4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.base import build_config
from sbitk.models.continuous import (
    VALIDATION_SEED,
    ProbabilityFlowDistribution,
    TimeFieldEstimator,
    add_time_field,
    evaluate_field,
    field_problems,
)
from sbitk.models.contract import EXACT

SDES = ("vp", "ve")
#: The share of log-uniform training times of each SDE (``DiffusionConfig.log_times=None``).
LOG_TIMES = {"vp": 0.5, "ve": 0.0}
SAMPLERS = ("ode", "sde")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Options of :class:`Diffusion`.

    Args:
        features, context: Sizes D of the modelled vector and C of the context.
        sde: ``"vp"`` (variance preserving) or ``"ve"`` (variance exploding).
        beta_min, beta_max: :math:`\\beta_0, \\beta_1` of the VP SDE.
        sigma_min, sigma_max: :math:`\\sigma_0, \\sigma_1` of the VE SDE, in standardised units.
        t_min: :math:`t_\\varepsilon`, the earliest time trained and solved to: the score's scale
            :math:`1/s(t)` grows without bound as t → 0.
        log_times: Share of the training times drawn log-uniformly on :math:`[t_\\varepsilon,
            1]` instead of uniformly, so that the small noise levels that resolve a posterior's
            finest detail get trained (for VP, :math:`s(t) \\approx \\sqrt{\\beta_0 t}` near 0).
            ``None`` (the default): :data:`LOG_TIMES` of the SDE, none for VE, whose
            :math:`\\sigma(t)` is already geometric in t (uniform times are log-uniform noise
            levels; log-uniform ones put two thirds of their draws below twice
            :math:`\\sigma_0`).
            On two_moons at 10,000 simulations (VP, observations 1-3) C2ST was 0.76, 0.79, 0.80
            with none (10,000 samples a side, sbibm's classifier) and 0.50, 0.56, 0.54 with half
            (3,000 a side, an MLP classifier: a screen, see docs/benchmarks.md for the
            protocol's figures).
        sampler: ``"sde"`` (the reverse SDE, the default) or ``"ode"`` (the probability-flow
            ODE); densities come from the ODE either way. At 10,000 simulations (all 10
            observations, 10,000 samples a side, sbibm's classifier) 100 steps of the SDE
            scored 0.821, 0.831 and 0.811 on slcp with training seeds 0, 1 and 2, where the ODE
            scored 0.831, 0.838 and 0.823 on the same models; two_moons 0.546 against 0.552,
            sir 0.600 against 0.632 (seed 0). Its noise corrects part of the
            learned score's error, which the ODE carries to the end (Karras et al. 2022). It
            takes about twice the ODE's time, and Euler–Maruyama's error widens a Gaussian
            target's variance by 4 % at 100 steps (1.2 % at 400; see
            docs/families/continuous.md).
        sde_steps: Euler–Maruyama steps of the reverse SDE, equal in the ODE's time
            (:attr:`Diffusion.time_span`).
        hidden_features, time_features, network: The noise network (as in flow matching).
        skip: The Gaussian whose exact noise the network corrects (as in flow matching):
            ``"standard"`` (N(0, I)), ``"linear"`` (a linear-Gaussian fit of the rows on the
            context), ``"none"``, or ``"auto"`` (the default: ``"linear"`` where the
            training rows look linear-Gaussian, else ``"standard"``). On gaussian_linear the
            fit scored 0.509 against 0.540 in 102 epochs against 138 (observation 1); on slcp
            with its trials permuted, whose rows do not look linear-Gaussian, 0.739 and 0.716
            against 0.711 and 0.702.
        dropout: Probability of zeroing each inner unit of the residual field's blocks in
            training. 0.1 scored a mean of 0.823 on slcp over three seeds against 0.831 (all
            10 observations, trials in their simulated order), in up to a third more epochs,
            and 0.537 on two_moons against 0.552, but 0.722 against 0.711 on slcp with its
            trials permuted (see docs/families/continuous.md).
        solver, steps, rtol, atol, divergence, probes: The probability-flow ODE's solver, for
            sampling with ``sampler="ode"`` and for every density. In log time 12 Runge–Kutta
            steps suffice (two_moons at 10,000 simulations, observations 1-3: C2ST 0.555,
            against 0.559 with 50 and 0.568 with 25 midpoint steps).
    """

    features: int
    context: int = 0
    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 1e-3
    log_times: float | None = None
    sampler: str = "sde"
    sde_steps: int = 100
    hidden_features: tuple[int, ...] = (128, 128, 128, 128)
    time_features: int = 8
    network: str = "residual"
    skip: str = "auto"
    solver: str = "rk4"
    steps: int = 12
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "exact"
    probes: int = 1
    dropout: float = 0.0


class Diffusion(TimeFieldEstimator):
    """Score-based diffusion estimator (NPSE as a posterior): a noise-predicting network,
    sampled by the reverse SDE or the probability-flow ODE.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        **options: Further fields of :class:`DiffusionConfig`.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = DiffusionConfig
    density: ClassVar[str] = EXACT
    #: On a box prior, model θ itself (as flow matching does).
    box_on_theta: ClassVar[bool] = True
    #: ``skip="auto"`` stands for N(0, I) where the rows do not look linear-Gaussian.
    own_skip: ClassVar[str] = "standard"

    def __init__(self, features: int, context: int = 0, **options):
        super().__init__(int(features), int(context))
        self.config = cfg = build_config(DiffusionConfig, features, context, options)
        _check(cfg)
        add_time_field(self, cfg)

    @classmethod
    def train_defaults(cls) -> dict:
        """Training settings left unset: batches of 256 at 3e-3 on a plateau schedule, with a
        patience of 40 epochs and a decay after 15 stalled ones, and the raw weights. A fixed
        budget of 130 epochs annealed on a cosine from 8e-3, with a stream of 96, is not for
        diffusion: on slcp (10,000 simulations, 10,000 samples a side, sbibm's classifier)
        it scored 0.938 (observations 1-10) against 0.838 for these settings, and 0.875 from
        3e-3 (observations 1-3, against 0.821). On two_moons (observations 1-3) C2ST was 0.559
        with batches of 256 at 1e-3, 0.527 at 3e-3, and 0.535 at 3e-3 with the weights
        averaged, which took twice the epochs; with a stream of 96 instead of 128, 0.547."""
        return {
            "schedule": "plateau",
            "patience": 40,
            "lr_patience": 15,
            "batch_size": 256,
            "learning_rate": 3e-3,
        }

    # --- the forward SDE -------------------------------------------------------------------

    def _integrated_beta(self, t: Tensor) -> Tensor:
        cfg = self.config
        return cfg.beta_min * t + 0.5 * (cfg.beta_max - cfg.beta_min) * t.square()

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`m(t)` and :math:`s(t)` of :math:`a_t = m(t)\\,a_0 + s(t)\\,\\epsilon`."""
        cfg = self.config
        if cfg.sde == "vp":
            log_m = -0.5 * self._integrated_beta(t)
            return log_m.exp(), (-torch.expm1(2 * log_m)).sqrt()
        return torch.ones_like(t), cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t

    def drift_and_diffusion(self, a: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`f(a, t)` (*, D) and :math:`g(t)^2` (*) of the forward SDE."""
        cfg = self.config
        if cfg.sde == "vp":
            beta = cfg.beta_min + t * (cfg.beta_max - cfg.beta_min)
            return -0.5 * beta.unsqueeze(-1) * a, beta
        sigma = cfg.sigma_min * (cfg.sigma_max / cfg.sigma_min) ** t
        return torch.zeros_like(a), 2 * sigma.square() * math.log(cfg.sigma_max / cfg.sigma_min)

    @property
    def time_span(self) -> tuple[float, float]:
        """The ODE's span from the noise to the data: VP in log time u = log t, from 0 to
        log ``t_min``; VE in t itself, from 1 to ``t_min`` (equal steps in t are equal ratios of
        its noise levels :math:`\\sigma(t)`)."""
        if self.config.sde == "ve":
            return 1.0, self.config.t_min
        return 0.0, math.log(self.config.t_min)

    def time_of(self, u: Tensor) -> Tensor:
        """The SDE's time t at the ODE's time u (:attr:`time_span`): VP's u is log t, VE's is t."""
        return u if self.config.sde == "ve" else u.exp()

    @property
    def noise_std(self) -> float:
        """Standard deviation of the SDE's marginal at t = 1 (its mean is ~0 there)."""
        _, s = self.marginal(torch.tensor(1.0, dtype=torch.float64))
        return float(s)

    # --- the network ----------------------------------------------------------------------

    def noise(self, a: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\hat\\epsilon_\\phi(a_t, t, c)` for standardised a (*, D), t (*), c (*, C).

        The network learns the difference from the noise of the config's ``skip`` Gaussian,
        for N(0, I) :math:`s\\,a_t / (m^2 + s^2)`, the exact prediction when the standardised
        rows are N(0, I). Without a skip an untrained network predicts no noise, and the VP ODE
        then blows the noise up by :math:`1/m(1) \\approx 150` on its way to the data."""
        m, s = self.marginal(t)
        var = (m.square() + s.square()).unsqueeze(-1)
        residual = evaluate_field(
            self.field, self.config.network, self.frequencies, a * var.rsqrt(), t, c
        )
        return residual + self._gaussian_noise(a, m, s, c)

    def _gaussian_noise(self, a: Tensor, m: Tensor, s: Tensor, c: Tensor | None) -> Tensor:
        """The exact noise prediction for a Gaussian target N(μ, Σ) (the skip's):
        :math:`s\\,(m^2\\Sigma + s^2 I)^{-1}(a - m\\mu)`."""
        m, s = m.unsqueeze(-1), s.unsqueeze(-1)
        kind = self.skip_kind
        if kind == "none":
            return torch.zeros_like(a)
        if kind == "standard":
            return s * a / (m.square() + s.square())
        mu = self.skip.mean(c)
        return self.skip.scaled(a - m * mu, s / (m.square() * self.skip.variances + s.square()))

    def score(self, a: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\nabla_a \\log p_t(a \\mid c) \\approx -\\hat\\epsilon_\\phi / s(t)`."""
        return -self.noise(a, t, c) / self.marginal(t)[1].unsqueeze(-1)

    def probability_flow(self, a: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """The probability-flow field :math:`f - \\tfrac12 g^2 \\nabla \\log p_t` at time t."""
        f, g2 = self.drift_and_diffusion(a, t)
        return f - 0.5 * g2.unsqueeze(-1) * self.score(a, t, c)

    def velocity(self, a: Tensor, u: Tensor, c: Tensor | None) -> Tensor:
        """The probability-flow ODE in the solvers' time u (:attr:`time_span`). VP: log time
        u = log t, :math:`da/du = t\\,da/dt`; near t = 0 its field in t grows like
        :math:`t^{-1/2}` (the score's scale :math:`1/s(t)`), and equal steps in u resolve it
        where equal steps in t do not (an untrained network's density then integrated to 0.07
        in 50 steps). VE: u = t, whose equal steps already shrink :math:`\\sigma` by equal
        ratios; in log time the first of 12 steps would take it from 10 to 0.5."""
        t = self.time_of(u)
        flow = self.probability_flow(a, t, c)
        return flow if self.config.sde == "ve" else t.unsqueeze(-1) * flow  # times dt/du

    # --- training -------------------------------------------------------------------------

    def _matching(self, a: Tensor, c: Tensor | None, gen: torch.Generator | None) -> Tensor:
        """Per-row squared error of the predicted noise at random (t, ε), drawn from ``gen``."""
        z = self.inputs(a)
        cfg = self.config
        u = torch.rand((2, *z.shape[:-1]), generator=gen, device=z.device, dtype=z.dtype)
        log_times = LOG_TIMES[cfg.sde] if cfg.log_times is None else cfg.log_times
        t = torch.where(
            u[1] < log_times,
            cfg.t_min ** u[0],
            cfg.t_min + (1.0 - cfg.t_min) * u[0],
        )
        eps = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
        m, s = self.marginal(t)
        a_t = m.unsqueeze(-1) * z + s.unsqueeze(-1) * eps
        return (self.noise(a_t, t, c) - eps).square().sum(-1)

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The denoising score-matching loss per row (B,) at fresh random times and noise."""
        return self._matching(inputs, self.standardized_context(context), None)

    def validation_loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The mean loss at times and noise fixed once for all epochs (common random numbers)."""
        gen = torch.Generator(device=inputs.device).manual_seed(VALIDATION_SEED)
        return self._matching(inputs, self.standardized_context(context), gen).mean()

    def forward(self, context: Tensor | None = None) -> DiffusionDistribution:
        """The distribution :math:`q(a \\mid c)`, batched over the context's leading shape."""
        return DiffusionDistribution(self, self.standardized_context(context))


def _check(cfg: DiffusionConfig) -> None:
    problems = []
    if cfg.sde not in SDES:
        problems.append(f"sde among {SDES} (got {cfg.sde!r})")
    if cfg.sampler not in SAMPLERS:
        problems.append(f"sampler among {SAMPLERS} (got {cfg.sampler!r})")
    if not 0 < cfg.beta_min < cfg.beta_max:
        problems.append(f"0 < beta_min < beta_max (got {cfg.beta_min}, {cfg.beta_max})")
    if not 0 < cfg.sigma_min < cfg.sigma_max:
        problems.append(f"0 < sigma_min < sigma_max (got {cfg.sigma_min}, {cfg.sigma_max})")
    if not 0 < cfg.t_min < 1:
        problems.append(f"0 < t_min < 1 (got {cfg.t_min})")
    if cfg.log_times is not None and not 0 <= cfg.log_times <= 1:
        problems.append(f"0 <= log_times <= 1 (got {cfg.log_times})")
    problems += field_problems(cfg)
    if cfg.steps < 1 or cfg.sde_steps < 1:
        problems.append(f"steps >= 1 and sde_steps >= 1 (got {cfg.steps}, {cfg.sde_steps})")
    if problems:
        raise SbitkError("Diffusion: expected " + "; ".join(problems))


class DiffusionDistribution(ProbabilityFlowDistribution):
    """:math:`q(a \\mid c)` of a diffusion model: the probability-flow ODE for densities, and
    for samples too unless the model's sampler is the reverse SDE."""

    @torch.no_grad()
    def sample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Samples ``(*shape, *batch_shape, D)``."""
        if self.model.config.sampler == "ode":
            return super().sample(shape, generator)
        return self.model.inputs.inverse(self._reverse_sde(shape, generator))

    def _sde_times(self) -> list[float]:
        """The reverse SDE's times from 1 to ``t_min``, in equal steps of the ODE's time
        (:attr:`Diffusion.time_span`): VP's in log t, VE's in t. Equal steps in t would leave
        VP's fine scales, below t = 0.01, to the last of 100 steps."""
        model = self.model
        start, end = model.time_span
        u = torch.linspace(start, end, model.config.sde_steps + 1, dtype=torch.float64)
        return model.time_of(u).tolist()

    def _reverse_sde(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Euler–Maruyama on the reverse SDE from t = 1 to ``t_min``, then the denoising step
        :math:`\\hat a_0 = (a + s^2 \\nabla \\log p_t) / m` (Tweedie's formula)."""
        model, cfg = self.model, self.model.config
        a = self._noise(shape, generator) * model.noise_std
        c = self.context  # one context and time for all samples: broadcast by the field
        for t, t_next in pairwise(self._sde_times()):
            h = t - t_next
            tt = self._times(a, t)
            f, g2 = model.drift_and_diffusion(a, tt)
            drift = f - g2.unsqueeze(-1) * model.score(a, tt, c)
            z = self._noise(shape, generator)
            a = a - drift * h + (g2 * h).sqrt().unsqueeze(-1) * z
        tt = self._times(a, cfg.t_min)
        m, s = model.marginal(tt)
        return (a + s.square().unsqueeze(-1) * model.score(a, tt, c)) / m.unsqueeze(-1)


__all__ = [
    "LOG_TIMES",
    "SAMPLERS",
    "SDES",
    "Diffusion",
    "DiffusionConfig",
    "DiffusionDistribution",
]
