r"""Ratio estimators: classifiers of (x, θ) pairs whose logit is the likelihood-to-evidence ratio.

A network :math:`d(x, \theta)` of the standardised pair is trained to tell pairs drawn jointly,
:math:`(x, \theta) \sim p(x \mid \theta)\,p(\theta)`, from pairs drawn apart,
:math:`x \sim p(x)`, :math:`\theta \sim p(\theta)`. At the optimum its logit is

.. math::
    d(x, \theta) = \log r(x, \theta) + c(x), \qquad r(x, \theta) = \frac{p(x \mid \theta)}{p(x)},

so :math:`\log p(\theta) + \sum_t d(x_t, \theta)` is the log posterior of i.i.d. trials
:math:`x_{1:T}` up to a constant in θ: what NLE's MCMC samples. In sbitk's contract a ratio
estimator plays the likelihood role (inputs x, context θ) with the density kind
:data:`~sbitk.models.contract.RATIO`; it draws no x.

Within a batch of B joint pairs :math:`(x_i, \theta_i)`, the pairs drawn apart are the same x with
the θ of other rows, :math:`\theta_{i+k}` (indices mod B, k = 1, ..., K; the rows are shuffled
every epoch). Four losses:

* ``"a"`` (NRE-A, Hermans et al. 2020): the logistic loss of one joint and one apart pair per
  row, :math:`\operatorname{softplus}(-d(x_i, \theta_i)) + \operatorname{softplus}(d(x_i,
  \theta_{i+1}))`; :math:`c(x) = 0`.
* ``"balanced"`` (BNRE, Delaunoy et al. 2022): NRE-A plus :math:`\lambda\,(\bar\sigma_{joint} +
  \bar\sigma_{apart} - 1)^2`, the batch means of :math:`\sigma(d)`, which pushes towards
  conservative posteriors; :math:`c(x) = 0` when the constraint holds.
* ``"b"`` (NRE-B, Durkan et al. 2020): cross-entropy of picking the joint θ among K + 1
  candidates; :math:`c(x)` is left free.
* ``"c"`` (NRE-C, Miller et al. 2022; the default): K + 1 classes, "every candidate is apart"
  with odds :math:`K` against "candidate k is the joint one" with odds :math:`\gamma\,e^{d_k}`,
  scored on a joint set and on an apart set, weighted :math:`\gamma/(1+\gamma)` and
  :math:`1/(1+\gamma)`; :math:`c(x) = 0` at the optimum.

References:
    Hermans, Begy & Louppe (2020), Likelihood-free MCMC with amortized approximate ratio
    estimators, arXiv:1903.04057. Durkan, Murray & Papamakarios (2020), On contrastive learning
    for likelihood-free inference, arXiv:2002.03712. Delaunoy et al. (2022), Towards reliable
    simulation-based inference with balanced neural ratio estimation, arXiv:2208.13624. Miller,
    Weniger & Forré (2022), Contrastive neural ratio estimation, arXiv:2210.06170.

Example:
    >>> import torch
    >>> model = RatioEstimator(3, 2, loss="c", atoms=4)
    >>> model.loss(torch.randn(16, 3), torch.randn(16, 2)).shape
    torch.Size([16])
    >>> model(torch.zeros(5, 2)).log_prob(torch.zeros(5, 3)).shape
    torch.Size([5])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.base import (
    VALIDATION_SEED,
    StandardizedEstimator,
    build_config,
    check_inputs,
)
from sbitk.models.contract import RATIO
from sbitk.nn.mlp import ACTIVATIONS, ResidualMLP

#: Held-out rows per batch of the validation loss (NRE's default training batch).
VALIDATION_BATCH = 256
LOSSES = ("a", "b", "c", "balanced")


@dataclasses.dataclass(frozen=True)
class RatioConfig:
    """Options of :class:`RatioEstimator`.

    Args:
        features, context: Sizes of x (the inputs) and of θ (the context).
        loss: ``"a"``, ``"b"``, ``"c"`` or ``"balanced"`` (see the module docstring).
        atoms: K, the θ drawn apart per row for ``"b"`` and ``"c"`` (at most the batch size
            less one; fewer in a smaller batch).
        gamma: NRE-C's odds of a joint set against an apart set.
        balance: BNRE's weight :math:`\\lambda` of the balancing term.
        hidden_features: Width of the residual classifier.
        blocks: Its residual blocks (two linear layers each).
        activation: Its activation (a name in :data:`sbitk.nn.mlp.ACTIVATIONS`).
    """

    features: int
    context: int
    loss: str = "c"
    atoms: int = 10
    gamma: float = 1.0
    balance: float = 100.0
    hidden_features: int = 128
    blocks: int = 3
    activation: str = "relu"


class RatioDistribution:
    """The ratio estimator at a batch of θ: ``log_prob(x)`` is the logit :math:`d(x, \\theta)`,
    :math:`\\log p(x \\mid \\theta) - \\log p(x)` up to a function of x; it draws no x."""

    def __init__(self, model: RatioEstimator, context: Tensor):
        self.model, self.context = model, context
        self.batch_shape = context.shape[:-1]
        self.event_shape = torch.Size([model.config.features])

    def log_prob(self, x: Tensor) -> Tensor:
        """The logit for x (..., *batch_shape, D_x): shape (..., *batch_shape)."""
        d = self.model.config.features
        rows = check_inputs(x, d, self.batch_shape)
        c = self.context.expand(*rows, self.context.shape[-1])
        return self.model.logit(x.expand(*rows, d), c)

    def sample(self, shape: Sequence[int] = (), generator=None) -> Tensor:
        raise SbitkError(
            "a ratio estimator classifies (x, θ) pairs and draws no x: simulate with the "
            "simulator, or train a likelihood with method nle"
        )

    def __repr__(self) -> str:
        return f"RatioDistribution(batch_shape={tuple(self.batch_shape)})"


class RatioEstimator(StandardizedEstimator):
    """A classifier of (x, θ) pairs whose logit estimates :math:`\\log p(x \\mid \\theta) / p(x)`
    (``ratio``); see the module docstring for its losses.

    Args:
        features: Size of x.
        context: Size of θ (at least 1).
        **options: Further fields of :class:`RatioConfig`.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = RatioConfig
    density: ClassVar[str] = RATIO

    def __init__(self, features: int, context: int, **options):
        super().__init__(int(features), int(context))
        cfg = build_config(RatioConfig, features, context, options)
        _check(cfg)
        self.config = cfg
        self.net = ResidualMLP(
            cfg.features + cfg.context, 1, cfg.hidden_features, cfg.blocks, cfg.activation
        )

    def logit(self, x: Tensor, theta: Tensor) -> Tensor:
        """:math:`d(x, \\theta)` for raw x (*, D_x) and θ (*, D_θ) of one leading shape."""
        h = torch.cat((self.inputs(x), self.standardized_context(theta)), -1)
        return self.net(h).squeeze(-1)

    def forward(self, context: Tensor) -> RatioDistribution:
        """The ratio at θ ``context`` (*, D_θ), batched over its leading shape."""
        self.standardized_context(context)  # checks the shape
        return RatioDistribution(self, context)

    def _apart(self, x: Tensor, theta: Tensor, k: int) -> Tensor:
        """Logits (B, k) of x_i with θ_{i+1}, ..., θ_{i+k}."""
        shifted = torch.stack([torch.roll(theta, -s, 0) for s in range(1, k + 1)], 1)
        return self.logit(x.unsqueeze(1).expand(-1, k, -1), shifted)

    def validation_loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The mean loss over held-out rows taken in one fixed random order, in batches of
        :data:`VALIDATION_BATCH`. The loss pairs each row with the next ones, and held-out rows
        may come in runs that share θ (the trials of one simulation, modelled one at a time):
        in their given order such a run would count true pairs as apart."""
        gen = torch.Generator().manual_seed(VALIDATION_SEED)
        order = torch.randperm(inputs.shape[0], generator=gen).to(inputs.device)
        total = inputs.new_zeros(())
        for rows in order.split(VALIDATION_BATCH):
            c = None if context is None else context[rows]
            total = total + self.loss(inputs[rows], c).sum()
        return total / max(inputs.shape[0], 1)

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The classification loss of each row of x ``inputs`` (B, D_x) and θ ``context``
        (B, D_θ), its apart pairs taken from the other rows: shape (B,). A batch of one row
        has no other row to pair with: its loss is zero."""
        if context is None:
            raise SbitkError("RatioEstimator: the loss needs θ as the context")
        b, cfg = inputs.shape[0], self.config
        joint = self.logit(inputs, context)
        if b < 2:
            return joint * 0.0
        if cfg.loss in ("a", "balanced"):
            apart = self._apart(inputs, context, 1)[:, 0]
            loss = F.softplus(-joint) + F.softplus(apart)
            if cfg.loss == "balanced":
                gap = torch.sigmoid(joint).mean() + torch.sigmoid(apart).mean() - 1
                loss = loss + cfg.balance * gap.square()
            return loss
        k = min(cfg.atoms, b - 1)
        apart = self._apart(inputs, context, k)
        if cfg.loss == "b":
            return -torch.log_softmax(torch.cat((joint[:, None], apart), 1), 1)[:, 0]
        return _nre_c(joint, apart, cfg.gamma)


