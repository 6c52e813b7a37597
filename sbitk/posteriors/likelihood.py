"""A surrogate likelihood (NLE) and the posterior it gives with the prior, sampled by MCMC.

A trained estimator of :math:`q(x \\mid \\theta)` stands in for the simulator: it draws synthetic
data (:meth:`SurrogateLikelihood.sample`) and, unlike the simulator, evaluates a density. With
the prior it gives an unnormalised log posterior for observations :math:`x_1, \\dots, x_T` drawn
i.i.d. at one θ,

.. math::
    \\log \\tilde p(\\theta \\mid x_{1:T})
    = \\log p(\\theta) + \\sum_{t=1}^{T} \\log q(x_t \\mid \\theta),

which :class:`MCMCPosterior` samples with vectorized slice sampling in the prior's unconstrained
space :math:`u = f(\\theta)`, where the target gains the log-determinant of :math:`f^{-1}`.

Example:
    >>> import torch
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> from sbitk.simulation.priors import BoxUniform
    >>> prior = BoxUniform(-1.0, 1.0, dim=2)
    >>> likelihood = SurrogateLikelihood(ConditionalGaussian(3, 2), prior)
    >>> likelihood.sample(5, torch.zeros(4, 2), seed=0).shape
    torch.Size([5, 4, 3])
    >>> posterior = MCMCPosterior(likelihood, MCMCConfig(num_chains=20, warmup=10,
    ...                                                  sir_candidates=200, progress=False))
    >>> samples = posterior.sample(100, x=torch.zeros(3), seed=0)
    >>> samples.shape, bool(prior.support_contains(samples).all())
    (torch.Size([100, 2]), True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.contract import RATIO, UNNORMALISED, density_kind, has_density
from sbitk.nn.devices import resolve_device
from sbitk.nn.threads import limited_threads
from sbitk.posteriors.base import TrainedEstimator, as_count, ascend, has_gradient
from sbitk.posteriors.mcmc import MCMCConfig, MCMCResult, posterior_chains
from sbitk.simulation.rng import seeded


class SurrogateLikelihood(TrainedEstimator):
    """A trained :math:`q(x \\mid \\theta)`, conditioned on θ or on :math:`u = f(\\theta)`.

    Args:
        estimator: Module with ``estimator(context)`` a distribution over x batched over
            contexts; its context has D_θ columns.
        prior: The prior of the training θ (gives the bijection f and the support).
        unconstrained: The estimator's context is :math:`u = f(\\theta)` (True, the default) or θ
            itself (False).
        trials: The estimator models one of ``trials`` i.i.d. trials that make up the
            simulator's x, so that :math:`q(x \\mid \\theta) = \\prod_t q(x_t \\mid \\theta)`
            and x has ``trials`` times the estimator's features (1, the default: x is whole).
        parameter_names, output_names, simulator_name, history: Carried into model files.
    """

    role = "nle"
    theta_size = "context"

    def __init__(self, estimator: nn.Module, prior, *, trials: int = 1, **kwargs):
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise SbitkError(f"trials must be a positive integer, got {trials!r}")
        self.trials = trials
        super().__init__(estimator, prior, **kwargs)

    @property
    def method(self) -> str:
        """How it was trained: ``"nre"`` for a ratio estimator, else ``"nle"`` (``role``, what
        a model file records, is ``"nle"`` for both)."""
        return "nre" if density_kind(self.estimator) == RATIO else "nle"

    def _accept(self, estimator: nn.Module) -> None:
        if not has_density(estimator):
            raise SbitkError(
                f"a surrogate likelihood evaluates a density; estimator "
                f"{type(estimator).__name__} offers samples only"
            )

    def _theta(self, theta: Tensor) -> tuple[Tensor, bool]:
        theta, single = self._rows(theta, "theta", self.theta_dim, "B")
        if not self.prior.support_contains(theta).all():
            raise SbitkError("theta must lie inside the prior's support")
        return theta.to(self.device, torch.get_default_dtype()), single

    def observations(self, x: Tensor) -> Tensor:
        """Check x and return its i.i.d. trials as the estimator's rows on the device: x's rows
        (T, D_x), each split into its :attr:`trials` (T · trials, D_x / trials)."""
        return self._x_view(self._trial_rows(x))

    def _trial_rows(self, x: Tensor) -> Tensor:
        """x's rows checked and split into trials, as given (not transformed)."""
        rows = self._x_rows(x, "n_trials")[0]
        if rows.shape[0] == 0:
            raise SbitkError("x holds no observation: pass one row (D_x,) or i.i.d. trials")
        return rows.reshape(-1, self.x_dim // self.trials)

    @limited_threads
    @torch.no_grad()
    def sample(self, n: int, theta: Tensor, *, seed: int | None = None) -> Tensor:
        """Simulate with the surrogate: ``n`` draws of x for each θ.

        Args:
            n: Draws per θ.
            theta: One θ (D_θ,) or a batch (B, D_θ), inside the prior's support.
            seed: Seeds the draws.

        Returns:
            x of shape (n, D_x) for one θ, (n, B, D_x) for a batch; on the CPU.
        """
        theta, single = self._theta(theta)
        with seeded(seed, [self.device]):
            x = self.estimator(self.context(theta)).sample((n * self.trials,))
        x = self.x_bijection.inverse(x).cpu()
        # The draws are i.i.d.: trial t of draw i is draw i · trials + t.
        x = x.reshape(n, self.trials, len(theta), -1).transpose(1, 2).reshape(n, len(theta), -1)
        return x[:, 0] if single else x

    def context(self, theta: Tensor, u: Tensor | None = None) -> Tensor:
        """The estimator's context for θ (C, D_θ) inside the support; ``u = f(θ)`` if known."""
        if not self.unconstrained:
            return theta
        return self.bijection.forward(theta)[0] if u is None else u

    def log_prob_context(self, x: Tensor, context: Tensor) -> Tensor:
        """Summed log-likelihood of trials x (T, D_x) at contexts (C, D_θ): shape (C,)."""
        c, t = context.shape[0], x.shape[0]
        ctx = context.repeat_interleave(t, dim=0)
        lp = self.estimator(ctx).log_prob(x.repeat(c, 1))
        return lp.reshape(c, t).sum(-1)

    @limited_threads
    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """Surrogate :math:`\\sum_t \\log q(x_t \\mid \\theta)` for θ (*, D_θ): shape (*),
        a density of x itself (with the Jacobian of the transform x was learned in)."""
        raw = self._trial_rows(x)
        xs = self._x_view(raw)
        theta = self._check_theta(theta)
        flat = theta.reshape(-1, self.theta_dim)
        inside = self.prior.support_contains(flat)
        jacobian = self.x_bijection.forward(raw)[1].sum()
        lp = self.log_prob_context(xs, self.context(flat)) + jacobian
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        return lp.reshape(theta.shape[:-1])

    def posterior(self, config: MCMCConfig | None = None) -> MCMCPosterior:
        """The posterior surrogate × prior, sampled by MCMC."""
        return MCMCPosterior(self, config)


class MCMCPosterior:
    """The posterior :math:`p(\\theta) \\prod_t q(x_t \\mid \\theta)`, sampled by slice sampling.

    Args:
        likelihood: The surrogate likelihood.
        config: MCMC settings (chains, warm-up, thinning, initialisation).
    """

    role = "nle"
    #: Samples one observation per call (a chain run each).
    amortized = False
    #: Combines i.i.d. trials of one observation by summing their log-likelihoods.
    iid_trials = True
    #: :meth:`log_prob` is prior × surrogate likelihood, without the evidence.
    density = UNNORMALISED

    @property
    def method(self) -> str:
        """``"nle"`` or ``"nre"``: the likelihood's (:attr:`SurrogateLikelihood.method`)."""
        return self.likelihood.method

    def to(self, device: str | torch.device) -> MCMCPosterior:
        """Move the surrogate to ``device`` (``"auto"``: CUDA when present); a device this
        machine lacks is one line naming it."""
        self.likelihood.estimator.to(resolve_device(device))
        return self

    def __init__(self, likelihood: SurrogateLikelihood, config: MCMCConfig | None = None):
        self.likelihood = likelihood
        self.prior = likelihood.prior
        self.bijection = likelihood.bijection
        self.config = config or MCMCConfig()
        #: Diagnostics of the last :meth:`sample` call (R-hat, ESS, evaluations, time).
        self.last_result: MCMCResult | None = None

    def __getattr__(self, name: str):
        # Names, simulator and history are the likelihood's.
        if name in (
            "parameter_names",
            "output_names",
            "simulator_name",
            "history",
            "theta_dim",
            "x_dim",
            "estimator",
            "device",
            "absent_columns",
        ):
            return getattr(self.likelihood, name)
        raise AttributeError(name)

    def _target(self, xs: Tensor):
        def log_target(u: Tensor) -> Tensor:
            theta = self.bijection.inverse(u)
            logdet = self.bijection.forward(theta)[1]
            lik = self.likelihood.log_prob_context(xs, self.likelihood.context(theta, u))
            return lik + self.prior.log_prob(theta) - logdet

        return log_target

    def _weight(self, xs: Tensor):
        """The SIR weight of prior draws: their summed surrogate log-likelihood."""

        def log_weight(theta: Tensor, u: Tensor) -> Tensor:
            ctx = self.likelihood.context(theta, u)
            chunk = max(1, 50_000 // len(xs))
            return torch.cat([self.likelihood.log_prob_context(xs, c) for c in ctx.split(chunk)])

        return log_weight

    @limited_threads
    @torch.no_grad()
    def sample(
        self,
        n: int,
        x: Tensor | None = None,
        *,
        seed: int | None = None,
        config: MCMCConfig | None = None,
    ) -> Tensor:
        """Draw ``n`` posterior samples of θ by MCMC.

        Args:
            n: Samples in all, spread over ``min(num_chains, n / 10)`` chains (at least 4).
            x: One observation (D_x,) or i.i.d. trials of one θ (n_trials, D_x).
            seed: Seeds initialisation and chains (``config.seed`` when omitted).
            config: Overrides the posterior's MCMC settings for this call.

        Returns:
            θ of shape (n, D_θ) on the CPU. :attr:`last_result` holds the chains (in θ space),
            R-hat and ESS.
        """
        if x is None:
            raise SbitkError("pass the observation: x=x_o of shape (D_x,) or (n_trials, D_x)")
        n = as_count(n, "n")
        config = config or self.config
        seed = config.seed if seed is None else as_count(seed, "seed")
        xs = self.likelihood.observations(x)
        if n == 0:
            return torch.empty(0, self.likelihood.theta_dim)
        self.last_result = result = posterior_chains(
            self._target(xs), self._weight(xs), self.prior, n, config, seed, xs.device
        )
        flat = result.samples.transpose(0, 1).reshape(-1, self.likelihood.theta_dim)
        return flat[:n]

    @limited_threads
    def log_prob(self, theta: Tensor, x: Tensor | None = None) -> Tensor:
        """Unnormalised log posterior: log prior plus the summed surrogate log-likelihood."""
        if x is None:
            raise SbitkError("pass the observation: x=x_o")
        lik = self.likelihood.log_prob(x, theta)
        theta = torch.as_tensor(theta).to(lik.device, lik.dtype)
        return lik + self.prior.log_prob(theta)

    @limited_threads
    def map(
        self,
        x: Tensor | None = None,
        *,
        steps: int = 100,
        seed: int | None = 0,
    ) -> Tensor:
        """The maximum a posteriori θ: the best MCMC sample, refined by at most ``steps``
        iterations of L-BFGS in u (:func:`~sbitk.posteriors.base.ascend`); the best sample
        itself where the surrogate's density carries no gradient (flow matching, diffusion)."""
        samples = self.sample(self.config.num_chains * 10, x, seed=seed)
        xs = self.likelihood.observations(x)
        with torch.no_grad():
            lp = self.log_prob(samples, x)
            best = samples[lp.argmax()].to(xs.device, xs.dtype)
            start = self.bijection.forward(best.unsqueeze(0))[0]
        lik = self.likelihood
        if not has_gradient(
            lambda u: lik.log_prob_context(xs, lik.context(self.bijection.inverse(u), u)), start
        ):
            return best.detach().cpu()
        u = ascend(self._target(xs), start, steps)
        with torch.no_grad():
            theta = self.bijection.inverse(u)[0]
            if self.log_prob(theta, x) < lp.max():
                theta = best
        return theta.detach().cpu()

    def __repr__(self) -> str:
        return f"MCMCPosterior({self.likelihood!r}, {self.config})"


__all__ = ["MCMCPosterior", "SurrogateLikelihood"]
