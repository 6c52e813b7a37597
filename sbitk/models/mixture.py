r"""Mixture density network: a Gaussian mixture whose parameters are a network of the context.

For a (standardised) target :math:`z = (a - m) / s` and a context :math:`c`, a perceptron of the
standardised context gives, for each of K components, a weight logit :math:`\eta_k(c)`, a mean
:math:`\mu_k(c)` and a lower-triangular Cholesky factor :math:`L_k(c)` of the covariance
:math:`\Sigma_k = L_k L_k^\top` (a softplus keeps its diagonal positive):

.. math::
    q(a \mid c) = \Big(\prod_i s_i\Big)^{-1} \sum_{k=1}^{K} \pi_k(c)\,
    \mathcal{N}\big(z; \mu_k(c), L_k(c) L_k(c)^\top\big), \qquad
    \pi_k = \operatorname{softmax}(\eta)_k,

evaluated by log-sum-exp over the components, with
:math:`\log \mathcal{N}(z; \mu, L L^\top) = -\tfrac12 \|L^{-1}(z - \mu)\|^2 - \sum_i \log L_{ii}
- \tfrac D2 \log 2\pi`. The loss is the negative log density, :math:`\ell(a \mid c) =
-\log q(a \mid c)`. Sampling picks a component by its weight, then draws
:math:`z = \mu_k + L_k \epsilon`, :math:`\epsilon \sim \mathcal{N}(0, I)`.

References:
    Bishop, "Mixture density networks", Technical report NCRG/94/004, Aston University (1994).

Example:
    >>> import torch
    >>> model = MixtureDensityNetwork(2, 3, components=4, hidden_features=(16,))
    >>> dist = model(torch.zeros(5, 3))
    >>> dist.sample((7,)).shape, dist.log_prob(torch.zeros(5, 2)).shape
    (torch.Size([7, 5, 2]), torch.Size([5]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.base import StandardizedEstimator, check_inputs
from sbitk.models.contract import EXACT
from sbitk.nn.devices import random_like
from sbitk.nn.mlp import ACTIVATIONS, MLP
from sbitk.nn.standardize import Standardize


@dataclasses.dataclass(frozen=True)
class MDNConfig:
    """Options of :class:`MixtureDensityNetwork`.

    Args:
        features, context: Sizes D of the modelled vector and C of the context.
        components: Number K of Gaussian components. Two_moons' crescents need many: with
            NPE at 10,000 simulations the held-out log q(θ | x) was 3.03 with 10 components
            and 3.35 with 20 (the spline flow: 3.47). Where the posterior is one Gaussian,
            many overfit: on gaussian_linear (10-D) it was 0.50, 0.46 (hidden (64, 64)) and
            0.38 with 5, 10 and 20 components, 0.65 with one (``gaussian``).
        hidden_features: Hidden widths of the perceptron of the context ((64, 64) with 20
            components: 3.25 on the same measure).
        activation: Its activation (a name in :data:`sbitk.nn.mlp.ACTIVATIONS`).
        init_scale: Standard deviation of each component at initialisation, in standardised
            units; the means start at standard normal draws, so the components start spread
            over the bulk of the data.
        min_scale: Floor added to the diagonal of each Cholesky factor (standardised units),
            which keeps every covariance invertible.
    """

    features: int
    context: int = 0
    components: int = 20
    hidden_features: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    init_scale: float = 0.5
    min_scale: float = 1e-3


class MixtureDistribution:
    """A Gaussian mixture in standardised coordinates, batched over contexts, with its
    standardisation undone: the density is of the raw vector.

    ``sample((n,))`` gives ``(n, *batch_shape, D)``; ``log_prob(a)`` takes a of shape
    ``(..., *batch_shape, D)`` and gives ``(..., *batch_shape)``.

    Args:
        logits: Component logits (*batch, K).
        loc: Component means (*batch, K, D), standardised.
        scale_tril: Lower-triangular Cholesky factors (*batch, K, D, D), standardised.
        standardize: The z-scoring of the modelled vector.
    """

    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, scale_tril: Tensor, standardize: Standardize):
        self.log_weights = torch.log_softmax(logits, -1)
        self.loc, self.scale_tril, self.standardize = loc, scale_tril, standardize
        self.batch_shape = loc.shape[:-2]
        self.event_shape = loc.shape[-1:]

    @property
    def features(self) -> int:
        """Size D of the modelled vector."""
        return self.loc.shape[-1]

    def log_prob(self, a: Tensor) -> Tensor:
        """Log density of ``a`` (..., *batch_shape, D): shape (..., *batch_shape)."""
        d = self.features
        check_inputs(a, d, self.batch_shape)
        z = self.standardize(a).unsqueeze(-2) - self.loc  # (..., *batch, K, D)
        y = torch.linalg.solve_triangular(self.scale_tril, z.unsqueeze(-1), upper=False)
        log_diag = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_normal = -0.5 * y.squeeze(-1).square().sum(-1) - log_diag
        log_normal = log_normal - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(self.log_weights + log_normal, -1) + self.standardize.log_abs_det()

    @torch.no_grad()
    def sample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Samples ``(*shape, *batch_shape, D)``: a component by its weight, then its Gaussian."""
        full = torch.Size(shape) + self.batch_shape
        k = sample_component(self.log_weights, full, generator)  # (*full,)
        d = self.features
        loc = self.loc.expand(*full, -1, d).gather(-2, k[..., None, None].expand(*full, 1, d))
        tril = self.scale_tril.expand(*full, -1, d, d)
        tril = tril.gather(-3, k[..., None, None, None].expand(*full, 1, d, d)).squeeze(-3)
        eps = standard_normal((*full, d), self.loc, generator)
        z = loc.squeeze(-2) + (tril @ eps.unsqueeze(-1)).squeeze(-1)
        return self.standardize.inverse(z)

    def __repr__(self) -> str:
        k = self.loc.shape[-2]
        return (
            f"MixtureDistribution(batch_shape={tuple(self.batch_shape)}, components={k}, "
            f"features={self.features})"
        )