def _nre_c(joint: Tensor, apart: Tensor, gamma: float) -> Tensor:
    """NRE-C's loss per row: the joint set is (joint, apart[:, :K-1]), the apart set apart[:, :]
    with K = apart's width; class 0 ("all apart", probability 1/(1+γ)) has odds K, class k
    ("pair k is joint", γ/(K(1+γ)) each) odds γ exp(d_k). Summed over the K positions the
    joint class weighs γ/(1+γ), which is the weight of the joint set's term."""
    k = apart.shape[1]
    log_k, log_gamma = math.log(k), math.log(gamma)
    joint_set = torch.cat((joint[:, None], apart[:, : k - 1]), 1)

    def log_normaliser(logits: Tensor) -> Tensor:
        zero = torch.full_like(logits[:, :1], log_k)
        return torch.logsumexp(torch.cat((zero, log_gamma + logits), 1), 1)

    log_p_apart = log_k - log_normaliser(apart)  # the apart set is class 0
    log_p_joint = log_gamma + joint - log_normaliser(joint_set)  # the joint set is class 1
    w_joint = gamma / (1 + gamma)
    return -((1 - w_joint) * log_p_apart + w_joint * log_p_joint)


def _check(cfg: RatioConfig) -> None:
    problems = []
    if cfg.context < 1:
        problems.append(f"a context (θ) of at least 1 column (got {cfg.context})")
    if cfg.loss not in LOSSES:
        problems.append(f"loss among {LOSSES} (got {cfg.loss!r})")
    if cfg.atoms < 1:
        problems.append(f"atoms >= 1 (got {cfg.atoms})")
    if not (cfg.gamma > 0 and math.isfinite(cfg.gamma)):
        problems.append(f"a finite gamma > 0 (got {cfg.gamma})")
    if not (cfg.balance >= 0 and math.isfinite(cfg.balance)):
        problems.append(f"a finite balance >= 0 (got {cfg.balance})")
    if cfg.hidden_features < 1 or cfg.blocks < 0:
        problems.append(
            f"hidden_features >= 1 and blocks >= 0 (got {cfg.hidden_features}, {cfg.blocks})"
        )
    if cfg.activation not in ACTIVATIONS:
        problems.append(f"activation among {sorted(ACTIVATIONS)} (got {cfg.activation!r})")
    if problems:
        raise SbitkError("RatioEstimator: expected " + "; ".join(problems))


__all__ = ["LOSSES", "RatioConfig", "RatioDistribution", "RatioEstimator"]
