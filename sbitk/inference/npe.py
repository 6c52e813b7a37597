"""Neural posterior estimation (NPE): learn an amortized posterior :math:`q(\\theta \\mid x)`.

With pairs :math:`(\\theta_i, x_i)` drawn from :math:`p(\\theta)\\,p(x \\mid \\theta)`, minimising

.. math::
    \\mathcal{L}(\\phi) = \\mathbb{E}_{p(\\theta, x)}\\left[-\\log q_\\phi(\\theta \\mid x)\\right]

makes :math:`q_\\phi(\\theta \\mid x)` approach the posterior :math:`p(\\theta \\mid x)` for every
:math:`x` at once (the expected KL divergence between them is this loss up to a constant).

For a prior bounded on a box (box-uniform) an estimator that asks for it (``box_on_theta``: the
spline flow) is trained on θ itself and its samples
are truncated to the box by rejection, which the posterior caps and reports. Otherwise (other
estimators, other bounded priors such as log-normal) the estimator is trained on
:math:`u = f(\\theta)`, the prior's bijection to the real line, so that its samples, mapped back,
never leave the support. On a box the logit stretches the posterior's mass near an edge into a
long tail: on two_moons, whose posteriors touch the edges, the held-out log-likelihood is 0.27
nats worse through the logit than on θ (docs/benchmarks.md).

References:
    Papamakarios & Murray (2016), Fast ε-free inference of simulation models with Bayesian
    conditional density estimation, arXiv:1605.06376.
    Greenberg, Nonnenmacher & Macke (2019), Automatic posterior transformation for
    likelihood-free inference, arXiv:1905.07488.

Example:
    >>> import torch
    >>> from sbitk.simulation.priors import Normal
    >>> prior = Normal(0.0, 1.0, dim=2)
    >>> theta = prior.sample(2000, torch.Generator().manual_seed(0))
    >>> x = theta + 0.1 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    >>> npe = NPE(prior, estimator="gaussian", config=TrainConfig(max_epochs=20, progress=False))
    >>> posterior = npe.fit(theta, x)
    >>> posterior.sample(10, x=torch.zeros(2), seed=0).shape
    torch.Size([10, 2])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.inference.apt import AtomicLoss
from sbitk.inference.base import Estimation, check_log_x, check_trials
from sbitk.inference.data import RowReport, permute_trials, warn_excluded
from sbitk.inference.training import TrainConfig
from sbitk.models.contract import RATIO, density_kind, has_density, trial_options
from sbitk.posteriors.direct import DirectPosterior
from sbitk.simulation.bijections import is_box
from sbitk.simulation.priors import Prior
from sbitk.simulation.simulator import sort_trials

#: How NPE makes a posterior blind to the order of x's i.i.d. trials (``trial_order=None``):
#: ``"sort"`` or ``"permute"`` (see :class:`NPE`).
TRIAL_ORDER = "permute"
TRIAL_ORDERS = ("sort", "permute")


class NPE(Estimation):
    """Neural posterior estimation: trains an estimator of :math:`q(\\theta \\mid x)`.

    Args:
        prior: The prior the training θ were drawn from (read from the bank when ``None``).
        estimator: A registered name (:func:`~sbitk.models.registry.available_estimators`:
            ``"nsf"``, ``"maf"``, ``"gaussian"``, ...) or a ready ``nn.Module`` of the estimator
            contract (:mod:`sbitk.models.contract`). ``None``: the posterior default,
            :data:`~sbitk.models.registry.DEFAULT_ESTIMATORS` (an ensemble of spline flows).
        unconstrained: Train on the prior's unconstrained bijection of θ (True), or on θ with
            samples truncated to the support by rejection (False). ``None`` (the default) trains
            an estimator that declares ``box_on_theta`` (the spline flow) on θ when the prior is
            bounded on a box, and every other case on the bijection. Truncation needs a
            density; a sample-only estimator always trains on the bijection.
        trials: Where x holds i.i.d. trials, ``(offset, trials, width)`` blocks whose order
            carries no information (see ``trial_order``). ``None`` (the default): the blocks
            the bank's simulator declares (:func:`~sbitk.simulation.simulator.trial_blocks`);
            ``False``: none, x is taken in the order given.
        trial_order: How the posterior is made blind to the trials' order. ``"sort"``: the
            estimator sees each block's trials sorted
            (:func:`~sbitk.simulation.simulator.sort_trials`), in training and in the
            posterior, which loses nothing (the sorted values are sufficient for i.i.d.
            trials) and trains on the rows as they are. ``"permute"``: every training batch
            puts them in a random order (data augmentation), which trains for longer.
            ``None`` (the default): :data:`TRIAL_ORDER`. With ``variable_trials`` the trials
            are always permuted (the set embedding is blind to their order).
        log_x: Condition on log x, column by column: ``None`` (the default) for the columns
            of x that are positive and right-skewed in the training data
            (:func:`~sbitk.inference.data.choose_x_bijection`), ``True`` for every column,
            ``False`` for none. The posterior applies it to the x it is given.
        variable_trials: Learn from x with any number of its i.i.d. trials, 1 to T, so that
            the posterior takes an x that leaves some out (as NaN). x must hold one block of
            trials (``trials``); the estimator gets its ``trial_options`` for it (a flow: a
            set embedding that skips absent trials), and each training batch keeps a random
            number of its trials, in a random order. A ready ``nn.Module`` must take absent
            trials itself.
        atoms: ``None`` (the default): maximum likelihood, which learns the posterior when the
            training θ are prior draws. An integer K >= 2: APT's atomic loss with K atoms per
            row (:mod:`sbitk.inference.apt`), which learns it from θ drawn from any proposal
            (sequential NPE's later rounds). The estimator needs a density.
        config: Training settings.
        parameter_names, output_names, simulator_name: Carried into the posterior and model
            files (read from the bank when fitting from one).
        estimator_options: Options of the estimator's constructor as a mapping, for a name
            that an argument of this class takes too (a CVAE's ``prior``).
        **estimator_kwargs: Passed to the estimator's constructor.
    """

    role = "npe"
    contract_role = "posterior"
    default_key = "posterior"
    dims = ("D_θ", "D_x")

    def __init__(
        self,
        prior: Prior | None = None,
        estimator: str | nn.Module | None = None,
        *,
        unconstrained: bool | None = None,
        trials: list[tuple[int, int, int]] | bool | None = None,
        trial_order: str | None = None,
        log_x: bool | None = None,
        variable_trials: bool = False,
        atoms: int | None = None,
        config: TrainConfig | None = None,
        parameter_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        simulator_name: str | None = None,
        estimator_options: Mapping[str, Any] | None = None,
        **estimator_kwargs,
    ):
        super().__init__(
            prior,
            estimator,
            unconstrained,
            config,
            parameter_names,
            output_names,
            simulator_name,
            {**(estimator_options or {}), **estimator_kwargs},
        )
        self.trials = check_trials(trials)
        self.log_x = check_log_x(log_x)
        self.trains_unconstrained = True
        if not isinstance(variable_trials, bool):
            raise SbitkError(f"variable_trials must be True or False, got {variable_trials!r}")
        self.variable_trials = variable_trials
        if trial_order not in (None, *TRIAL_ORDERS):
            raise SbitkError(f"trial_order must be one of {TRIAL_ORDERS}, got {trial_order!r}")
        if trial_order == "sort" and variable_trials:
            raise SbitkError(
                "variable_trials permutes the trials (its set embedding is blind to their "
                "order): leave trial_order unset or pass 'permute'"
            )
        self.trial_order = trial_order or ("permute" if variable_trials else TRIAL_ORDER)
        #: APT's atoms per row (None: maximum likelihood); see ``atoms`` above.
        self.atoms = atoms
        #: With ``atoms``: go on training the estimator module as it stands, with its
        #: standardisation and transform of x (sequential APT's later rounds).
        self.resume = False
        if atoms is not None:
            AtomicLoss(nn.Identity(), lambda a: a, atoms)  # checks the number
            if not has_density(self.estimator_class):
                raise SbitkError(
                    f"the atomic loss needs a density; estimator "
                    f"{self.estimator_class.__name__} offers samples only"
                )

    def _check_kind(self, cls: type) -> None:
        if density_kind(cls) == RATIO:
            raise SbitkError(
                f"estimator {cls.__name__} estimates a likelihood-to-evidence ratio and draws "
                "nothing, so it is no posterior: use it with NRE (method nre)"
            )

    def _resolve(self) -> None:
        cls = self.estimator_class
        box = is_box(self.prior.bijection())
        if self.unconstrained is False and not has_density(cls):
            raise SbitkError(
                f"unconstrained=False truncates samples to the prior's support, which needs a "
                f"density; estimator {cls.__name__} offers samples only: leave unconstrained "
                "unset"
            )
        on_theta = box and getattr(cls, "box_on_theta", False)
        self.trains_unconstrained = (
            not on_theta if self.unconstrained is None else self.unconstrained
        )
        self.bijection = self.prior.bijection() if self.trains_unconstrained else None

    def _box(self) -> bool:
        return not self.trains_unconstrained and is_box(self.prior.bijection())

    def _pair(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.bijection.forward(theta)[0] if self.trains_unconstrained else theta
        return u, sort_trials(self._x_view(x), self._sorted_blocks(x.shape[-1]))

    def _sorted_blocks(self, x_dim: int) -> list[tuple[int, int, int]]:
        """The blocks of trials the estimator sees sorted (``trial_order="sort"``)."""
        return self._trial_blocks(x_dim) if self.trial_order == "sort" else []

    def _handle(self, report: RowReport) -> None:
        warn_excluded(report, stacklevel=5)

    def _missing_block(self) -> tuple[int, int, int] | None:
        """The block of trials that may be absent (``variable_trials``), or None."""
        if not self.variable_trials:
            return None
        blocks = list(self.trials or [])
        if len(blocks) != 1 or blocks[0][1] < 2:
            raise SbitkError(
                "variable_trials needs x to hold one block of at least 2 i.i.d. trials, got "
                f"{blocks or 'none'} (pass trials=[(offset, trials, width)] or fit from a bank "
                "whose simulator declares them)"
            )
        return tuple(blocks[0])

    def _context_options(self) -> dict:
        if not self.variable_trials:
            return {}
        options = trial_options(self.estimator_class, [self._missing_block()], True)
        if options is None:
            raise SbitkError(
                f"estimator {self.estimator_class.__name__} offers no trial_options, so it "
                "cannot take absent trials: use a flow (nsf, maf, ...) or an ensemble of them"
            )
        return options

    def _augmenter(self, x_dim: int):
        block = self._missing_block()
        if block is not None:
            return _DropTrials(block)
        return None if self.trial_order == "sort" else super()._augmenter(x_dim)

    def _objective(self, model: nn.Module) -> nn.Module:
        if self.atoms is None:
            return model
        return AtomicLoss(model, self._log_prior, self.atoms, standardize=not self.resume)

    def _log_prior(self, a: Tensor) -> Tensor:
        """The prior's log density in the coordinates the estimator learns (u or θ):
        :math:`\\log p_u(u) = \\log p(\\theta) - \\log|\\det J_f(\\theta)|`."""
        theta = self.bijection.inverse(a) if self.trains_unconstrained else a
        log_p = self.prior.log_prob(theta.detach().cpu().to(torch.get_default_dtype())).to(a)
        if self.trains_unconstrained:
            log_p = log_p - self.bijection.forward(theta)[1]
        return log_p.detach()

    def fit(
        self, theta, x: Tensor | None = None, *, stream: bool | None = None
    ) -> DirectPosterior:
        """Train on (θ, x) tensors or on a bank, and return the posterior.

        Args:
            theta: Parameters (N, D_θ), or a simulation bank (then ``x`` is ``None``).
            x: Simulated data (N, D_x).
            stream: For a bank, read it chunk by chunk instead of loading it; ``None`` streams
                when it would take more than half of the memory.

        Returns:
            A :class:`~sbitk.posteriors.direct.DirectPosterior`. Invalid rows (failed
            simulations, NaN/Inf, θ outside the support) are excluded, counted in
            :attr:`report` and announced by a warning.
        """
        model = self._train(theta, x, stream)
        return DirectPosterior(
            model,
            self.prior,
            unconstrained=self.trains_unconstrained,
            x_bijection=self.x_bijection,
            parameter_names=self.parameter_names,
            output_names=self.output_names,
            simulator_name=self.simulator_name,
            history=self.history,
            missing_trials=self._missing_block(),
            sorted_trials=self._sorted_blocks(model.config.context),
        )


class _DropTrials:
    """Training-batch augmentation for ``variable_trials``: the block's T trials in a random
    order per row, of which a uniform number from 1 to T are kept and the rest set to NaN;
    ``variety`` counts the distinct versions of a row (at most 10⁶)."""

    def __init__(self, block: tuple[int, int, int]):
        self.block = block
        self.variety = min(math.factorial(block[1]) * block[1], 10**6)

    def __call__(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        offset, trials, width = self.block
        context = permute_trials(context, [self.block])  # a copy
        kept = torch.randint(1, trials + 1, (context.shape[0], 1), device=context.device)
        absent = torch.arange(trials, device=context.device) >= kept  # (B, T)
        stop = offset + trials * width
        part = context[:, offset:stop].reshape(-1, trials, width)
        context[:, offset:stop] = part.masked_fill(absent[..., None], math.nan).flatten(1)
        return inputs, context


__all__ = ["NPE", "TRIAL_ORDER", "TRIAL_ORDERS"]
