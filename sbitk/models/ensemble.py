r"""An ensemble: the equal mixture of K independently initialised estimators of one family.

.. math::
    q(a \mid c) = \frac1K \sum_{k=1}^K q_k(a \mid c), \qquad
    \ell(a \mid c) = \sum_{k=1}^K \ell_k(a \mid c).

The members train together on the same batches, each on its own loss (the sum's gradient with
respect to member k's weights is member k's own), so they differ by their initial weights and
end in different optima. Averaging their densities averages out the errors they do not share:
where one member gives one mode of a posterior too much weight and another too little, the
mixture is closer to even, and it is more conservative than its members (Lakshminarayanan et
al. 2017; Hermans et al. 2022 recommend ensembles against overconfident posteriors). On
two_moons at 10,000 simulations the HPD coverage of one spline flow fell short of its level by
up to 0.09 over 1,000 fresh simulations, because each flow gives the two crescents uneven
weights (off by 0.04 on average); three flows fell short by at most 0.05.

Sampling picks a member for each row, uniformly at random, and each member draws only the rows
that picked it, so n draws cost about n draws of one member; the density is
:math:`\log \frac1K \sum_k e^{\log q_k}`.

References:
    Lakshminarayanan, Pritzel & Blundell (2017), Simple and scalable predictive uncertainty
    estimation using deep ensembles, arXiv:1612.01474.
    Hermans, Delaunoy, Rozet, Wehenkel, Begy & Louppe (2022), A trust crisis in simulation-based
    inference? Your posterior approximations can be unfaithful, arXiv:2110.06581.

Example:
    >>> import torch
    >>> model = Ensemble(2, 3, member="gaussian", members=3)
    >>> dist = model(torch.zeros(4, 3))
    >>> dist.sample((5,)).shape, dist.log_prob(torch.zeros(4, 2)).shape
    (torch.Size([5, 4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.base import build_config, rebuild
from sbitk.models.contract import (
    EXACT,
    NONE,
    RATIO,
    ROLES,
    UNNORMALISED,
    density_kind,
    role_options,
    trial_options,
)
from sbitk.models.registry import build_estimator, check_estimator_options, get_estimator
from sbitk.simulation.resources import check_memory


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Options of :class:`Ensemble`.

    Args:
        features, context: Sizes D of the modelled vector and C of the context.
        member: The registered name of the members' estimator.
        members: K, how many members.
        options: The members' constructor options (the same for all).
        role: ``"posterior"`` or ``"likelihood"`` when the ensemble plays a role: the members
            then start from their own defaults for it, under ``options``.
        box: Whether the prior is a box (for the members' role defaults).
        trials: Blocks ``(offset, trials, width)`` of i.i.d. trials in the context, for the
            members' ``trial_options``; ``None``: none.
        missing_trials: Trials may be absent (see :mod:`sbitk.models.contract`).
    """

    features: int
    context: int = 0
    member: str = "nsf"
    members: int = 3
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    role: str | None = None
    box: bool = False
    trials: Sequence[Sequence[int]] | None = None
    missing_trials: bool = False


class Ensemble(nn.Module):
    """The equal mixture of ``members`` estimators of the family registered as ``member``.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context.
        **options: Further fields of :class:`EnsembleConfig`.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = EnsembleConfig
    density: ClassVar[str] = EXACT
    #: On a box prior, model θ itself, truncated to the box, as the default member (the spline
    #: flow) does; a member that would rather train in unconstrained coordinates still works.
    box_on_theta: ClassVar[bool] = True

    def __init__(self, features: int, context: int = 0, **options):
        super().__init__()
        cfg = build_config(EnsembleConfig, features, context, options)
        cls = _check(cfg)
        self.config = cfg
        kwargs = dict(role_options(cls, cfg.role, cfg.box)) if cfg.role else {}
        if cfg.trials:
            given = trial_options(cls, cfg.trials, cfg.missing_trials)
            if given is None:
                raise SbitkError(f"Ensemble: member {cfg.member!r} offers no trial_options")
            kwargs.update(given)
        kwargs.update({k: tuple(v) if isinstance(v, list) else v for k, v in cfg.options.items()})
        first = build_estimator(cfg.member, cfg.features, cfg.context, **kwargs)
        size = sum(t.numel() * t.element_size() for t in (*first.parameters(), *first.buffers()))
        check_memory(
            cfg.members * size, f"an ensemble of {cfg.members} {cfg.member!r} members",
            "ask for fewer members",
        )  # fmt: skip
        rest = (build_estimator(cfg.member, cfg.features, cfg.context, **kwargs)
                for _ in range(cfg.members - 1))  # fmt: skip
        self.members = nn.ModuleList([first, *rest])
        #: The members' density kind: exact members make an exact mixture.
        self.density = density_kind(self.members[0])

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """What can be checked before the data are read: the member, by name and density
        kind, and the options given to it."""
        cfg = build_config(EnsembleConfig, 1, 0, options)
        _check(cfg)
        check_estimator_options(cfg.member, cfg.options)

    @classmethod
    def from_config(cls, config: Mapping) -> Self:
        """Rebuild from a config (or its dict)."""
        return rebuild(cls, config)

    @classmethod
    def role_options(cls, role: str, box: bool) -> dict:
        """The members take their own defaults for the role (see :mod:`sbitk.models.contract`)."""
        return {"role": role, "box": box}

    @classmethod
    def trial_options(cls, blocks: Sequence[tuple[int, int, int]], missing: bool) -> dict:
        """The members take their own options for the trials (see :mod:`sbitk.models.contract`)."""
        return {"trials": [list(b) for b in blocks], "missing_trials": missing}

    def train_defaults(self) -> dict:
        """The members' training defaults (see :mod:`sbitk.models.contract`): the ensemble
        trains them together as one of them would train alone (flow matching's members
        average their weights, for instance)."""
        hook = getattr(self.members[0], "train_defaults", None)
        return dict(hook()) if callable(hook) else {}

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> Self:
        """Each member's z-scoring statistics from the training rows, where it has them."""
        for m in self.members:
            if hasattr(m, "fit_standardization"):
                m.fit_standardization(inputs, context)
        return self

    def after_training(self, inputs: Tensor, context: Tensor | None = None) -> dict:
        """Each member's settings from the held-out rows, where it decides any: each setting
        as a list over the members."""
        decided = [m.after_training(inputs, context) or {} for m in self.members
                   if hasattr(m, "after_training")]  # fmt: skip
        return {
            key: [d.get(key) for d in decided]
            for key in dict.fromkeys(k for d in decided for k in d)
        }

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The members' losses summed, per row (B,): in one pass where the members offer it
        (``summed_loss``, see :mod:`sbitk.models.contract`), else one member after another."""
        hook = getattr(self.members[0], "summed_loss", None)
        summed = hook(list(self.members), inputs, context) if hook else None
        if summed is not None:
            return summed
        return sum(m.loss(inputs, context) for m in self.members)

    def validation_loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The members' validation losses summed (their own, where they define one)."""
        if not hasattr(self.members[0], "validation_loss"):
            return self.loss(inputs, context).mean()
        total = inputs.new_zeros(())
        for m in self.members:
            hook = getattr(m, "validation_loss", None)
            total = total + (hook(inputs, context) if hook else m.loss(inputs, context).mean())
        return total

    def forward(self, context: Tensor | None = None) -> EnsembleDistribution:
        """The mixture :math:`q(a \\mid c)`, batched over the context's leading shape."""
        return EnsembleDistribution([m(context) for m in self.members], self.density)


