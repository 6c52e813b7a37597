r"""The estimator contract: what every conditional generative model offers the rest of sbitk.

An estimator models a vector :math:`a` (``features`` wide) given a context :math:`c`
(``context`` wide): as a posterior :math:`q(\theta \mid x)` in NPE (:math:`a = \theta`,
:math:`c = x`) or as a likelihood :math:`q(x \mid \theta)` in NLE. Everything above
:mod:`sbitk.models` (training, posteriors, diagnostics, model files, report, CLI) sees it only
through :class:`ConditionalEstimator`:

* ``config``: a frozen dataclass with at least ``features`` and ``context``;
  ``cls.from_config(asdict(config))`` rebuilds the same architecture, so a model file stores the
  registered name and the config, never a class path.
* ``loss(inputs, context) -> (B,)``: the only thing the training engine calls.
* ``estimator(context)``: a distribution batched over the contexts, with ``sample(shape)``
  (unless the density kind is :data:`RATIO`); with ``log_prob(inputs)`` too unless it is
  :data:`NONE`.
* ``density``: which density the distribution offers (:data:`DENSITY_KINDS`).

Optional capabilities, used where present and never asked for by name:

* ``fit_standardization(inputs, context)``: z-scoring statistics from the training rows.
* ``validation_loss(inputs, context) -> scalar``: what early stopping watches, where the
  training loss means little for model selection (a GAN's generator loss).
* ``optimizer_groups() -> list[dict]``: parameter groups, each ``{"params": [...],
  "lr_scale": s}``, for models whose parts learn at different rates (a GAN's critic).
* ``train_defaults() -> dict``: ``TrainConfig`` values for the settings a user leaves unset
  (``None``), for families whose training dynamics differ from a flow's (a GAN's noisy
  validation curve). Training asks the built model, so it may be a classmethod or, where the
  values depend on the options, a method (an ensemble gives its members').
* ``training_stages() -> tuple[str, ...]`` and ``set_stage(name) -> dict``: training in
  several stages, run in turn on the same split, each with its own optimiser and early
  stopping (a GAN's game, then its critic alone). ``set_stage`` switches what ``loss``,
  ``validation_loss`` and ``optimizer_groups`` do, and returns the ``TrainConfig`` settings
  that differ from the first stage's; training leaves the model in its first stage.
* ``after_training(inputs, context) -> dict``: called once training ends, on the kept weights
  in eval mode, with the held-out rows: settings a trained model decides for itself and keeps
  in its state (flow matching's ODE steps), returned for the training summary.
* ``role_options(role, box) -> dict``: default constructor options for a role (``"posterior"``
  or ``"likelihood"``) and whether the prior is a box; given options win.
* ``trial_options(blocks, missing) -> dict``: a classmethod giving constructor options for a
  context that holds i.i.d. trials in ``blocks`` (``(offset, trials, width)`` each), which make
  the model blind to their order, and with ``missing`` let trials be absent (all NaN), so that
  NPE takes a variable number of trials (a permutation-invariant set embedding, say).
* ``summed_loss(models, inputs, context) -> (B,) | None``: the losses of several models of
  the estimator's class, built alike, summed per row in one pass; None where they do not
  stack. An ensemble's training loss (spline flows stack their weights and run as one).
* ``box_on_theta``: a class flag: as a posterior on a box prior it models θ itself (its samples
  are then truncated to the box), not the prior's unconstrained coordinates.

Example:
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> check_estimator(ConditionalGaussian(2, 3)).density
    'exact'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from sbitk.errors import SbitkError

if TYPE_CHECKING:  # importing the contract (and the registry) needs no torch
    from torch import Tensor

#: ``log_prob`` is the model's normalised density (flows, Gaussian, mixtures).
EXACT = "exact"
#: ``log_prob`` is a normalised density estimated by Monte Carlo, a lower bound in expectation
#: (VAE: the importance-weighted bound).
ESTIMATED = "estimated"
#: ``log_prob`` is known up to a constant that may depend on the context (energy models): fine
#: for MCMC and for ranking samples at one context, not for normalised comparisons.
UNNORMALISED = "unnormalised"
#: No density at all, only samples (GAN).
NONE = "none"
#: ``log_prob(inputs)`` is :math:`\log q(a \mid c) - \log q(a)` up to a function of the
#: inputs alone, and nothing is sampled (ratio estimators, NRE). As a likelihood (inputs x,
#: context θ) that is enough for MCMC over θ; it is no posterior.
RATIO = "ratio"
DENSITY_KINDS = (EXACT, ESTIMATED, UNNORMALISED, NONE, RATIO)
#: The two roles an estimator plays, as passed to ``role_options``.
ROLES = ("posterior", "likelihood")


@runtime_checkable
class ConditionalDistribution(Protocol):
    """What ``estimator(context)`` returns: a distribution batched over the contexts.

    ``sample((n,))`` gives ``(n, *batch_shape, D)``; ``log_prob(a)`` with a of shape
    ``(..., *batch_shape, D)`` gives ``(..., *batch_shape)`` (absent for density kind ``none``).
    """

    batch_shape: Any
    event_shape: Any

    def sample(self, shape: Sequence[int] = ()) -> Tensor: ...


@runtime_checkable
class ConditionalEstimator(Protocol):
    """A conditional generative model in the contract (see the module docstring)."""

    config: Any
    density: ClassVar[str]

    @classmethod
    def from_config(cls, config: Mapping) -> ConditionalEstimator: ...

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor: ...

    def __call__(self, context: Tensor | None = None) -> ConditionalDistribution: ...


class ContractError(SbitkError, TypeError):
    """An object offered as an estimator does not follow the estimator contract."""


def density_kind(estimator: Any) -> str:
    """The density kind ``estimator`` (an instance or a class) declares."""
    kind = getattr(estimator, "density", None)
    if kind not in DENSITY_KINDS:
        name = estimator.__name__ if isinstance(estimator, type) else type(estimator).__name__
        raise ContractError(
            f"estimator {name} must declare density as one of {DENSITY_KINDS}, found {kind!r}"
        )
    return kind


def can_sample(estimator: Any) -> bool:
    """Whether ``estimator``'s distributions draw samples (all but ratio estimators)."""
    return density_kind(estimator) != RATIO


