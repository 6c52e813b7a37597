r"""Flow matching: a conditional vector field whose ODE carries noise to the target.

With :math:`a_1` a (standardised) training row, :math:`\epsilon \sim \mathcal{N}(0, I)` and the
optimal-transport path :math:`a_t = (1 - (1 - \sigma) t)\,\epsilon + t\,a_1`, the network
:math:`v_\phi(a, t, c)` regresses the path's velocity,

.. math::
    \ell(a_1 \mid c) = \mathbb{E}_{t, \epsilon}
    \big\| v_\phi(a_t, t, c) - (a_1 - (1 - \sigma)\,\epsilon) \big\|^2,

with :math:`t = u^{1/(1+\alpha)}`, :math:`u \sim U(0, 1)` (:math:`\alpha > 0` spends more of the
training near the data). Sampling integrates :math:`\dot a = v_\phi(a, t, c)` from
:math:`t = 0` (noise) to 1; the density follows from the instantaneous change of variables,

.. math::
    \log q(a_1 \mid c) = \log \mathcal{N}(a_0; 0, I)
    - \int_0^1 \nabla_a \cdot v_\phi(a_t, t, c)\,dt,

integrated backwards from :math:`a_1` with the exact divergence (or Hutchinson's estimate), so
the density is exact up to the solver's error.

References:
    Lipman, Chen, Ben-Hamu, Nickel & Le (2023), Flow matching for generative modeling,
    arXiv:2210.02747.
    Dax, Wildberger, Buchholz, Green, Macke & Schölkopf (2023), Flow matching for scalable
    simulation-based inference, arXiv:2305.17161.

Example:
    >>> import torch
    >>> model = FlowMatching(2, 3, hidden_features=(32, 32), steps=10)
    >>> dist = model(torch.zeros(4, 3))
    >>> dist.sample((5,)).shape, dist.log_prob(torch.zeros(4, 2)).shape
    (torch.Size([5, 4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.base import (
    VALIDATION_SEED,
    StandardizedEstimator,
    build_config,
    check_inputs,
    linear_gaussian_fit,
    residual_departure,
)
from sbitk.models.contract import EXACT
from sbitk.models.ode import METHODS, divergence, odeint
from sbitk.nn.mlp import MLP, GatedResidualMLP

SKIPS = ("none", "standard", "linear", "auto")


class GaussianSkip(nn.Module):
    """The Gaussian whose exact field a network corrects: the field the model would have if
    the standardised rows were drawn from :math:`\\mathcal{N}(W^\\top c + b, U \\Lambda U^\\top)`.

    ``"standard"``: N(0, I), the standardised rows' own mean and scale. ``"linear"``: the
    least-squares regression of the rows on the context and the covariance of its residuals
    (:meth:`fit`), a linear-Gaussian posterior; where the posterior is one (gaussian_linear) the
    network has nothing left to learn, and its output layer starts at zero so that the model
    starts as the skip. Held as buffers, so that a saved model keeps it.

    The covariance's eigenvalues are floored at :attr:`MIN_VARIANCE` (a posterior half as wide
    as the prior): a narrower skip holds its narrow direction fixed, and a curved posterior then
    leaves the network a large correction to learn. On two_moons (residual variances 0.015 and
    1.0; diffusion, 10,000 simulations, observations 1-3, sbibm's classifier, the output layer
    started at random) C2ST was 0.767 without the floor and 0.522 with it.

    ``skip="auto"`` takes the fit only where the rows look linear-Gaussian
    (:meth:`looks_linear`), and the estimator's own skip elsewhere: the decision, made by the
    first :meth:`fit`, is a buffer too (:attr:`chosen`).
    """

    #: The least variance of the fitted Gaussian along any direction, in standardised units.
    MIN_VARIANCE: ClassVar[float] = 0.25
    #: ``skip="auto"``: the largest departure of a residual's kurtosis from a Gaussian's, and
    #: the largest share of a squared residual's variance explained by the context, that still
    #: count as linear-Gaussian (:func:`~sbitk.models.base.residual_departure`).
    MAX_KURTOSIS: ClassVar[float] = 0.1
    MAX_HETEROSCEDASTICITY: ClassVar[float] = 0.05
    #: Rows the fit and the check use at most (the first: training rows come shuffled), so
    #: that a large bank with a wide context does not hold a float64 design of every row.
    MAX_ROWS: ClassVar[int] = 100_000

    def __init__(self, features: int, context: int, auto: bool = False):
        super().__init__()
        self.register_buffer("weight", torch.zeros(context, features))
        self.register_buffer("bias", torch.zeros(features))
        self.register_buffer("basis", torch.eye(features))
        self.register_buffer("variances", torch.ones(features))
        #: Whether the fit is used: always without ``auto``; with it, the first fit decides.
        self.chosen = not auto
        self.auto = auto
        if auto:  # -1: not decided yet, 0: the estimator's own skip, 1: the fit
            self.register_buffer("decision", torch.tensor(-1.0))
            self.register_load_state_dict_post_hook(_read_decision)

    @classmethod
    def looks_linear(cls, z: Tensor, c: Tensor | None, weight, bias, cov) -> bool:
        """Whether the fit's residuals look like one Gaussian for every context: on
        gaussian_linear (10,000 rows) the departures were 0.025 and 0.002, on slcp 0.27 and
        0.12, on two_moons 0.46 and 0.99, on gaussian_mixture 0.94 and 0.00."""
        kurtosis, spread = residual_departure(z, c, weight, bias, cov)
        return kurtosis <= cls.MAX_KURTOSIS and spread <= cls.MAX_HETEROSCEDASTICITY

    @torch.no_grad()
    def fit(self, z: Tensor, c: Tensor | None) -> bool:
        """Fit to standardised rows z (N, D) and context c (N, C) or None; with ``auto``, the
        first fit decides whether the fit is used. Returns whether this fit decided for it."""
        z, c = z[: self.MAX_ROWS], None if c is None else c[: self.MAX_ROWS]
        weight, bias, cov = linear_gaussian_fit(z, c, "GaussianSkip.fit")
        decided = False
        if self.auto and self.decision < 0:
            decided = self.chosen = self.looks_linear(z, c, weight, bias, cov)
            self.decision.fill_(float(self.chosen))
        variances, basis = torch.linalg.eigh(cov)
        if weight is not None:
            self.weight.copy_(weight)
        self.bias.copy_(bias)
        self.basis.copy_(basis)
        self.variances.copy_(variances.clamp_min(self.MIN_VARIANCE))
        return decided

    def mean(self, c: Tensor | None) -> Tensor:
        r""":math:`W^\top c + b` (*, D), or b without a context."""
        return self.bias if c is None or not self.weight.shape[0] else c @ self.weight + self.bias

    def scaled(self, r: Tensor, gain: Tensor) -> Tensor:
        """:math:`U\\,\\mathrm{diag}(g)\\,U^\\top r` for r (*, D) and per-eigenvalue gains g
        (*, D) (broadcast against r)."""
        return (r @ self.basis * gain) @ self.basis.T


def _read_decision(module: GaussianSkip, incompatible_keys) -> None:
    """After a state dict is loaded: the ``auto`` decision it holds, as a Python flag."""
    module.chosen = bool(module.decision > 0)


class TimeFieldEstimator(StandardizedEstimator):
    """Base of flow matching and diffusion: fits the :class:`GaussianSkip` of a
    ``skip="linear"`` or ``"auto"`` config with the standardisation."""

    #: The skip ``skip="auto"`` stands for where the rows do not look linear-Gaussian.
    own_skip: ClassVar[str] = "none"
    #: The grid of a fixed-step ODE solver (:data:`GRIDS`): equal steps in ``time_span``.
    grid: str = "equal"

    @property
    def ode_steps(self) -> int:
        """The steps of a fixed-step ODE solver: ``config.steps``."""
        return self.config.steps

    @property
    def skip_kind(self) -> str:
        """The skip in use: the config's, with ``"auto"`` decided by the training rows."""
        if self.config.skip != "auto":
            return self.config.skip
        return "linear" if self.skip.chosen else self.own_skip

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> Self:
        super().fit_standardization(inputs, context)
        if self.config.skip in ("linear", "auto"):
            c = None if context is None else self.standardized_context(context)
            if self.skip.fit(self.inputs(inputs), c):
                zero_output(self.field)  # start as the fit, as skip="linear" does
        return self