def standard_normal(
    shape: Sequence[int], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Standard normal draws of ``shape`` with the dtype and device of ``like``; a generator
    draws on its own device (one on ``like``'s device avoids the copy)."""
    return random_like(torch.randn, shape, like, generator)


def sample_component(
    log_weights: Tensor, shape: Sequence[int], generator: torch.Generator | None = None
) -> Tensor:
    """Indices (*shape) drawn from the categorical distributions ``log_weights`` (*, K) that
    broadcast to ``shape`` (the Gumbel-max trick, batched over any leading shape)."""
    full = (*shape, log_weights.shape[-1])
    device = log_weights.device if generator is None else generator.device
    u = torch.rand(full, generator=generator, dtype=log_weights.dtype, device=device)
    gumbel = -torch.log(-torch.log(u.to(log_weights.device)))  # u = 0 gives -inf: never picked
    return torch.argmax(log_weights + gumbel, -1)


def inverse_softplus(y: float) -> float:
    """The x with softplus(x) = y > 0."""
    return y + math.log(-math.expm1(-y))


class MixtureDensityNetwork(StandardizedEstimator):
    """Mixture density network: K full-covariance Gaussians given a context (``mdn``).

    See the module docstring for the model. The perceptron reads the standardised context; the
    mixture lives in standardised coordinates of the modelled vector, and the log-determinant of
    that standardisation is added, so ``log_prob`` is the density of the raw vector.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: unconditional; the mixture's parameters are then
            learnt directly).
        **options: Further fields of :class:`MDNConfig`.

    References:
        Bishop, "Mixture density networks", Technical report NCRG/94/004, Aston University
        (1994).

    Example:
        >>> import torch
        >>> model = MixtureDensityNetwork(1, components=3)
        >>> model.loss(torch.randn(6, 1)).shape
        torch.Size([6])
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = MDNConfig
    density: ClassVar[str] = EXACT

    @classmethod
    def train_defaults(cls) -> dict:
        """Training settings left unset: more patience than a flow's. A mixture's validation
        loss is noisy while components move between modes, and the flows' plateau schedule
        then decays the rate too early: on two_moons (NPE, 10,000 simulations) the held-out
        log q(θ | x) was 3.25 after 63 epochs with them and 3.35 after 155 with these."""
        return {"lr_patience": 10, "patience": 25}

    def __init__(self, features: int, context: int = 0, **options):
        super().__init__(int(features), int(context))
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        try:
            cfg = MDNConfig(int(features), int(context), **options)
        except TypeError as exc:
            raise SbitkError(f"MixtureDensityNetwork: {exc}") from None
        _check(cfg)
        self.config = cfg
        d, k = cfg.features, cfg.components
        # output layout: K logits | K·D means | K·D raw diagonals | K·D(D-1)/2 off-diagonals
        self._sizes = (k, k * d, k * d, k * d * (d - 1) // 2)
        out = sum(self._sizes)
        bias = torch.cat(
            [
                torch.zeros(k),
                torch.randn(k * d),  # spread the means over the standardised bulk
                torch.full((k * d,), inverse_softplus(cfg.init_scale - cfg.min_scale)),
                torch.zeros(self._sizes[3]),
            ]
        )
        if cfg.context:
            self.net = MLP(cfg.context, out, cfg.hidden_features, cfg.activation)
            with torch.no_grad():
                self.net.output_layer.bias.copy_(bias)
                self.net.output_layer.weight.mul_(0.1)  # start close to the spread-out mixture
        else:
            self.params = nn.Parameter(bias)
        rows, cols = torch.tril_indices(d, d, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def mixture(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (*, K), means (*, K, D) and Cholesky factors (*, K, D, D), standardised,
        for the raw ``context`` (*, C) (None when unconditional)."""
        c = self.standardized_context(context)
        h = self.params if c is None else self.net(c)
        d, k = self.config.features, self.config.components
        logits, loc, diag, off = h.split(self._sizes, -1)
        loc = loc.unflatten(-1, (k, d))
        diag = F.softplus(diag.unflatten(-1, (k, d))) + self.config.min_scale
        tril = torch.diag_embed(diag)
        if d > 1:
            tril[..., self._rows, self._cols] = off.unflatten(-1, (k, -1))
        return logits, loc, tril

    def forward(self, context: Tensor | None = None) -> MixtureDistribution:
        """The distribution :math:`q(a \\mid c)`, batched over the context's leading shape."""
        return MixtureDistribution(*self.mixture(context), self.inputs)

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative log density of ``inputs`` (B, D) given ``context`` (B, C): shape (B,)."""
        return -self(context).log_prob(inputs)


def _check(cfg: MDNConfig) -> None:
    problems = []
    if cfg.components < 1:
        problems.append(f"components >= 1 (got {cfg.components})")
    if min(cfg.hidden_features, default=1) < 1:
        problems.append(f"positive hidden_features (got {cfg.hidden_features})")
    if cfg.activation not in ACTIVATIONS:
        problems.append(f"activation among {sorted(ACTIVATIONS)} (got {cfg.activation!r})")
    if not 0 < cfg.min_scale < cfg.init_scale:
        problems.append(f"0 < min_scale < init_scale (got {cfg.min_scale} and {cfg.init_scale})")
    if problems:
        raise SbitkError("MixtureDensityNetwork: expected " + "; ".join(problems))


__all__ = [
    "MDNConfig",
    "MixtureDensityNetwork",
    "MixtureDistribution",
    "inverse_softplus",
    "sample_component",
    "standard_normal",
]
