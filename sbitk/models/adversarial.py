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

The training engine makes one backward pass and one optimiser step per batch, so
:meth:`ConditionalGAN.loss` returns :math:`\ell_D + \ell_G` arranged so that each network gets
only its own objective's gradient: :math:`\ell_D` sees the generated :math:`\tilde a` detached,
and :math:`\ell_G` evaluates the critic with detached parameters. That is simultaneous gradient
descent on the two players; the critic learns faster through its own parameter group
(:meth:`ConditionalGAN.optimizer_groups`, the two time-scale update rule of Heusel et al. 2017).
Since neither loss says how good the generator is, early stopping watches
:meth:`ConditionalGAN.validation_loss`, an MMD² between held-out and generated pairs. The
generator adds its first D noise coordinates to its output, so it starts near
:math:`\mathcal{N}(0, I)` in standardised units, covering every mode, and sharpens from there.

References:
    Goodfellow et al. (2014), "Generative adversarial nets", arXiv:1406.2661.
    Mirza & Osindero (2014), "Conditional generative adversarial nets", arXiv:1411.1784.
    Gulrajani et al. (2017), "Improved training of Wasserstein GANs", arXiv:1704.00028.
    Heusel et al. (2017), "GANs trained by a two time-scale update rule converge to a local
    Nash equilibrium", arXiv:1706.08500.
    Mescheder, Geiger & Nowozin (2018), "Which training methods for GANs do actually
    converge?", arXiv:1801.04406.

Example:
    >>> import torch
    >>> model = ConditionalGAN(2, 3)
    >>> model(torch.zeros(4, 3)).sample((5,)).shape
    torch.Size([5, 4, 2])
    >>> model.loss(torch.zeros(6, 2), torch.zeros(6, 3)).shape
    torch.Size([6])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from sbitk.errors import SbitkError
from sbitk.models.contract import NONE
from sbitk.models.divergences import median_bandwidth, mmd
from sbitk.nn.mlp import ACTIVATIONS, MLP
from sbitk.nn.standardize import Standardize

#: The objectives :class:`ConditionalGAN` trains with.
OBJECTIVES = ("non-saturating", "wgan-gp")
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
    critic_hidden_features: tuple[int, ...] = (128, 128, 128)
    activation: str = "relu"
    critic_lr_scale: float = 4.0
    gradient_penalty: float = 0.1
    validation_rows: int = 2000
    validation_seed: int = 0
    validation_bandwidths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)


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
        return self.model.input_norm.inverse(self.model.generate(z, c))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), generator: torch.Generator | None = None):
        """Draws (*shape, *batch_shape, D) without gradients."""
        return self.rsample(shape, generator)