def _check(cfg: EnsembleConfig) -> type:
    if cfg.members < 1:
        raise SbitkError(f"Ensemble: expected members >= 1, got {cfg.members}")
    if cfg.role is not None and cfg.role not in ROLES:
        raise SbitkError(f"Ensemble: role must be one of {ROLES} or None, got {cfg.role!r}")
    if cfg.member == "ensemble":
        raise SbitkError("Ensemble: the members cannot be ensembles themselves")
    cls = get_estimator(cfg.member)
    if density_kind(cls) == NONE:
        raise SbitkError(
            f"Ensemble: member {cfg.member!r} offers samples only; an ensemble needs the "
            "members' densities (for the mixture's density and for truncation to a box prior)"
        )
    if density_kind(cls) == UNNORMALISED:
        raise SbitkError(
            f"Ensemble: member {cfg.member!r} has a density known up to a constant of its own, "
            "and members with different constants make no mixture: pick members with a density"
        )
    if density_kind(cls) == RATIO:
        raise SbitkError(
            f"Ensemble: member {cfg.member!r} estimates a ratio known up to a function of x "
            "that differs between members, so their mixture means nothing"
        )
    return cls


class EnsembleDistribution:
    """The equal mixture of the members' distributions for one batch of contexts.

    ``sample((n,))`` gives ``(n, *batch_shape, D)``; ``log_prob(a)`` takes a of shape
    ``(..., *batch_shape, D)`` and gives ``(..., *batch_shape)``.
    """

    has_rsample = False

    def __init__(self, parts: Sequence[Any], density: str):
        self.parts, self.density = list(parts), density
        self.batch_shape = parts[0].batch_shape
        self.event_shape = parts[0].event_shape

    def sample(self, shape: Sequence[int] = ()) -> Tensor:
        """Each row from one member, chosen uniformly at random (torch's global generator).

        A member draws only the rows it was chosen for: per context, as many as the context
        that chose it most often, so that n draws of one context cost about n draws of one
        member, not K·n. Member k's j-th draw of a context fills the j-th row that chose k.
        """
        n = math.prod(shape)
        pick = torch.randint(len(self.parts), (n, *self.batch_shape))
        out = on_device = None
        for k, part in enumerate(self.parts):
            most = int((pick == k).sum(0).max()) if pick.numel() else 0
            if most == 0:
                continue
            draws = part.sample((most,))  # (most, *batch, D)
            if on_device is None:  # one copy of the picks to the draws' device, not one a member
                on_device = pick.to(draws.device)
            chosen = on_device == k
            rank = (chosen.cumsum(0) - 1).clamp(0, most - 1)
            index = rank.unsqueeze(-1).expand(n, *draws.shape[1:])
            drawn = torch.gather(draws, 0, index)
            out = drawn if out is None else torch.where(chosen.unsqueeze(-1), drawn, out)
        if out is None:  # no rows asked for
            out = self.parts[0].sample((0,))
        return out.reshape(*shape, *out.shape[1:])

    def log_prob(self, a: Tensor) -> Tensor:
        """:math:`\\log \\frac1K \\sum_k q_k(a)` (an estimate when the members' densities are)."""
        parts = torch.stack([p.log_prob(a) for p in self.parts])
        return torch.logsumexp(parts, 0) - math.log(len(self.parts))

    def __repr__(self) -> str:
        return f"EnsembleDistribution(members={len(self.parts)}, batch_shape={self.batch_shape})"


__all__ = ["Ensemble", "EnsembleConfig", "EnsembleDistribution"]
