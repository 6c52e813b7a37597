"""Neural likelihood estimation (NLE): learn a surrogate likelihood :math:`q(x \\mid \\theta)`.

Minimising

.. math::
    \\mathcal{L}(\\phi) = \\mathbb{E}_{p(\\theta)\\,p(x \\mid \\theta)}
    \\left[-\\log q_\\phi(x \\mid f(\\theta))\\right]

over simulated pairs makes :math:`q_\\phi` approach the simulator's likelihood wherever the prior
puts mass (:math:`f` is the prior's bijection to unconstrained space, used as the context). The
posterior for an observation is then prior × surrogate, sampled by vectorized MCMC; unlike NPE,
several i.i.d. observations of one θ combine by summing their log-likelihoods.

Failed simulations are a choice here, not a default: excluding them trains
:math:`q(x \\mid \\theta, \\text{valid})`, which biases the posterior wherever failures depend on
θ. ``invalid="error"`` refuses such data, ``invalid="exclude"`` drops the rows with a warning.

References:
    Papamakarios, Sterratt & Murray (2019), Sequential neural likelihood: fast likelihood-free
    inference with autoregressive flows, arXiv:1805.07226.

Example:
    >>> import torch
    >>> from sbitk.simulation.priors import Normal
    >>> prior = Normal(0.0, 1.0, dim=1)
    >>> theta = prior.sample(2000, torch.Generator().manual_seed(0))
    >>> x = theta + 0.5 * torch.randn(2000, 1, generator=torch.Generator().manual_seed(1))
    >>> nle = NLE(prior, estimator="gaussian", config=TrainConfig(max_epochs=10, progress=False),
    ...           mcmc=MCMCConfig(num_chains=20, warmup=20, progress=False))
    >>> posterior = nle.fit(theta, x)
    >>> posterior.likelihood.sample(3, torch.zeros(1), seed=0).shape
    torch.Size([3, 1])
    >>> posterior.sample(40, x=torch.zeros(1), seed=0).shape
    torch.Size([40, 1])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.inference.base import Estimation, check_log_x, check_trials
from sbitk.inference.data import RowReport
from sbitk.inference.training import LARGE_BANK_ROWS, TrainConfig
from sbitk.models.contract import NONE, RATIO, UNNORMALISED, density_kind
from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.bijections import is_box
from sbitk.simulation.priors import Prior

INVALID_CHOICES = ("error", "exclude")
#: NLE's default batch: 256 rows, 512 above ``LARGE_BANK_ROWS`` training rows (NPE: 512 and
#: 1,024). On slcp with 10,000 simulations a batch of 512 held out -12.88 and 256 -12.06.
NLE_BATCH_SIZE = 256
#: NLE's default ``patience`` and ``lr_patience`` (NPE: 30 and 8); see TrainConfig.
NLE_PATIENCE, NLE_LR_PATIENCE = 16, 8


class NLE(Estimation):
    """Neural likelihood estimation: trains :math:`q(x \\mid \\theta)`, samples by MCMC.

    Args:
        prior: The prior the training θ were drawn from (read from the bank when ``None``).
        estimator: A registered name (:func:`~sbitk.models.registry.available_estimators`) or a
            ready ``nn.Module`` of the estimator contract with ``features = D_x`` and
            ``context = D_θ``. It must offer a density (MCMC evaluates it): a sample-only
            estimator (a GAN) is refused. ``None``: the likelihood default,
            :data:`~sbitk.models.registry.DEFAULT_ESTIMATORS` (the spline flow).
        invalid: What to do with failed simulations: ``"error"`` (refuse; the default) or
            ``"exclude"`` (drop them with a warning that the likelihood is then conditioned on
            success).
        trials: Where x holds i.i.d. trials, ``(offset, trials, width)`` blocks whose order each
            training batch permutes (data augmentation: their order carries no information).
            ``None`` (the default): the blocks the bank's simulator declares
            (:func:`~sbitk.simulation.simulator.trial_blocks`); ``False``: never.
        per_trial: Learn the likelihood of one trial, :math:`q(x_t \\mid \\theta)`, from the
            N · T pairs :math:`(\\theta_i, x_{i,t})`, and take :math:`q(x \\mid \\theta)` as the
            product over x's T trials. This is exact, not an approximation, when x is nothing
            but i.i.d. trials (one block of ``trials`` covering x), and the surrogate learns a
            T-times smaller density from T times the pairs. ``None`` (the default): whenever x is
            nothing but trials; ``True``: require it; ``False``: learn x whole (and permute
            its trials in training).
        unconstrained: Condition the surrogate on the prior's unconstrained
            :math:`u = f(\\theta)` (True) or on θ (False). ``None`` (the default): θ when the
            prior is a box, whose bounded θ is a better input than its logit (on slcp the
            held-out log-likelihood is 0.7 nats higher), and u otherwise.
        log_x: Learn the density of log x, column by column (the surrogate's density of x
            takes the Jacobian in): ``None`` (the default) for the columns of x that are
            positive and right-skewed in the training data
            (:func:`~sbitk.inference.data.choose_x_bijection`; on lotka_volterra's populations
            with log-normal noise, C2ST 0.80 instead of 0.96 on observations 1-3), ``True`` for
            every column, ``False`` for none.
        config: Training settings.
        mcmc: Settings of the posterior's MCMC.
        parameter_names, output_names, simulator_name: Carried into the posterior and files.
        estimator_options: Options of the estimator's constructor as a mapping, for a name
            that an argument of this class takes too (a CVAE's ``prior``).
        **estimator_kwargs: Passed to the estimator's constructor.
    """

    role = "nle"
    contract_role = "likelihood"
    default_key = "likelihood"
    x_side = "inputs"
    dims = ("D_x", "D_θ")

    def __init__(
        self,
        prior: Prior | None = None,
        estimator: str | nn.Module | None = None,
        *,
        invalid: str = "error",
        unconstrained: bool | None = None,
        trials: list[tuple[int, int, int]] | bool | None = None,
        per_trial: bool | None = None,
        log_x: bool | None = None,
        config: TrainConfig | None = None,
        mcmc: MCMCConfig | None = None,
        parameter_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        simulator_name: str | None = None,
        estimator_options: Mapping[str, Any] | None = None,
        **estimator_kwargs,
    ):
        if invalid not in INVALID_CHOICES:
            raise SbitkError(f"invalid must be one of {INVALID_CHOICES}, got {invalid!r}")
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
        self.invalid = invalid
        if per_trial is not None and not isinstance(per_trial, bool):
            raise SbitkError(f"per_trial must be True, False or None, got {per_trial!r}")
        self.trials = check_trials(trials)
        self.per_trial = per_trial
        self.log_x = check_log_x(log_x)
        self.conditions_unconstrained = True
        self.mcmc = mcmc or MCMCConfig()

    def _check_kind(self, cls: type) -> None:
        kind = density_kind(cls)
        if kind == NONE:
            raise SbitkError(
                f"NLE samples prior × surrogate likelihood by MCMC, which evaluates the "
                f"likelihood's density; estimator {cls.__name__} ({kind!r} density) offers "
                "samples only: use it for NPE, or pick one with a density"
            )
        if kind == UNNORMALISED:
            raise SbitkError(
                f"NLE needs q(x | θ) normalised for every θ: MCMC over θ compares it across θ, "
                f"and estimator {cls.__name__}'s unknown constant changes with θ; use it for "
                "NPE, or pick one with an exact or estimated density"
            )
        if kind == RATIO:
            raise SbitkError(
                f"estimator {cls.__name__} is a ratio estimator (a classifier of (θ, x) pairs): "
                "train it with NRE (method nre)"
            )

    def _resolve(self) -> None:
        if self.unconstrained is None:
            self.conditions_unconstrained = not is_box(self.prior.bijection())
        else:
            self.conditions_unconstrained = self.unconstrained

    def _handle(self, report: RowReport) -> None:
        if report.n_excluded == 0:
            return
        if self.invalid == "error" and report.n_failed + report.n_non_finite > 0:
            raise SbitkError(
                f"{report.message()}; {self.role.upper()} does not drop failed simulations "
                "silently: pass "
                "invalid='exclude' to train on successful ones only (this biases the "
                "posterior where failures depend on theta), or fix the simulator"
            )
        warnings.warn(
            f"{report.message()}; the surrogate models x given theta *and* a successful "
            "simulation, which biases the posterior where the failure rate depends on theta",
            stacklevel=4,
        )

    def _check_stream(self, source) -> bool:
        if self.invalid != "error":
            return False
        # Streaming sees failures only chunk by chunk: check them all before training.
        for i in range(source.n_chunks):
            source.load(i)
        self._handle(source.report)
        return True

    def _train_config(self, n_rows: int, model: nn.Module | None = None) -> TrainConfig:
        config = super()._train_config(n_rows, model)
        if config.patience is None:
            config = replace(config, patience=NLE_PATIENCE)
        if config.lr_patience is None:
            config = replace(config, lr_patience=NLE_LR_PATIENCE)
        if config.batch_size is None:
            large = n_rows - config.n_validation(n_rows) > LARGE_BANK_ROWS
            config = replace(config, batch_size=2 * NLE_BATCH_SIZE if large else NLE_BATCH_SIZE)
        return config

    def _split_trials(self, x_dim: int) -> int:
        """T when x of ``x_dim`` values is T i.i.d. trials that the surrogate models one at a
        time (see ``per_trial``), else 1."""
        blocks = list(self.trials or [])
        whole = len(blocks) == 1 and blocks[0][0] == 0 and blocks[0][1] * blocks[0][2] == x_dim
        if self.per_trial and not whole:
            raise SbitkError(
                f"per_trial=True needs x to be nothing but i.i.d. trials, one block covering "
                f"its {x_dim} values; the trials are {blocks or 'not declared'}"
            )
        return blocks[0][1] if whole and self.per_trial is not False else 1

    def _pair(self, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        self.trial_count = t = self._split_trials(x.shape[1])
        if t > 1:  # row i's trials become rows i·T, ..., i·T + T − 1
            theta, x = theta.repeat_interleave(t, 0), x.reshape(len(x) * t, x.shape[1] // t)
        x = self._x_view(x)
        if not self.conditions_unconstrained:
            return x, theta
        return x, self.prior.bijection().forward(theta)[0]

    def fit(self, theta, x: Tensor | None = None, *, stream: bool | None = None) -> MCMCPosterior:
        """Train on (θ, x) tensors or a bank; return the MCMC posterior (``.likelihood`` too).

        Args:
            theta: Parameters (N, D_θ), or a simulation bank (then ``x`` is ``None``).
            x: Simulated data (N, D_x).
            stream: For a bank, read it chunk by chunk; ``None`` streams when it would take more
                than half of the memory.
        """
        model = self._train(theta, x, stream)
        likelihood = SurrogateLikelihood(
            model,
            self.prior,
            unconstrained=self.conditions_unconstrained,
            trials=self.trial_count,
            x_bijection=self.x_bijection,
            parameter_names=self.parameter_names,
            output_names=self.output_names,
            simulator_name=self.simulator_name,
            history=self.history,
        )
        return MCMCPosterior(likelihood, self.mcmc)


__all__ = ["NLE", "NLE_BATCH_SIZE"]