class ConditionalGAN(nn.Module):
    r"""A conditional generative adversarial network: samples of :math:`q(a \mid c)`, no density.

    One class covers the unconditional GAN (``context=0``) and the conditional one, which feeds
    the standardised context to both networks. See the module docstring for the objectives.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional).
        objective: ``"non-saturating"`` (with R1) or ``"wgan-gp"``; with simultaneous
            updates WGAN-GP wandered between modes in our runs on a ring of Gaussians.
        latent_features: Size L of the generator's Gaussian noise.
        hidden_features: Widths of the generator MLP's hidden layers.
        critic_hidden_features: Widths of the critic MLP's hidden layers.
        activation: Activation of both networks (a name in :data:`sbitk.nn.mlp.ACTIVATIONS`).
        critic_lr_scale: The critic's learning rate over the generator's (two time-scale rule).
        gradient_penalty: R1's :math:`\gamma` or WGAN-GP's :math:`\lambda`; ``None``:
            :data:`DEFAULT_PENALTY` of the objective.
        validation_rows: At most this many held-out rows enter :meth:`validation_loss`.
        validation_seed: Seeds the noise of :meth:`validation_loss` (common random numbers).
        validation_bandwidths: Kernel bandwidths of :meth:`validation_loss`, as multiples of
            the median distance; the smaller ones see narrow modes the median misses.
    """

    density: ClassVar[str] = NONE

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        objective: str = "non-saturating",
        latent_features: int = 8,
        hidden_features: Sequence[int] = (128, 128, 128),
        critic_hidden_features: Sequence[int] = (128, 128, 128),
        activation: str = "relu",
        critic_lr_scale: float = 4.0,
        gradient_penalty: float | None = None,
        validation_rows: int = 2000,
        validation_seed: int = 0,
        validation_bandwidths: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
    ):
        super().__init__()
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
        )
        cfg = self.config
        self.generator = MLP(
            cfg.latent_features + context, features, cfg.hidden_features, activation
        )
        self.critic = _Critic(features, context, cfg.critic_hidden_features, activation)
        self.input_norm = Standardize(features)
        self.context_norm = Standardize(context) if context > 0 else None

    @classmethod
    def from_config(cls, config: Mapping) -> ConditionalGAN:
        cfg = dict(config)
        return cls(cfg.pop("features"), cfg.pop("context", 0), **cfg)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> None:
        """Set the z-scoring statistics of inputs and context from training rows."""
        self.input_norm.fit(inputs)
        if self.context_norm is not None and context is not None:
            self.context_norm.fit(context)

    def optimizer_groups(self) -> list[dict]:
        """Generator at the schedule's rate, critic at ``critic_lr_scale`` times it (TTUR)."""
        return [
            {"params": list(self.generator.parameters()), "lr_scale": 1.0},
            {"params": list(self.critic.parameters()), "lr_scale": self.config.critic_lr_scale},
        ]

    def latent(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Gaussian noise (*shape, L) on the model's device and dtype."""
        ref = self.input_norm.mean
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
        return out

    def _context(self, context: Tensor | None) -> Tensor | None:
        if self.context_norm is None:
            return None
        if context is None:
            raise SbitkError("this estimator is conditional: pass a context")
        return self.context_norm(context)

    def forward(self, context: Tensor | None = None) -> GANDistribution:
        """The distribution of the modelled vector given ``context`` (*, C): batch shape (*)."""
        return GANDistribution(self, self._context(context))

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Critic plus generator loss per row, :math:`\ell_D + \ell_G`, shape (B,).

        Each network's gradient is that of its own objective only (see the module docstring).
        """
        a, c = self.input_norm(inputs), self._context(context)
        fake = self.generate(self.latent(a.shape[:-1]), c)
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        frozen |= dict(self.critic.named_buffers())
        on_fake = functional_call(self.critic, frozen, (fake, c))  # no gradient to the critic
        real, fake_d = self.critic(a, c), self.critic(fake.detach(), c)
        if self.config.objective == "non-saturating":
            penalty = self._r1_penalty(a, c)
            return F.softplus(-real) + F.softplus(fake_d) + penalty + F.softplus(-on_fake)
        return fake_d - real + self._gradient_penalty(a, fake.detach(), c) - on_fake

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
        r"""MMD² between held-out pairs and generated ones, a scalar for model selection.

        On the first ``validation_rows`` rows, with standardised joint vectors
        :math:`u_i = [a_i, c_i]` and :math:`v_i = [G(z_i, c_i), c_i]`, this is the unbiased
        :func:`~sbitk.models.divergences.mmd` with a Gaussian kernel whose bandwidth is the
        median distance between the :math:`u_i` times each of ``validation_bandwidths`` (their
        kernels averaged). The noise :math:`z_i` comes from
        ``validation_seed``, so two calls with the same weights agree and epochs are compared
        with common random numbers.
        """
        n = min(inputs.shape[0], self.config.validation_rows)
        a = self.input_norm(inputs[:n])
        c = None if context is None else self._context(context[:n])
        seeded = torch.Generator().manual_seed(self.config.validation_seed)
        fake = self.generate(self.latent((n,), seeded), c)
        real_pairs = a if c is None else torch.cat([a, c], -1)
        fake_pairs = fake if c is None else torch.cat([fake, c], -1)
        scales = torch.tensor(self.config.validation_bandwidths, dtype=a.dtype, device=a.device)
        return mmd(real_pairs, fake_pairs, bandwidth=median_bandwidth(real_pairs) * scales)


__all__ = ["OBJECTIVES", "ConditionalGAN", "GANConfig", "GANDistribution"]