@dataclasses.dataclass(frozen=True)
class FlowMatchingConfig:
    """Options of :class:`FlowMatching`.

    Args:
        features, context: Sizes D of the modelled vector and C of the context.
        hidden_features: The vector field's residual stream width, then one width per block.
            A stream of 96 trained in two thirds of the time of 128 and scored 0.508 against
            0.511 on two_moons (observations 1-3); 64 scored 0.537. Over all 10 observations 96
            scored 0.522 against 0.527 there, but 0.832 against 0.820 on slcp and 0.557
            against 0.551 on gaussian_mixture (mean of two seeds).
        time_features: Size of the Fourier embedding of t (sines and cosines).
        sigma_min: Width :math:`\\sigma` of the path at the data end.
        time_exponent: :math:`\\alpha` of the skewed training times :math:`u^{1/(1+\\alpha)}`
            (density :math:`\\propto t^\\alpha`). Near the data the field must resolve the
            posterior's finest detail: on two_moons at 10,000 simulations (observations 1-2,
            3,000 samples a side) C2ST was 0.73 and 0.73 with :math:`\\alpha = 0`, 0.60 and 0.60
            with 4 (all times skewed), 0.68 and 0.68 with 9.
        uniform_times: Share of the training times drawn uniformly instead. With none, the
            field near the noise end is barely trained and densities suffer: on a 2-D
            linear-Gaussian problem the held-out log-likelihood was 0.07-0.10 nats below the
            truth with all times skewed and within 0.05 with a share of 0.2, whose two_moons
            C2ST was 0.64 and 0.71.
        solver: ODE method for sampling and densities (:data:`sbitk.models.ode.METHODS`).
        steps: Steps of a fixed-step solver, or ``"auto"`` (the default): the fewest of
            :data:`STEP_CHOICES` that come within ``step_tolerance`` of an adaptive solve on
            the held-out contexts, chosen once training ends (:func:`choose_steps`) and saved
            with the weights. The steps a task needs differ: on trained models (10,000
            simulations) gaussian_linear took 4, slcp 8, two_moons and sir 12,
            gaussian_mixture and lotka_volterra 16.
        step_tolerance: The RMS error, per coordinate and in posterior standard deviations,
            that ``steps="auto"`` allows. On gaussian_mixture an error of 0.02 cost 0.02 of
            C2ST (0.551 against 0.530 at 0.007).
        grid: Where a fixed-step solver's steps fall (:data:`GRIDS`): ``"equal"``, ``"cosine"``
            (the default: finer at both ends, 1 - t = (1 - cos πu)/2 for equal steps in u,
            which runs from 1 at the noise to 0 at the data) or ``"data"`` (finer towards the
            data, 1 - t = u²). A narrow posterior bends the
            paths just before the data, where equal steps are coarsest: on trained models
            (10,000 simulations) 12 cosine steps came closer to the exact ODE solution than 12
            equal ones, by RMS errors of 0.010 against 0.029 posterior standard deviations on
            gaussian_mixture, 0.001 against 0.018 on sir and 0.030 against 0.048 on
            lotka_volterra. ``"data"`` with 8 steps erred by 0.009 on gaussian_mixture but by
            2.9 on lotka_volterra.
        rtol, atol: Tolerances of the adaptive solver (``"dopri5"``).
        divergence: ``"exact"`` or ``"hutchinson"`` (``probes`` Rademacher vectors).
        network: ``"residual"`` (a residual stream gated by the context and time) or ``"mlp"``
            (a perceptron over their concatenation).
        skip: The Gaussian whose exact field the network corrects (:class:`GaussianSkip`):
            ``"none"`` (the network is the field), ``"standard"`` (N(0, I)), ``"linear"`` (a
            linear-Gaussian fit of the rows on the context) or ``"auto"`` (the default:
            ``"linear"`` where the training rows look linear-Gaussian, else ``"none"``). On
            gaussian_linear, where they do, the fit scored 0.506 against 0.524 in 56 epochs
            against 119 (observation 1); where they do not, it is 0.02 behind on slcp.
        dropout: Probability of zeroing each inner unit of the residual field's blocks in
            training (``network="residual"`` only). On two_moons 0.1 scored 0.538 against
            0.527 (all 10 observations), in 298 epochs against 334; on gaussian_linear
            (observation 1) 0.532 against 0.524, in 87 epochs against 119.
    """

    features: int
    context: int = 0
    hidden_features: tuple[int, ...] = (128, 128, 128, 128)
    time_features: int = 8
    sigma_min: float = 1e-4
    time_exponent: float = 4.0
    uniform_times: float = 0.2
    solver: str = "rk4"
    steps: int | str = "auto"
    step_tolerance: float = 0.005
    grid: str = "cosine"
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "exact"
    probes: int = 1
    network: str = "residual"
    skip: str = "auto"
    dropout: float = 0.0


