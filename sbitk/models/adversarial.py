r"""Adversarial estimators: a (conditional) GAN that offers samples only.

A generator :math:`G_\phi(z, c)`, :math:`z \sim \mathcal{N}(0, I_L)`, maps noise and the
standardised context to the standardised modelled vector; a critic :math:`D_\psi(a, c)` scores
pairs. Two objectives, written for one row :math:`(a, c)` with :math:`\tilde a = G_\phi(z, c)`:

* ``"non-saturating"`` (the default; Goodfellow et al. 2014, conditional as in Mirza &
  Osindero 2014), with :math:`D` a logit, :math:`\sigma` the logistic function and the R1
  penalty on real rows (Mescheder et al. 2018), which lets simultaneous gradient descent settle,

  .. math::

      \ell_D = -\log \sigma(D(a, c)) - \log(1 - \sigma(D(\tilde a, c)))
          + \tfrac{\gamma}{2} \lVert \nabla_a D(a, c) \rVert_2^2, \qquad
      \ell_G = -\log \sigma(D(\tilde a, c));

* ``"wgan-gp"`` (Gulrajani et al. 2017), with :math:`\hat a = \epsilon a + (1 - \epsilon)
  \tilde a`, :math:`\epsilon \sim U(0, 1)`,

  .. math::

      \ell_D = D(\tilde a, c) - D(a, c)
          + \lambda \left(\lVert \nabla_{\hat a} D(\hat a, c) \rVert_2 - 1\right)^2, \qquad
      \ell_G = -D(\tilde a, c).

A hybrid objective adds a strictly proper scoring rule to the generator's loss (Pacchiardi &
Dutta 2022): with ``energy_weight`` :math:`\lambda > 0` and (``energy_draws=2``, the default)
two independent draws :math:`\tilde a, \tilde a'` at :math:`c`,

.. math::

    \ell_G^{\lambda} = \ell_G + \lambda \left( \tfrac{1}{2} \lVert \tilde a - a \rVert
        + \tfrac{1}{2} \lVert \tilde a' - a \rVert
        - \tfrac{1}{2} \lVert \tilde a - \tilde a' \rVert \right),

the bracket being the unbiased two-draw energy score
(:func:`~sbitk.models.divergences.energy_score`), whose expectation is smallest exactly at
:math:`G(\cdot, c) = p(a \mid c)`. The default is :math:`\lambda = 1`: **by default the generator
minimises the non-saturating adversarial loss plus the energy score**, the critic the
non-saturating loss with R1. The adversarial term alone (``energy_weight=0``) left the posterior
sds of gaussian_linear 10-50 % too small after 170 epochs at 10,000 simulations (C2ST 0.91);
the energy score alone is known to converge slowly in its higher moments, which the critic sees.
A larger weight did not help: at 10,000 simulations (3,000 samples per side, observations 1
and 2) :math:`\lambda = 3` gave two_moons C2ST 0.772 / 0.817 against 0.665 / 0.732 at
:math:`\lambda = 1`. ``energy_draws`` :math:`M > 2` draws per row enter the score's unbiased
estimator; :math:`M = 4` gave 0.668 / 0.778, so the default keeps :math:`M = 2`.

The critic (three hidden layers of 256) is wider than the generator (three of 128): with a
critic as wide as the generator, two_moons observation 2 stayed at C2ST 0.732; with 256 it
reached 0.689 / 0.625 (observations 1 / 2) and gaussian_linear 0.567 / 0.565 (from 0.639 /
0.573), at 46 s and 24 s of training on one CPU thread. A final learning-rate decay (a
plateau schedule with ``lr_patience`` 20) changed nothing on two_moons (the best epoch was
the same), and an exponential moving average of the weights (0.999) gave 0.665 / 0.698.
On a ring of 8 Gaussians (sd 0.05, radius 2, 10,000 rows) the default puts 77.6 % of 4,000
draws within 5 sd of a mode, each mode's count inside its binomial interval; with the narrower
critic 62.5 %, one mode getting 119 draws of an expected 312, and without the energy score
(``energy_weight=0``) 60.3 %, two modes starved.

Updates (``updates``): the training engine makes one backward pass and one optimiser step per
batch, and AdamW skips parameters without a gradient. With ``"alternating"`` (the default)
:meth:`ConditionalGAN.loss` gives the critic ``critic_steps`` steps (1 for the non-saturating
objective, Gulrajani et al.'s 5 for WGAN-GP), then the generator one step, each step's loss
reaching one player only. With ``"simultaneous"`` it returns :math:`\ell_D + \ell_G` arranged so
that each network gets only its own objective's gradient (:math:`\ell_D` sees :math:`\tilde a`
detached, :math:`\ell_G` evaluates the critic with detached parameters). Either way the critic
learns faster through its own parameter group (:meth:`ConditionalGAN.optimizer_groups`, the two
time-scale update rule of Heusel et al. 2017).

Generator: an MLP :math:`g(z, c)` plus the first D noise coordinates (when :math:`L \ge D`), so it
starts near :math:`\mathcal{N}(0, I)` in standardised units, covering every mode, and a
location-scale head, :math:`G(z, c) = \mu(c) + \sigma(c) \odot (g(z, c) + z_{1:D})`, starting at
:math:`\mu = 0, \sigma = 1`, so that each context's centre and spread are easy to learn.

Model selection: neither player's loss says how good the generator is, so early stopping watches
:meth:`ConditionalGAN.validation_loss`, by default the energy score of 16 draws per held-out
context against its held-out :math:`a` (a joint MMD² on :math:`[a, c]` is kept as
``validation="mmd"``; it fell to 3e-4 while C2ST stayed above 0.9, blind to conditional errors).
:meth:`ConditionalGAN.train_defaults` gives a constant learning rate of 1e-3, batches of 256
and a patience of 40 epochs on that score.

Over all 10 sbibm reference observations (10,000 simulations and samples per side) the tuning
above, done on observations 1-2, did not carry: the generator alone scores two_moons 0.767 and
gaussian_linear 0.641 (``benchmarks/estimators.py``; the NSF 0.566 and 0.551). A cosine decay
over 500 epochs gave 0.752 and 0.656 at five to ten times the training time, so the default
keeps the constant rate. The generator draws two_moons' thin crescents as blurred blobs joined
by a bridge of draws.

Calibration and resampling (``calibrate``, ``candidates``): training has a second stage
(:meth:`ConditionalGAN.training_stages`). The generator is frozen and the critic alone learns
to tell real pairs from generated ones by the logistic loss, with early stopping on held-out
rows; since both kinds of pair share the law of :math:`c`, the optimal critic is
:math:`D^*(a, c) = \log p(a \mid c) / q(a \mid c)`, :math:`q` the generator's law (the density
ratio trick of discriminator rejection sampling, Azadi et al. 2019, and of ratio estimation).
:meth:`GANDistribution.sample` then keeps, of ``candidates`` :math:`K` generator draws at a
context, one picked with probability :math:`\propto e^{D(a_k, c)}` (sampling-importance
resampling): independent draws whose law tends to :math:`p(a \mid c)` as :math:`K` grows, in
so far as the critic is the ratio. At the end of the game the critic's held-out logistic loss
was 1.378 (log 4 = 1.386: it could no longer tell); trained alone it fell to 0.80 within 60
epochs, so the generator was still far from the data. On two_moons (observations 1-3, 3,000
samples per side, the MLP classifier) the generator's draws score C2ST 0.699 and resampled
0.548 (``candidates`` 8). On the ring of 8 Gaussians below, resampling put 99.9 % of draws on a
mode (the generator 77.6 %) and took C2ST against the truth from 0.758 to 0.536 with 8
candidates, but the modes' shares strayed (318 to 623 draws of an expected 500): the critic's
ratio is estimated, and its errors at a sharp mode's centre move whole modes. An average of
the critic's weights (``ema_decay`` 0.995 in the calibration stage) and 32 candidates kept every
share inside its binomial interval (439 to 531) at C2ST 0.500; on two_moons they scored 0.547.
A smaller learning rate (1e-4 or 3e-4) also evened the shares but cost two_moons 0.03.

References:
    Goodfellow et al. (2014), "Generative adversarial nets", arXiv:1406.2661.
    Mirza & Osindero (2014), "Conditional generative adversarial nets", arXiv:1411.1784.
    Gulrajani et al. (2017), "Improved training of Wasserstein GANs", arXiv:1704.00028.
    Heusel et al. (2017), "GANs trained by a two time-scale update rule converge to a local
    Nash equilibrium", arXiv:1706.08500.
    Mescheder, Geiger & Nowozin (2018), "Which training methods for GANs do actually
    converge?", arXiv:1801.04406.
    Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation",
    JASA 102(477), 359-378.
    Pacchiardi & Dutta (2022), "Likelihood-free inference with generative neural networks via
    scoring rule minimization", arXiv:2205.15784.
    Azadi et al. (2019), "Discriminator rejection sampling", arXiv:1810.06758.

Example:
    >>> import torch
    >>> model = ConditionalGAN(2, 3)
    >>> model(torch.zeros(4, 3)).sample((5,)).shape
    torch.Size([5, 4, 2])
    >>> model.loss(torch.zeros(6, 2), torch.zeros(6, 3)).shape
    torch.Size([6])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from sbitk.errors import SbitkError
from sbitk.models.base import StandardizedEstimator
from sbitk.models.contract import NONE
from sbitk.models.divergences import energy_score, median_bandwidth, mmd
from sbitk.nn.mlp import ACTIVATIONS, MLP

#: The objectives :class:`ConditionalGAN` trains with.
OBJECTIVES = ("non-saturating", "wgan-gp")
#: How the two players' updates are arranged (see :meth:`ConditionalGAN.loss`).
UPDATES = ("alternating", "simultaneous")
#: What :meth:`ConditionalGAN.validation_loss` measures.
VALIDATIONS = ("energy", "mmd")
#: Default critic steps per generator step with alternating updates (Gulrajani et al.'s 5 for
#: WGAN-GP).
DEFAULT_CRITIC_STEPS = {"non-saturating": 1, "wgan-gp": 5}
#: Training settings of :meth:`ConditionalGAN.train_defaults`.
TRAIN_DEFAULTS = {"schedule": "constant", "learning_rate": 1e-3, "batch_size": 256, "patience": 40}
#: The training stages (:meth:`ConditionalGAN.training_stages`): the adversarial game, then
#: the critic alone, trained to the density ratio of the data over the frozen generator.
ADVERSARIAL, CALIBRATION = "adversarial", "calibration"
#: Training settings of the calibration stage (:meth:`ConditionalGAN.set_stage`).
CALIBRATION_DEFAULTS = {
    "schedule": "constant",
    "learning_rate": 1e-3,
    "patience": 20,
    "ema_decay": 0.995,
}
#: Largest number of candidate rows a calibrated GAN's sampler holds at once.
CANDIDATE_ROWS = 2**16
#: Default weight of each objective's gradient penalty: R1's :math:`\gamma` and WGAN-GP's
#: :math:`\lambda` (Gulrajani et al.'s value).
DEFAULT_PENALTY = {"non-saturating": 0.1, "wgan-gp": 10.0}


@dataclass(frozen=True)
class GANConfig:
    """Constructor arguments of :class:`ConditionalGAN` (all JSON-serialisable)."""

    features: int
    context: int = 0
    objective: str = "non-saturating"
    latent_features: int = 8
    hidden_features: tuple[int, ...] = (128, 128, 128)
    critic_hidden_features: tuple[int, ...] = (256, 256, 256)
    activation: str = "relu"
    critic_lr_scale: float = 4.0
    gradient_penalty: float = 0.1
    validation_rows: int = 2000
    validation_seed: int = 0
    validation_bandwidths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    updates: str = "alternating"
    critic_steps: int = 1
    location_scale: bool = True
    energy_weight: float = 1.0
    validation: str = "energy"
    validation_draws: int = 16
    energy_draws: int = 2
    candidates: int = 32
    calibrate: bool = True


def _expand(c: Tensor | None, m: int) -> Tensor | None:
    """The context (*, C) as an expanded view (m, *, C), or None."""
    return None if c is None else c.expand(m, *c.shape)


class _Critic(nn.Module):
    """The critic's scores ``(*,)`` of pairs ``a`` (*, D) and ``c`` (*, C) or None."""

    def __init__(self, features: int, context: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.net = MLP(features + context, 1, hidden, activation)

    def forward(self, a: Tensor, c: Tensor | None) -> Tensor:
        return self.net.forward_pair(a, c).squeeze(-1)


class GANDistribution:
    """Samples of a GAN's generator at fixed contexts; no ``log_prob`` (density kind none).

    Args:
        model: The :class:`ConditionalGAN`.
        context: The standardised contexts (*batch, C), or ``None`` (unconditional).
    """

    def __init__(self, model: ConditionalGAN, context: Tensor | None):
        self.model, self.context = model, context
        self.batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.event_shape = torch.Size((model.config.features,))

    def rsample(self, shape: Sequence[int] = (), generator: torch.Generator | None = None):
        """Draws (*shape, *batch_shape, D), differentiable in the generator's parameters."""
        shape = torch.Size(shape)
        z = self.model.latent(shape + self.batch_shape, generator)
        c = self.context
        if c is not None:  # an expanded view: the context products are made once per context
            c = c.expand(*shape, *c.shape)
        return self.model.inputs.inverse(self.model.generate(z, c))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), generator: torch.Generator | None = None):
        r"""Draws (*shape, *batch_shape, D) without gradients.

        Once the critic is calibrated, each draw is the one of ``candidates`` generator draws
        at its context picked with probability proportional to :math:`e^{D(a, c)}`, the
        critic's estimate of :math:`p(a \mid c) / q(a \mid c)` (sampling-importance
        resampling): independent draws, whose law tends to :math:`p(a \mid c)` as the number
        of candidates grows, in so far as the critic is the ratio.
        """
        model, k = self.model, self.model.config.candidates
        if k == 1 or not bool(model.calibrated):
            return self.rsample(shape, generator)
        shape = torch.Size(shape)
        n, per_draw = shape.numel(), k * max(self.batch_shape.numel(), 1)
        step = max(1, CANDIDATE_ROWS // per_draw)  # draws per pass: K candidates each
        if n == 0:
            return self.rsample(shape, generator)
        parts = [self._resample(min(step, n - i), generator) for i in range(0, n, step)]
        return torch.cat(parts).reshape(*shape, *self.batch_shape, -1)

    def _resample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` draws (n, *batch, D), each one of K candidates picked by the critic (by the
        Gumbel-max trick: the argmax of logit plus Gumbel noise)."""
        model, k = self.model, self.model.config.candidates
        z = model.latent((k, n, *self.batch_shape), generator)
        c = None if self.context is None else self.context.expand(k, n, *self.context.shape)
        a = model.generate(z, c)  # (K, n, *batch, D), standardised
        logits = model.critic(a, c)
        where = logits.device if generator is None else generator.device
        u = torch.rand(logits.shape, generator=generator, device=where, dtype=logits.dtype)
        pick = (logits - torch.log(-torch.log(u.clamp_min(1e-30))).to(logits.device)).argmax(0)
        chosen = a.gather(0, pick[None, ..., None].expand(1, *a.shape[1:])).squeeze(0)
        return model.inputs.inverse(chosen)


class ConditionalGAN(StandardizedEstimator):
    r"""A conditional generative adversarial network: samples of :math:`q(a \mid c)`, no density.

    One class covers the unconditional GAN (``context=0``) and the conditional one, which feeds
    the standardised context to both networks. See the module docstring for the objectives.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        objective: ``"non-saturating"`` (with R1) or ``"wgan-gp"``; with simultaneous
            updates WGAN-GP wandered between modes in our runs on a ring of Gaussians.
        updates: ``"alternating"`` (``critic_steps`` critic steps, then one generator step)
            or ``"simultaneous"`` (both players every step); see the module docstring.
        critic_steps: Critic steps per generator step when alternating; ``None``: 1 for the
            non-saturating objective, 5 for WGAN-GP.
        location_scale: Put the generator's output through a per-context location and scale.
        energy_weight: Weight :math:`\lambda` of the energy score in the generator's loss (the
            hybrid objective); 0: purely adversarial.
        latent_features: Size L of the generator's Gaussian noise; ``None``: max(8, D). With
            L < D the draws lie on an L-dimensional manifold, which a classifier tells from a
            D-dimensional density at once.
        hidden_features: Widths of the generator MLP's hidden layers.
        critic_hidden_features: Widths of the critic MLP's hidden layers (wider than the
            generator's by default; see the module docstring).
        activation: Activation of both networks (a name in :data:`sbitk.nn.mlp.ACTIVATIONS`).
        critic_lr_scale: The critic's learning rate over the generator's (two time-scale rule).
        gradient_penalty: R1's :math:`\gamma` or WGAN-GP's :math:`\lambda`; ``None``:
            :data:`DEFAULT_PENALTY` of the objective.
        validation_rows: At most this many held-out rows enter :meth:`validation_loss`.
        validation_seed: Seeds the noise of :meth:`validation_loss` (common random numbers).
        validation_bandwidths: Kernel bandwidths of the MMD validation, as multiples of
            the median distance; the smaller ones see narrow modes the median misses.
        validation: What :meth:`validation_loss` measures: ``"energy"`` or ``"mmd"``.
        validation_draws: Draws per held-out context of the energy-score validation.
        energy_draws: Draws per row of the energy score in the generator's loss (M >= 2).
        candidates: Generator draws per sample that a calibrated critic resamples from
            (1: the generator's own draws).
        calibrate: Train the critic alone to the density ratio after the game (a second
            training stage), and resample by it when sampling.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = GANConfig
    density: ClassVar[str] = NONE

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        objective: str = "non-saturating",
        latent_features: int | None = None,
        hidden_features: Sequence[int] = (128, 128, 128),
        critic_hidden_features: Sequence[int] = (256, 256, 256),
        activation: str = "relu",
        critic_lr_scale: float = 4.0,
        gradient_penalty: float | None = None,
        validation_rows: int = 2000,
        validation_seed: int = 0,
        validation_bandwidths: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
        updates: str = "alternating",
        critic_steps: int | None = None,
        location_scale: bool = True,
        energy_weight: float = 1.0,
        validation: str = "energy",
        validation_draws: int = 16,
        energy_draws: int = 2,
        candidates: int = 32,
        calibrate: bool = True,
    ):
        super().__init__(features, context)
        if latent_features is None:
            latent_features = max(8, features)
        if features < 1 or context < 0 or latent_features < 1:
            raise SbitkError(
                f"ConditionalGAN needs features >= 1, context >= 0 and latent_features >= 1, "
                f"got {features}, {context}, {latent_features}"
            )
        if objective not in OBJECTIVES:
            raise SbitkError(
                f"ConditionalGAN: objective must be one of {OBJECTIVES}, got {objective!r}"
            )
        if activation not in ACTIVATIONS:
            raise SbitkError(
                f"ConditionalGAN: activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        for name, value, allowed in (
            ("updates", updates, UPDATES),
            ("validation", validation, VALIDATIONS),
        ):
            if value not in allowed:
                raise SbitkError(f"ConditionalGAN: {name} must be one of {allowed}, got {value!r}")
        if (critic_steps is not None and critic_steps < 1) or energy_weight < 0:
            raise SbitkError(
                "ConditionalGAN needs critic_steps >= 1 and energy_weight >= 0, got "
                f"{critic_steps}, {energy_weight}"
            )
        if validation_draws < 2 or energy_draws < 2 or candidates < 1:
            raise SbitkError(
                "ConditionalGAN needs validation_draws >= 2, energy_draws >= 2 and candidates "
                f">= 1, got {validation_draws}, {energy_draws}, {candidates}"
            )
        if gradient_penalty is None:
            gradient_penalty = DEFAULT_PENALTY[objective] if objective in OBJECTIVES else 0.0
        if critic_lr_scale <= 0 or gradient_penalty < 0 or validation_rows < 2:
            raise SbitkError(
                "ConditionalGAN needs critic_lr_scale > 0, gradient_penalty >= 0 and "
                f"validation_rows >= 2, got {critic_lr_scale}, {gradient_penalty}, "
                f"{validation_rows}"
            )
        self.config = GANConfig(
            features,
            context,
            objective,
            int(latent_features),
            tuple(int(h) for h in hidden_features),
            tuple(int(h) for h in critic_hidden_features),
            activation,
            float(critic_lr_scale),
            float(gradient_penalty),
            int(validation_rows),
            int(validation_seed),
            tuple(float(b) for b in validation_bandwidths),
            updates,
            int(DEFAULT_CRITIC_STEPS[objective] if critic_steps is None else critic_steps),
            bool(location_scale),
            float(energy_weight),
            validation,
            int(validation_draws),
            int(energy_draws),
            int(candidates),
            bool(calibrate),
        )
        cfg = self.config
        self.generator = MLP(
            cfg.latent_features + context, features, cfg.hidden_features, activation
        )
        self.critic = _Critic(features, context, cfg.critic_hidden_features, activation)
        # Location and log-scale of the output per context, zero at the start (identity).
        if not cfg.location_scale:
            self.head = None
        elif context > 0:
            self.head = MLP(context, 2 * features, cfg.hidden_features, activation)
            nn.init.zeros_(self.head.output_layer.weight)
            nn.init.zeros_(self.head.output_layer.bias)
        else:
            self.head = nn.Parameter(torch.zeros(2 * features))
        self._steps = 0  # gradient steps taken in training mode (alternating updates)
        self.stage = ADVERSARIAL
        # Whether the critic has been trained to the density ratio (the calibration stage ran):
        # only then does sampling resample by it. A buffer, so that model files keep it.
        self.register_buffer("calibrated", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the calibration stage existed have no flag: not calibrated.
        state_dict.setdefault(f"{prefix}calibrated", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's parameters: its MLP and the location-scale head, if any."""
        head = self.head
        extra = (
            []
            if head is None
            else [head]
            if isinstance(head, nn.Parameter)
            else list(head.parameters())
        )
        return list(self.generator.parameters()) + extra

    def training_stages(self) -> tuple[str, ...]:
        """The stages the training engine runs in turn: the game, then (``calibrate``) the
        critic alone, calibrated to the density ratio that sampling resamples by."""
        return (ADVERSARIAL, CALIBRATION) if self.config.calibrate else (ADVERSARIAL,)

    def set_stage(self, stage: str) -> dict:
        """Enter a stage of :meth:`training_stages`; returns its ``TrainConfig`` defaults."""
        if stage not in (ADVERSARIAL, CALIBRATION):
            raise SbitkError(f"ConditionalGAN has no training stage {stage!r}")
        self.stage = stage
        if stage == CALIBRATION:
            self.calibrated.fill_(True)
            return dict(CALIBRATION_DEFAULTS)
        return self.train_defaults()

    def optimizer_groups(self) -> list[dict]:
        """Generator at the schedule's rate, critic at ``critic_lr_scale`` times it (TTUR); in
        the calibration stage the critic alone, at the schedule's rate."""
        if self.stage == CALIBRATION:
            return [{"params": list(self.critic.parameters()), "lr_scale": 1.0}]
        return [
            {"params": self.generator_parameters(), "lr_scale": 1.0},
            {"params": list(self.critic.parameters()), "lr_scale": self.config.critic_lr_scale},
        ]

    def latent(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Gaussian noise (*shape, L) on the model's device and dtype."""
        ref = self.inputs.mean
        size = (*shape, self.config.latent_features)
        device = ref.device if generator is None else generator.device
        z = torch.randn(size, generator=generator, device=device, dtype=ref.dtype)
        return z.to(ref.device)

    def generate(self, z: Tensor, c: Tensor | None) -> Tensor:
        """Standardised samples (*, D) from noise ``z`` (*, L) and standardised ``c`` or None."""
        out = self.generator.forward_pair(z, c)
        d = self.config.features
        if d <= self.config.latent_features:  # starts near N(0, I): every mode is covered
            out = out + z[..., :d]
        if self.head is None:
            return out
        if isinstance(self.head, nn.Parameter):
            loc, log_scale = self.head[:d], self.head[d:]
        else:
            loc, log_scale = self.head(c).split(d, dim=-1)
        return loc + log_scale.clamp(-10.0, 5.0).exp() * out

    def forward(self, context: Tensor | None = None) -> GANDistribution:
        """The distribution of the modelled vector given ``context`` (*, C): batch shape (*)."""
        return GANDistribution(self, self.standardized_context(context))

    def phase(self) -> str:
        """Which player the next training-mode :meth:`loss` updates: ``"critic"``,
        ``"generator"`` or ``"both"`` (simultaneous updates, or evaluation mode)."""
        cfg = self.config
        if cfg.updates == "simultaneous" or not self.training or not torch.is_grad_enabled():
            return "both"
        return "critic" if self._steps % (cfg.critic_steps + 1) < cfg.critic_steps else "generator"

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        r"""The per-row loss (B,) of the player(s) this step updates.

        With ``updates="alternating"`` in training mode, a cycle of ``critic_steps + 1`` calls
        returns :math:`\ell_D` ``critic_steps`` times (the generator's draws made without
        gradient) and then :math:`\ell_G` once (the critic's parameters detached), so only one
        player gets a gradient each step and the optimiser, which skips parameters without one,
        updates only that player. Otherwise (simultaneous updates, evaluation mode, no grad) it
        returns :math:`\ell_D + \ell_G`, each network getting only its own objective's
        gradient. With ``energy_weight`` :math:`\lambda > 0`, :math:`\ell_G` gains
        :math:`\lambda\,\widehat{\mathrm{ES}}` from ``energy_draws`` draws per row.
        """
        if self.stage == CALIBRATION:
            return self._ratio_loss(inputs, context)
        phase = self.phase()
        if self.training and torch.is_grad_enabled():
            self._steps += 1
        a, c = self.inputs(inputs), self.standardized_context(context)
        total = a.new_zeros(a.shape[:-1])
        if phase in ("critic", "both"):
            if phase == "critic":
                with torch.no_grad():
                    fake = self.generate(self.latent(a.shape[:-1]), c)
            else:
                fake = self.generate(self.latent(a.shape[:-1]), c)
            total = total + self._critic_loss(a, fake.detach(), c)
        if phase in ("generator", "both"):
            if phase == "generator":
                fake = self.generate(self.latent(a.shape[:-1]), c)
            total = total + self._generator_loss(a, fake, c)
        return total

    def _ratio_loss(
        self, inputs: Tensor, context: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """The critic's logistic loss (B,) on real rows against draws of the frozen generator."""
        a, c = self.inputs(inputs), self.standardized_context(context)
        with torch.no_grad():
            fake = self.generate(self.latent(a.shape[:-1], generator), c)
        return F.softplus(-self.critic(a, c)) + F.softplus(self.critic(fake, c))

    def _critic_loss(self, a: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        real, fake_d = self.critic(a, c), self.critic(fake, c)
        if self.config.objective == "non-saturating":
            return F.softplus(-real) + F.softplus(fake_d) + self._r1_penalty(a, c)
        return fake_d - real + self._gradient_penalty(a, fake, c)

    def _generator_loss(self, a: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        frozen |= dict(self.critic.named_buffers())
        on_fake = functional_call(self.critic, frozen, (fake, c))  # no gradient to the critic
        loss = F.softplus(-on_fake) if self.config.objective == "non-saturating" else -on_fake
        if self.config.energy_weight > 0:
            m = self.config.energy_draws
            more = self.generate(self.latent((m - 1, *a.shape[:-1])), _expand(c, m - 1))
            score = energy_score(torch.cat([fake.unsqueeze(0), more]), a)
            loss = loss + self.config.energy_weight * score
        return loss

    def _r1_penalty(self, real: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\tfrac{\\gamma}{2} \\lVert \\nabla_a D(a, c) \\rVert^2` per row."""
        if self.config.gradient_penalty == 0:
            return real.new_zeros(real.shape[:-1])
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.critic(x, c).sum(), x, create_graph=create)
        return 0.5 * self.config.gradient_penalty * grad.square().sum(-1)

    def _gradient_penalty(self, real: Tensor, fake: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\lambda (\\lVert \\nabla_{\\hat a} D(\\hat a, c) \\rVert - 1)^2` per row."""
        if self.config.gradient_penalty == 0:
            return real.new_zeros(real.shape[:-1])
        eps = torch.rand(*real.shape[:-1], 1, device=real.device, dtype=real.dtype)
        create = torch.is_grad_enabled()
        with torch.enable_grad():  # also under no_grad, where only its value is wanted
            mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.critic(mix, c).sum(), mix, create_graph=create)
        return self.config.gradient_penalty * (grad.norm(dim=-1) - 1).square()

    @torch.no_grad()
    def validation_loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        r"""A scalar for model selection on held-out rows: an energy score or an MMD².

        On the first ``validation_rows`` rows, with standardised :math:`a_i` and :math:`c_i`:

        * ``validation="energy"`` (the default): the mean over rows of the
          :func:`~sbitk.models.divergences.energy_score` of ``validation_draws`` draws
          :math:`G(z_{ij}, c_i)` against :math:`a_i`. A strictly proper scoring rule, its
          expectation is smallest for the true conditional, so it sees errors of
          :math:`q(a \mid c)` at each :math:`c` (its sd, its mean) that a joint comparison
          hides behind the spread of :math:`c`.
        * ``validation="mmd"``: the unbiased :func:`~sbitk.models.divergences.mmd` between
          the joint vectors :math:`u_i = [a_i, c_i]` and :math:`v_i = [G(z_i, c_i), c_i]`, with
          a Gaussian kernel whose bandwidth is the median distance between the :math:`u_i` times
          each of ``validation_bandwidths`` (their kernels averaged).

        The noise :math:`z` comes from ``validation_seed``, so two calls with the same weights
        agree and epochs are compared with common random numbers.
        """
        n = min(inputs.shape[0], self.config.validation_rows)
        seeded = torch.Generator().manual_seed(self.config.validation_seed)
        if self.stage == CALIBRATION:
            cut = None if context is None else context[:n]
            return self._ratio_loss(inputs[:n], cut, seeded).mean()
        a = self.inputs(inputs[:n])
        c = None if context is None else self.standardized_context(context[:n])
        if self.config.validation == "energy":
            m = self.config.validation_draws
            z = self.latent((m, n), seeded)
            fake = self.generate(z, None if c is None else c.expand(m, *c.shape))
            return energy_score(fake, a).mean()
        fake = self.generate(self.latent((n,), seeded), c)
        real_pairs = a if c is None else torch.cat([a, c], -1)
        fake_pairs = fake if c is None else torch.cat([fake, c], -1)
        scales = torch.tensor(self.config.validation_bandwidths, dtype=a.dtype, device=a.device)
        return mmd(real_pairs, fake_pairs, bandwidth=median_bandwidth(real_pairs) * scales)

    @classmethod
    def train_defaults(cls) -> dict:
        """Training settings for unset ``TrainConfig`` fields (see the module docstring)."""
        return dict(TRAIN_DEFAULTS)


__all__ = ["OBJECTIVES", "ConditionalGAN", "GANConfig", "GANDistribution"]
