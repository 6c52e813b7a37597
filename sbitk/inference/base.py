"""What NPE and NLE share: the settings, building the estimator, and one path through ``fit``.

A role differs only in what it trains (:meth:`Estimation._pair` maps clean (θ, x) rows to the
estimator's ``(inputs, context)``), in how it treats invalid rows (:meth:`Estimation._handle`) and
in what it returns (:meth:`Estimation._result`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.inference.data import (
    RowReport,
    check_pair,
    choose_x_bijection,
    clean_rows,
    permute_trials,
    prepare_fit,
)
from sbitk.inference.training import History, TrainConfig, train
from sbitk.models.contract import check_estimator, role_options
from sbitk.models.registry import (
    build_estimator,
    check_estimator_options,
    default_estimator,
    get_estimator,
)
from sbitk.simulation.bijections import Bijection
from sbitk.simulation.priors import Prior, as_prior
from sbitk.simulation.rng import seeded


def check_trials(trials: Any) -> list[tuple[int, int, int]] | bool | None:
    """``trials`` as given, once it is None, True, False or a list of ``(offset, trials,
    width)`` blocks of non-negative, positive and positive integers."""
    if trials is None or isinstance(trials, bool):
        return trials

    def block(b) -> bool:
        ints = (
            isinstance(b, list | tuple)
            and len(b) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
        )
        return ints and b[0] >= 0 and b[1] >= 1 and b[2] >= 1

    if not isinstance(trials, list | tuple) or not all(block(b) for b in trials):
        raise SbitkError(
            "trials must be None, true, false or a list of [offset, trials, width] blocks of "
            f"integers, got {trials!r}"
        )
    return [tuple(b) for b in trials]


class Estimation:
    """Base of :class:`~sbitk.inference.npe.NPE` and :class:`~sbitk.inference.nle.NLE`."""

    role = ""
    #: The role's name in the estimator contract (``"posterior"`` or ``"likelihood"``).
    contract_role = ""
    #: The key of :data:`~sbitk.models.registry.DEFAULT_ESTIMATORS` giving the default estimator.
    default_key = ""
    #: How the two dimensions of the estimator are named in errors: (features, context).
    dims = ("features", "context")
    #: Which side of the estimator x is on: ``"context"`` (NPE) or ``"inputs"`` (NLE, NRE).
    x_side = "context"
    #: Keep the transform of x of the last fit (training resumed on more rows; NPE's APT).
    resume = False

    def __init__(
        self,
        prior: Prior | None,
        estimator: str | nn.Module | None,
        unconstrained: bool | None,
        config: TrainConfig | None,
        parameter_names: Sequence[str] | None,
        output_names: Sequence[str] | None,
        simulator_name: str | None,
        estimator_kwargs: dict,
    ):
        self.prior = None if prior is None else as_prior(prior)
        if estimator is None:
            estimator = default_estimator(self.default_key)
        if not isinstance(estimator, str | nn.Module):
            raise SbitkError(
                f"estimator must be a name or an nn.Module, got {type(estimator).__name__}"
            )
        if unconstrained is not None and not isinstance(unconstrained, bool):
            raise SbitkError(f"unconstrained must be True, False or None, got {unconstrained!r}")
        if isinstance(estimator, nn.Module):
            check_estimator(estimator)
        else:
            # an unknown name or option fails here, before any data is read
            check_estimator_options(estimator, estimator_kwargs)
        self.estimator = estimator
        self._check_kind(self.estimator_class)
        #: Work in the prior's unconstrained coordinates (True), in θ (False), or let the role
        #: choose (None).
        self.unconstrained = unconstrained
        self.estimator_kwargs = estimator_kwargs
        self.config = config or TrainConfig()
        self.parameter_names = parameter_names
        self.output_names = output_names
        self.simulator_name = simulator_name
        self.history: History | None = None
        self.report: RowReport | None = None
        #: Where x holds i.i.d. trials, ``(offset, trials, width)`` blocks that training permutes
        #: (:func:`~sbitk.inference.data.permute_trials`); None: read from the bank's
        #: simulator; False or []: never permute.
        self.trials: list[tuple[int, int, int]] | bool | None = None
        #: How many training rows each simulation gives: its trials when the role models them
        #: one at a time (NLE's ``per_trial``), else 1.
        self.trial_count = 1
        #: Log x column by column: None (chosen from the data), True (every column) or False.
        self.log_x: bool | None = None
        #: The transform of x the estimator learns on, chosen from the first training rows
        #: :meth:`_pair` sees in each fit (:func:`~sbitk.inference.data.choose_x_bijection`).
        self.x_bijection: Bijection | None = None

    @property
    def estimator_class(self) -> type:
        """The class of the estimator (built or named)."""
        if isinstance(self.estimator, nn.Module):
            return type(self.estimator)
        return get_estimator(self.estimator)

    def _check_kind(self, cls: type) -> None:
        """Refuse an estimator whose density kind the role cannot use (no-op here)."""

    def _box(self) -> bool:
        """Whether the modelled or conditioning θ lies on a box (decided in ``_resolve``)."""
        return False

    def _options(self) -> dict:
        """The estimator's constructor options: its defaults for the role under given ones."""
        defaults = role_options(self.estimator_class, self.contract_role, self._box())
        return {**defaults, **self._context_options(), **self.estimator_kwargs}

    def _context_options(self) -> dict:
        """Constructor options the data's layout calls for (none here; NPE's trials)."""
        return {}

    def _build(self, features: int, context: int) -> nn.Module:
        if isinstance(self.estimator, nn.Module):
            cfg = self.estimator.config
            if (cfg.features, cfg.context) != (features, context):
                raise SbitkError(
                    f"the estimator was built for {cfg.features} features and {cfg.context} "
                    f"context, {self.role.upper()} needs {features} ({self.dims[0]}) and "
                    f"{context} ({self.dims[1]})"
                )
            return self.estimator
        with seeded(self.config.seed):
            return build_estimator(self.estimator, features, context, **self._options())

    def _pair(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Clean (θ, x) rows as the estimator's ``(inputs, context)``."""
        raise NotImplementedError

    def _x_view(self, x: Tensor) -> Tensor:
        """x's rows (as the estimator's side holds them) in the coordinates it learns on; the
        first call of a fit chooses them from those rows."""
        if self.x_bijection is None:
            blocks = [] if self.trial_count > 1 else list(self.trials or [])
            self.x_bijection = choose_x_bijection(x, self.log_x, blocks)
        return self.x_bijection.forward(x)[0]

    def _handle(self, report: RowReport) -> None:
        """Warn about, or refuse, the rows ``report`` excluded."""
        raise NotImplementedError

    def _resolve(self) -> None:
        """Settle choices that need the prior, which may come from the bank (no-op here)."""

    def _check_stream(self, source) -> bool:
        """Before streaming, look at every chunk if the role must; True when it did."""
        return False

    def _train_config(self, n_rows: int, model: nn.Module | None = None) -> TrainConfig:
        """The training settings for ``n_rows`` rows (validation included): the built
        estimator ``model``'s ``train_defaults`` fill the settings left unset (``None``; none
        without a model); given ones win."""
        hook = getattr(model, "train_defaults", None)
        defaults = hook() if callable(hook) else {}
        unset = {k: v for k, v in defaults.items() if getattr(self.config, k) is None}
        return replace(self.config, **unset)

    def _objective(self, model: nn.Module) -> nn.Module:
        """What training minimises the loss of: the estimator itself, or a module around it
        whose ``loss`` replaces the estimator's (NPE's atomic loss); the estimator is kept."""
        return model

    def _augmenter(self, x_dim: int):
        """Training-batch augmentation that permutes x's i.i.d. trials, or None (also when each
        trial is a row of its own)."""
        blocks = self._trial_blocks(x_dim)
        return _PermuteTrials(blocks, self.x_side) if blocks else None

    def _trial_blocks(self, x_dim: int) -> list[tuple[int, int, int]]:
        """x's blocks of i.i.d. trials, checked against its ``x_dim`` values; none when each
        trial is a row of its own."""
        blocks = list(self.trials or [])
        if not blocks or self.trial_count > 1:
            return []
        if max(o + t * w for o, t, w in blocks) > x_dim or min(t for _, t, _ in blocks) < 2:
            raise SbitkError(f"trials {blocks} do not fit x of {x_dim} values")
        return blocks

    def _train(self, theta, x: Tensor | None, stream: bool | None) -> nn.Module:
        """Resolve the data, exclude and report invalid rows, build the estimator and train it."""
        _warn_if_incomplete(theta)
        if not self.resume:
            self.x_bijection = None  # chosen anew from this fit's rows
        source, theta, x, valid = prepare_fit(self, theta, x, stream, self._pair)
        self._resolve()
        if source is None:
            theta, x = check_pair(theta, x, dim=self.prior.dim, finite=False)
            dtype = torch.get_default_dtype()
            theta, x = theta.to(dtype), x.to(dtype)
            theta, x, self.report = clean_rows(theta, x, valid, self.prior)
            self._handle(self.report)
            if self.report.n_used < 2:
                raise SbitkError(f"need at least 2 valid rows to train, got {self.report.n_used}")
            inputs, context = self._pair(theta, x)
            model = self._build(inputs.shape[1], context.shape[1])
            config = self._train_config(len(inputs), model)
            augment = self._augmenter(x.shape[1])
            self.history = train(
                self._objective(model), inputs, context, config, augment, self.trial_count
            )
            self.history.rows = asdict(self.report)
            return model
        inputs, context = source.load(0)
        model = self._build(inputs.shape[1], context.shape[1])
        checked = self._check_stream(source)
        # A source without a length streams because it is large.
        n_rows = self.trial_count * len(source.bank) if hasattr(source.bank, "__len__") else 2**62
        x_dim = (context if self.x_side == "context" else inputs).shape[1] * self.trial_count
        self.history = train(
            self._objective(model),
            source,
            None,
            self._train_config(n_rows, model),
            self._augmenter(x_dim),
        )
        self.report = source.report
        self.history.rows = asdict(self.report)
        if not checked:
            self._handle(self.report)
        return model


def check_log_x(value) -> bool | None:
    """``log_x`` checked: True, False or None."""
    if value is not None and not isinstance(value, bool):
        raise SbitkError(f"log_x must be True, False or None, got {value!r}")
    return value


class _PermuteTrials:
    """Training-batch augmentation: x's i.i.d. trials in a random order per row; ``variety`` is
    the number of distinct orders (at most 10⁶, which is as good as endless here)."""

    def __init__(self, blocks: list[tuple[int, int, int]], side: str):
        self.blocks, self.side = blocks, side
        self.variety = min(math.prod(math.factorial(t) for _, t, _ in blocks), 10**6)

    def __call__(self, inputs: Tensor, context: Tensor | None):
        if self.side == "context":
            return inputs, permute_trials(context, self.blocks)
        return permute_trials(inputs, self.blocks), context


def _warn_if_incomplete(data) -> None:
    """Warn when ``data`` is a bank whose run was cut short (fewer rows than it planned) or
    lost chunk files: training then sees fewer rows than the user asked to simulate."""
    planned = getattr(data, "planned", None)
    if not isinstance(planned, int) or not callable(getattr(data, "__len__", None)):
        return
    rows = len(data)
    if rows < planned:
        where = getattr(data, "path", None) or "the bank"
        warnings.warn(
            f"training on an incomplete bank: {where} holds {rows} of {planned} planned rows; "
            "rerun the simulate command to finish it",
            stacklevel=4,
        )


__all__ = ["Estimation", "check_log_x"]