class FlowMatching(TimeFieldEstimator):
    """Flow-matching estimator (FMPE as a posterior): a vector field, sampled by an ODE.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        **options: Further fields of :class:`FlowMatchingConfig`.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = FlowMatchingConfig
    density: ClassVar[str] = EXACT
    #: On a box prior, model θ itself: the logit stretches mass near an edge into long tails.
    box_on_theta: ClassVar[bool] = True

    def __init__(self, features: int, context: int = 0, **options):
        super().__init__(int(features), int(context))
        self.config = cfg = build_config(FlowMatchingConfig, features, context, options)
        _check(cfg)
        add_time_field(self, cfg)
        if cfg.steps == "auto":
            self.register_buffer("chosen_steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def train_defaults(cls) -> dict:
        """Training settings left unset: small batches at a high rate, validated and kept as an
        average of the weights, and more patience than a flow's. The regression target is
        noisy: the average smooths the optimiser's noise and the patience lets the validation
        loss improve for long after the flows' defaults stop. On two_moons (10,000
        simulations, observations 1-3, 10,000 samples a side, sbibm's classifier) C2ST was
        0.740 with batches of 256 at 1e-3, 0.535 at 3e-3, and 0.508 at 3e-3 with the average
        (decay 0.999); batches of 512 and 1,024 at 3e-3 gave 0.545 and 0.547, and 2,048
        stopped early at 0.778. On slcp the same settings scored 0.835 against 0.805.

        A fixed budget trains faster but is not as accurate everywhere: a field of width 96
        for 100 epochs annealed on a cosine from 8e-3 (``TrainConfig(schedule="cosine",
        max_epochs=100, patience=100, learning_rate=8e-3)`` and ``hidden_features=(96,) * 4``)
        trained in a quarter of the time, and scored (observations 1-3) 0.526 against 0.511 on
        two_moons and 0.813 against 0.834 on slcp, but 0.581 against 0.548 on gaussian_mixture
        (300 epochs: 0.558), whose validation loss kept improving for 360 epochs."""
        return {
            "patience": 40,
            "lr_patience": 15,
            "batch_size": 256,
            "learning_rate": 3e-3,
            "ema_decay": 0.999,
        }

    #: The ODE runs from the noise (t = 0) to the data (t = 1).
    time_span: ClassVar[tuple[float, float]] = (0.0, 1.0)
    #: Standard deviation of the Gaussian noise at the start of the ODE.
    noise_std: ClassVar[float] = 1.0

    @property
    def grid(self) -> str:
        """The grid of the fixed ODE steps: ``config.grid``."""
        return self.config.grid

    @property
    def ode_steps(self) -> int:
        """``config.steps``; with ``"auto"``, those chosen after training
        (:meth:`after_training`), or :data:`UNCHOSEN_STEPS` before."""
        if self.config.steps != "auto":
            return self.config.steps
        return int(self.chosen_steps) or UNCHOSEN_STEPS

    def after_training(self, inputs: Tensor, context: Tensor | None = None) -> dict:
        """With ``steps="auto"`` and a fixed-step solver, choose the steps on the held-out
        contexts (:func:`choose_steps`); they are saved with the weights, and returned as
        ``{"steps": n}``. Without held-out rows it keeps :data:`UNCHOSEN_STEPS`."""
        held_out = inputs.shape[0] > 0
        if self.config.steps != "auto" or self.config.solver == "dopri5" or not held_out:
            return {}
        self.chosen_steps.fill_(choose_steps(self, context, self.config.step_tolerance))
        return {"steps": self.ode_steps}

    def velocity(self, a: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """:math:`v_\\phi(a, t, c)` for standardised a (*, D), t (*) and c (*, C) or None."""
        v = evaluate_field(self.field, self.config.network, self.frequencies, a, t, c)
        if self.skip_kind == "none":
            return v
        return v + self._gaussian_velocity(a, t, c)

    def _gaussian_velocity(self, a: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """The path's exact velocity for a Gaussian target N(μ, Σ) (the skip's):
        :math:`\\mu + (t\\Sigma - s(1 - st)I)\\,C_t^{-1}(a - t\\mu)`, with
        :math:`C_t = (1 - st)^2 I + t^2 \\Sigma` and s = 1 - σ."""
        s = 1.0 - self.config.sigma_min
        t = t.unsqueeze(-1)
        if self.skip_kind == "standard":
            return a * (t - s * (1 - s * t)) / ((1 - s * t).square() + t.square())
        lam = self.skip.variances
        gain = (t * lam - s * (1 - s * t)) / ((1 - s * t).square() + t.square() * lam)
        mu = self.skip.mean(c)
        return mu + self.skip.scaled(a - t * mu, gain)

    def _matching(self, a: Tensor, c: Tensor | None, gen: torch.Generator | None) -> Tensor:
        """Per-row squared error of the velocity at random (t, ε), drawn from ``gen``."""
        z = self.inputs(a)
        u = torch.rand((2, *z.shape[:-1]), generator=gen, device=z.device, dtype=z.dtype)
        # a share of the times uniform, the rest skewed towards the data end (density ∝ t^α)
        t = torch.where(
            u[1] < self.config.uniform_times,
            u[0],
            u[0] ** (1.0 / (1.0 + self.config.time_exponent)),
        )
        eps = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
        s = 1.0 - self.config.sigma_min
        a_t = (1.0 - s * t.unsqueeze(-1)) * eps + t.unsqueeze(-1) * z
        return (self.velocity(a_t, t, c) - (z - s * eps)).square().sum(-1)

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The flow-matching loss per row (B,) at fresh random times and noise."""
        return self._matching(inputs, self.standardized_context(context), None)

    def validation_loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The mean loss at times and noise fixed once for all epochs (common random numbers),
        so that epochs are compared on the same draws."""
        gen = torch.Generator(device=inputs.device).manual_seed(VALIDATION_SEED)
        return self._matching(inputs, self.standardized_context(context), gen).mean()

    def forward(self, context: Tensor | None = None) -> ProbabilityFlowDistribution:
        """The distribution :math:`q(a \\mid c)`, batched over the context's leading shape."""
        return ProbabilityFlowDistribution(self, self.standardized_context(context))