def has_density(estimator: Any) -> bool:
    """Whether ``estimator`` evaluates some (possibly unnormalised or estimated) density."""
    return density_kind(estimator) != NONE


def check_estimator(model: Any) -> Any:
    """Return ``model`` if it follows the contract, else raise :class:`ContractError` saying
    what is missing."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    missing = [
        what
        for what, ok in (
            ("config.features", isinstance(getattr(config, "features", None), int)),
            ("config.context", isinstance(getattr(config, "context", None), int)),
            ("from_config", callable(getattr(type(model), "from_config", None))),
            ("loss(inputs, context)", callable(getattr(model, "loss", None))),
            ("__call__(context)", callable(model)),
        )
        if not ok
    ]
    if missing:
        raise ContractError(f"estimator {name} lacks {', '.join(missing)} (see sbitk.models)")
    density_kind(model)
    return model


def role_options(estimator: Any, role: str, box: bool) -> dict:
    """The estimator's default constructor options for ``role`` (empty when it has none)."""
    if role not in ROLES:
        raise SbitkError(f"role must be one of {ROLES}, got {role!r}")
    hook = getattr(estimator, "role_options", None)
    return dict(hook(role, box)) if callable(hook) else {}


def trial_options(estimator: Any, blocks: Sequence, missing: bool) -> dict | None:
    """The estimator's constructor options for a context of i.i.d. trials in ``blocks``
    (``None`` when it offers none)."""
    hook = getattr(estimator, "trial_options", None)
    return dict(hook([tuple(b) for b in blocks], missing)) if callable(hook) else None


__all__ = [
    "DENSITY_KINDS",
    "ESTIMATED",
    "EXACT",
    "NONE",
    "RATIO",
    "ROLES",
    "UNNORMALISED",
    "ConditionalDistribution",
    "ConditionalEstimator",
    "ContractError",
    "can_sample",
    "check_estimator",
    "density_kind",
    "has_density",
    "role_options",
    "trial_options",
]