def field_problems(cfg) -> list[str]:
    """What is wrong with the options flow matching and diffusion share: the field, its time
    embedding and the ODE's solver."""
    problems = []
    if cfg.time_features < 2 or cfg.time_features % 2:
        problems.append(f"an even time_features >= 2 (got {cfg.time_features})")
    if cfg.skip not in SKIPS:
        problems.append(f"skip among {SKIPS} (got {cfg.skip!r})")
    if cfg.network not in ("residual", "mlp"):
        problems.append(f"network 'residual' or 'mlp' (got {cfg.network!r})")
    if not 0 <= cfg.dropout < 1 or (cfg.dropout and cfg.network != "residual"):
        problems.append(f"0 <= dropout < 1, and 0 unless network='residual' (got {cfg.dropout})")
    if cfg.solver not in METHODS:
        problems.append(f"solver among {METHODS} (got {cfg.solver!r})")
    if cfg.divergence not in ("exact", "hutchinson") or cfg.probes < 1:
        problems.append(f"divergence 'exact' or 'hutchinson' with probes >= 1 (got "
                        f"{cfg.divergence!r}, {cfg.probes})")  # fmt: skip
    return problems


def _check(cfg: FlowMatchingConfig) -> None:
    problems = []
    if cfg.features < 1 or cfg.context < 0:
        problems.append(f"features >= 1 and context >= 0 (got {cfg.features}, {cfg.context})")
    problems += field_problems(cfg)
    if not 0 <= cfg.sigma_min < 1 or cfg.time_exponent <= -1:
        problems.append("0 <= sigma_min < 1 and time_exponent > -1")
    if cfg.steps != "auto" and not (isinstance(cfg.steps, int) and cfg.steps >= 1):
        problems.append(f"steps 'auto' or an integer >= 1 (got {cfg.steps!r})")
    if not cfg.step_tolerance > 0:
        problems.append(f"step_tolerance > 0 (got {cfg.step_tolerance})")
    if cfg.grid not in GRIDS:
        problems.append(f"grid among {tuple(GRIDS)} (got {cfg.grid!r})")
    if not 0 <= cfg.uniform_times <= 1:
        problems.append(f"0 <= uniform_times <= 1 (got {cfg.uniform_times})")
    if problems:
        raise SbitkError("FlowMatching: expected " + "; ".join(problems))


def fourier_frequencies(time_features: int) -> Tensor:
    """Angular frequencies :math:`\\pi 2^k`, k = -1 … time_features/2 - 2, of a time embedding:
    from slow trends in t ∈ [0, 1] to the detail near the data."""
    return math.pi * 2.0 ** torch.arange(-1, time_features // 2 - 1).float()


def add_time_field(module: torch.nn.Module, cfg) -> None:
    """Give ``module`` the time embedding's ``frequencies`` (a buffer) and the ``field`` network
    its config asks for (``features``, ``context``, ``time_features``, ``hidden_features``,
    ``network``): what flow matching and diffusion are built on."""
    module.register_buffer("frequencies", fourier_frequencies(cfg.time_features))
    module.field = time_field(
        cfg.features,
        cfg.context,
        cfg.time_features,
        cfg.hidden_features,
        cfg.network,
        cfg.dropout,
    )
    if cfg.skip in ("linear", "auto"):
        module.skip = GaussianSkip(cfg.features, cfg.context, auto=cfg.skip == "auto")
    if cfg.skip == "linear":
        zero_output(module.field)


@torch.no_grad()
def zero_output(field: torch.nn.Module) -> None:
    """Zero the output layer of a field network, so that it adds nothing to its skip."""
    field.output_layer.weight.zero_()
    field.output_layer.bias.zero_()


def time_field(
    features: int,
    context: int,
    time_features: int,
    hidden: Sequence[int],
    network: str,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """The network of a time-dependent field of (a, t, c): ``"residual"`` (a residual stream
    gated by the context and time, with ``dropout`` in its blocks) or ``"mlp"`` (a perceptron
    over their concatenation)."""
    if network == "mlp":
        return MLP(features + context + time_features, features, hidden, "silu")
    return GatedResidualMLP(
        features, context + time_features, features, hidden, "silu", dropout=dropout
    )


def evaluate_field(
    field: torch.nn.Module,
    network: str,
    frequencies: Tensor,
    a: Tensor,
    t: Tensor,
    c: Tensor | None,
) -> Tensor:
    """A :func:`time_field` at a (*, D), t (*) and c (*, C) or None, t embedded by sines and
    cosines of ``frequencies``. t and c may have fewer leading dimensions than a (one time and
    context for many samples): the residual field then computes their part once and broadcasts
    it, where the perceptron needs their copy for every row."""
    angles = t.unsqueeze(-1) * frequencies
    emb = torch.cat([angles.sin(), angles.cos()], -1)
    if c is not None:
        shape = t.shape  # in training every row has its own: skip torch's slow broadcast rule
        if c.shape[:-1] != shape:
            shape = torch.broadcast_shapes(c.shape[:-1], t.shape)
        emb = torch.cat([c.expand(*shape, c.shape[-1]), emb.expand(*shape, emb.shape[-1])], -1)
    if network == "mlp":
        shape = torch.broadcast_shapes(a.shape[:-1], emb.shape[:-1])
        return field(torch.cat([a.expand(*shape, a.shape[-1]), emb.expand(*shape, -1)], -1))
    return field(a, emb)


#: Grids of a fixed-step ODE solver: the share w(u) of the span left to the data at the
#: solver's time u ∈ [0, 1] (u = 0 at the data), and its derivative; equal steps in u.
GRIDS: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    "equal": (lambda u: u, lambda u: 1.0),
    "cosine": (
        lambda u: (1 - math.cos(math.pi * u)) / 2,
        lambda u: math.pi / 2 * math.sin(math.pi * u),
    ),
    "data": (lambda u: u * u, lambda u: 2 * u),
}


def on_grid(
    f: Callable[[float, Tensor], Tensor],
    t0: float,
    t1: float,
    span: tuple[float, float],
    grid: str,
) -> tuple[Callable[[float, Tensor], Tensor], float, float]:
    """The ODE :math:`\\dot y = f(t, y)` from one end of ``span`` (t at the noise, t at the
    data) to the other, in the solver's time u of ``grid``: :math:`t = t_{data} + (t_{noise} -
    t_{data})\\,w(u)`. Returns the field in u, :math:`f(t(u), y)\\,t'(u)`, and u at ``t0``
    and ``t1``."""
    t_noise, t_data = span
    if {t0, t1} != {t_noise, t_data}:
        raise SbitkError(f"a grid runs between the ends of {span}, not from {t0} to {t1}")
    share, slope = GRIDS[grid]
    width = t_noise - t_data

    def g(u: float, y: Tensor) -> Tensor:
        u = min(max(u, 0.0), 1.0)  # a stage's time may round past an end
        return f(t_data + width * share(u), y) * (width * slope(u))

    return g, float(t0 == t_noise), float(t1 == t_noise)


class ProbabilityFlowDistribution:
    """:math:`q(a \\mid c)` of a continuous-time model for a fixed batch of contexts.

    The model gives a velocity :math:`v(a, t, c)` in standardised coordinates, the
    ``time_span`` (t at the noise, t at the data), the ``noise_std`` of the Gaussian at the noise
    end and its ODE solver settings (``config.solver``, ``steps``, ``rtol``, ``atol``,
    ``divergence``, ``probes``). Sampling carries noise along the ODE to the data; the density
    follows from the instantaneous change of variables,
    :math:`\\log q(a) = \\log \\mathcal{N}(a_{noise}) + \\int_{t_{data}}^{t_{noise}}
    \\nabla \\cdot v\\,dt`, integrated backwards from the data.

    ``sample((n,))`` gives ``(n, *batch_shape, D)``; ``log_prob(a)`` takes a of shape
    ``(..., *batch_shape, D)`` and gives ``(..., *batch_shape)``.
    """

    has_rsample = False

    def __init__(self, model, context: Tensor | None):
        self.model, self.context = model, context
        self.batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.event_shape = torch.Size((model.config.features,))

    def _field(self):
        """The velocity at t for states a (*sample, *batch_shape, D): one time and one context
        for all samples, broadcast by the field to the states' shape."""
        c, times = self.context, self._times

        def f(t: float, a: Tensor) -> Tensor:
            return self.model.velocity(a, times(a, t), c)

        return f

    def _times(self, a: Tensor, t: float) -> Tensor:
        """The time t as a tensor of the batch's shape, broadcasting against states ``a``."""
        return a.new_full(self.batch_shape, t)

    def _solve(self, f, y: Tensor, t0: float, t1: float, steps: int | None = None) -> Tensor:
        """The ODE's solution by the model's solver, with ``steps`` fixed steps (the model's
        :attr:`~TimeFieldEstimator.ode_steps` unless given) placed by its grid."""
        cfg, grid = self.model.config, self.model.grid
        if cfg.solver != "dopri5" and grid != "equal":  # fixed steps, placed by the grid
            f, t0, t1 = on_grid(f, t0, t1, self.model.time_span, grid)
        steps = self.model.ode_steps if steps is None else steps
        return odeint(f, y, t0, t1, method=cfg.solver, steps=steps, rtol=cfg.rtol,
                      atol=cfg.atol)  # fmt: skip

    def _noise(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        """Standard normal draws ``(*shape, *batch_shape, D)`` on the model's device."""
        ref = self.model.frequencies
        full = torch.Size(shape) + self.batch_shape + self.event_shape
        device = ref.device if generator is None else generator.device
        return torch.randn(full, generator=generator, dtype=ref.dtype, device=device).to(
            ref.device
        )

    @torch.no_grad()
    def sample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Samples ``(*shape, *batch_shape, D)``: noise carried along the ODE to the data."""
        noise = self._noise(shape, generator) * self.model.noise_std
        t_noise, t_data = self.model.time_span
        z = self._solve(self._field(), noise, t_noise, t_data)
        return self.model.inputs.inverse(z)

    @torch.no_grad()
    def log_prob(self, a: Tensor) -> Tensor:
        """Log density of ``a`` (..., *batch_shape, D) by the instantaneous change of variables."""
        cfg, d = self.model.config, self.model.config.features
        shape = check_inputs(a, d, self.batch_shape)
        z = self.model.inputs(a.expand(*shape, d))
        field = self._field()
        probes = None
        if cfg.divergence == "hutchinson":
            gen = torch.Generator(device=z.device).manual_seed(VALIDATION_SEED)
            signs = torch.randint(0, 2, (cfg.probes, *z.shape), generator=gen, device=z.device)
            probes = (2 * signs - 1).to(z.dtype)

        def augmented(t: float, y: Tensor) -> Tensor:
            v, div = divergence(lambda x: field(t, x), y[..., :d], probes)
            return torch.cat([v, div.unsqueeze(-1)], -1)

        t_noise, t_data = self.model.time_span
        y0 = torch.cat([z, z.new_zeros(*shape, 1)], -1)
        y1 = self._solve(augmented, y0, t_data, t_noise)
        noise, integral = y1[..., :d] / self.model.noise_std, y1[..., d]
        base = -0.5 * noise.square().sum(-1) - d * (
            0.5 * math.log(2 * math.pi) + math.log(self.model.noise_std)
        )
        return base + integral + self.model.inputs.log_abs_det()

    def __repr__(self) -> str:
        d, name = self.model.config.features, type(self.model).__name__
        return f"{name}Distribution(batch_shape={tuple(self.batch_shape)}, features={d})"


#: The fixed steps ``steps="auto"`` chooses among, fewest first, and what it takes before it
#: has chosen (an untrained model).
STEP_CHOICES = (4, 6, 8, 12, 16, 24, 32, 48, 64)
UNCHOSEN_STEPS = 12
#: The pilot of :func:`choose_steps`: contexts, draws per context, and the adaptive solver's
#: tolerance and most steps for the reference solution.
PILOT_CONTEXTS, PILOT_DRAWS, PILOT_TOLERANCE, PILOT_MAX_STEPS = 32, 16, 1e-6, 2_000


@torch.no_grad()
def choose_steps(model: TimeFieldEstimator, context: Tensor | None, tolerance: float) -> int:
    """The fewest :data:`STEP_CHOICES` of the model's fixed-step solver, on its grid, whose
    draws come within ``tolerance`` of the ODE's solution.

    A pilot carries :data:`PILOT_DRAWS` noise draws for each of the first
    :data:`PILOT_CONTEXTS` contexts (raw rows, or ``None``) along the ODE, by the adaptive
    solver at :data:`PILOT_TOLERANCE` and by fixed steps, from the same noise (seeded, so the
    choice is reproducible). The error is the RMS over draws and coordinates of the distance
    between the two ends, in units of each context's posterior standard deviation (the spread
    of its adaptive draws); its mean over the contexts must be within ``tolerance``."""
    c = None if context is None else context[:PILOT_CONTEXTS]
    dist = model(c)
    device = model.frequencies.device
    gen = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    noise = dist._noise((PILOT_DRAWS,), gen) * model.noise_std
    field, (t_noise, t_data) = dist._field(), model.time_span
    try:
        exact = odeint(field, noise, t_noise, t_data, method="dopri5", rtol=PILOT_TOLERANCE,
                       atol=PILOT_TOLERANCE, max_steps=PILOT_MAX_STEPS)  # fmt: skip
    except SbitkError:  # a field too stiff to resolve: the most steps, not a failed training
        warnings.warn(
            f"the adaptive solver could not follow the field within {PILOT_MAX_STEPS} steps; "
            f"the fixed-step solver takes {STEP_CHOICES[-1]}",
            stacklevel=2,
        )
        return STEP_CHOICES[-1]
    scale = exact.std(0).clamp_min(torch.finfo(exact.dtype).tiny)
    for steps in STEP_CHOICES:
        fixed = dist._solve(field, noise, t_noise, t_data, steps)
        error = ((fixed - exact) / scale).square().mean((0, -1)).sqrt()  # per context
        if float(error.mean()) <= tolerance:
            return steps
    return STEP_CHOICES[-1]


__all__ = [
    "GRIDS",
    "FlowMatching",
    "FlowMatchingConfig",
    "ProbabilityFlowDistribution",
    "evaluate_field",
    "add_time_field",
    "choose_steps",
    "field_problems",
    "fourier_frequencies",
    "time_field",
    "on_grid",
]
