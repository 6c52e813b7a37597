"""A posterior sampled directly from an amortized conditional density estimator (NPE).

The estimator models :math:`q(u \\mid x)` over the unconstrained parameters
:math:`u = f(\\theta)`, where :math:`f` is the prior's bijection to the real line. Sampling draws
:math:`u` and returns :math:`\\theta = f^{-1}(u)`, so a bounded prior's support is never left; the
density in parameter space adds the log-determinant of :math:`f`:

.. math:: \\log q(\\theta \\mid x) = \\log q(f(\\theta) \\mid x) + \\log |\\det J_f(\\theta)|.

An estimator trained directly on θ (``unconstrained=False``) is truncated to the prior's
support by rejection, with a cap on attempts and on time, and the acceptance rate reported. An
observation for which almost every proposal misses the support (one far from the training data)
is completed by slice sampling the truncated estimator instead, with a warning.

An estimator whose density is unnormalised (an energy model) is sampled as NLE's posterior is:
by the slice sampler of :mod:`sbitk.posteriors.mcmc`, one observation at a time, with chains
started by importance resampling of prior draws (:func:`~sbitk.posteriors.mcmc.posterior_chains`).
Such a posterior is not ``amortized``: the workflow then samples it chain by chain, as NLE's.

Example:
    >>> import torch
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> from sbitk.simulation.priors import BoxUniform
    >>> posterior = DirectPosterior(ConditionalGaussian(2, 3), BoxUniform(-1.0, 1.0, dim=2))
    >>> posterior.sample(100, x=torch.zeros(4, 3), seed=0).shape
    torch.Size([100, 4, 2])
    >>> posterior.log_prob(torch.zeros(7, 2), x=torch.zeros(3)).shape
    torch.Size([7])
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.contract import NONE, RATIO, UNNORMALISED, density_kind, has_density
from sbitk.nn.devices import resolve_device
from sbitk.nn.threads import limited_threads
from sbitk.posteriors.base import TrainedEstimator, as_count, ascend, has_gradient
from sbitk.posteriors.mcmc import MCMCConfig, posterior_chains, sir_init, slice_sample
from sbitk.simulation.bijections import IdentityBijection
from sbitk.simulation.priors import Prior
from sbitk.simulation.rng import seeded


def default_chunk_rows(device: torch.device | str) -> int:
    """Rows per estimator call when sampling: small on the CPU, large on an accelerator.

    A flow's sampling pass is a chain of elementwise kernels over (rows, D, K) tensors; on the
    CPU they run several times faster while those tensors fit in the cache. Drawing 10⁶
    samples of a 10-D spline flow took 5.4 s in chunks of 8,192 rows against 14.7 s in chunks
    of 200,000 (one thread). A GPU wants the opposite: few, large launches.
    """
    return 8192 if torch.device(device).type == "cpu" else 1 << 20


#: Below this acceptance rate (after three rounds) an observation's samples are completed by MCMC.
MCMC_FALLBACK_RATE = 1e-3
#: Chains and warm-up sweeps of that MCMC.
MCMC_FALLBACK_CHAINS, MCMC_FALLBACK_WARMUP = 64, 50


class DirectPosterior(TrainedEstimator):
    """Amortized posterior :math:`q(\\theta \\mid x)` from a trained estimator.

    Args:
        estimator: Module with ``estimator(context)`` a distribution over u (or θ), batched over
            contexts, with ``sample`` and ``log_prob``.
        prior: The prior the training θ were drawn from.
        unconstrained: The estimator models ``u = prior.bijection().forward(θ)`` (the default);
            otherwise it models θ and samples are truncated to the support by rejection.
        parameter_names: Names of θ's columns.
        output_names: Names of x's columns.
        simulator_name: The simulator the training data came from.
        history: The training history (a :class:`~sbitk.inference.training.History`) or None.
        max_rejection_attempts: Rejection rounds before giving up (``unconstrained=False``).
        max_rejection_time: Seconds of rejection sampling before giving up.
        mcmc: The MCMC settings for an estimator with an unnormalised density (``None``: the
            defaults of :class:`~sbitk.posteriors.mcmc.MCMCConfig`, NLE's).
    """

    role = "npe"
    #: How it was trained (NLE and NRE tell themselves apart here; the role does not).
    method = "npe"
    theta_size = "features"
    #: Combines i.i.d. trials of one observation (only a likelihood can).
    iid_trials = False

    def __init__(
        self,
        estimator: nn.Module,
        prior: Prior,
        *,
        max_rejection_attempts: int = 100,
        max_rejection_time: float = 60.0,
        mcmc: MCMCConfig | None = None,
        **role_options,
    ):
        super().__init__(estimator, prior, **role_options)
        if not self.unconstrained and not has_density(estimator):
            raise SbitkError(
                f"truncating to the prior's support (unconstrained=False) needs a density; "
                f"estimator {type(estimator).__name__} offers samples only"
            )
        if not self.unconstrained:
            self.bijection = IdentityBijection(prior.dim)
        self.max_rejection_attempts = int(max_rejection_attempts)
        self.max_rejection_time = float(max_rejection_time)
        #: Share of proposals inside the support in the last ``sample`` call (1.0 without
        #: rejection).
        self.acceptance_rate = 1.0
        #: Indices of the observations whose samples rejection could not complete in the last
        #: ``sample`` call, completed by slice sampling the truncated estimator instead.
        self.mcmc_observations: list[int] = []
        #: MCMC settings, for an estimator with an unnormalised density.
        self.config = mcmc or MCMCConfig()
        #: Chains and diagnostics of the last observation sampled by MCMC (unnormalised
        #: density), as :class:`~sbitk.posteriors.mcmc.MCMCResult` in θ; else None.
        self.last_result = None

    # ---- plumbing ----------------------------------------------------------------------------
    def _accept(self, estimator: nn.Module) -> None:
        if density_kind(estimator) == RATIO:
            raise SbitkError(
                f"estimator {type(estimator).__name__} estimates a likelihood-to-evidence ratio "
                "and draws nothing: it is no posterior; use it as NRE's classifier"
            )

    @property
    def amortized(self) -> bool:
        """Whether one call samples a batch of observations by independent draws (the workflow
        batches its draws); not for an unnormalised density, which is sampled by MCMC."""
        return self.density != UNNORMALISED

    @property
    def density(self) -> str:
        """The density :meth:`log_prob` gives: the estimator's kind (``"none"``: no log_prob)."""
        return density_kind(self.estimator)

    def _need_density(self, what: str) -> None:
        if self.density == NONE:
            raise SbitkError(
                f"{what} needs a density, and estimator {type(self.estimator).__name__} offers "
                "samples only; sample() works, and the sample-based checks (SBC, TARP, C2ST, "
                "z-score) run on its draws"
            )

    def to(self, device: str | torch.device) -> DirectPosterior:
        """Move the estimator to ``device`` (``"auto"``: CUDA when present); a device this
        machine lacks is one line naming it."""
        self.estimator.to(resolve_device(device))
        return self

    def _x(self, x: Tensor | None) -> tuple[Tensor, bool]:
        """Check x and return it as (B, D_x) on the device, and whether it was a single row."""
        if x is None:
            raise SbitkError("pass the observation: x=x_o of shape (D_x,) or (B, D_x)")
        x, single = self._x_rows(x, "B")
        return self._x_view(x), single

    def _draw_u(self, n: int, x: Tensor, chunk_rows: int) -> Tensor:
        """n draws (n, B, D) for each observation of x (B, D_x), at most ``chunk_rows`` rows per
        estimator call: all n draws of a group of observations per call where they fit, else
        as many of one observation's draws as fit. (An ensemble draws, per call, as many rows
        from each member as the observation that picked it most often, so few draws for each
        of many observations per call would cost it up to K times one member's.)"""
        if n == 0 or x.shape[0] == 0:
            return x.new_zeros(n, x.shape[0], self.theta_dim)
        groups = []
        for xs in x.split(max(1, chunk_rows // n)):
            per = max(1, chunk_rows // xs.shape[0])
            dist = self.estimator(xs)
            groups.append(torch.cat([dist.sample((min(per, n - s),)) for s in range(0, n, per)]))
        return torch.cat(groups, 1)

    # ---- public API --------------------------------------------------------------------------
    @limited_threads
    @torch.no_grad()
    def sample(
        self,
        n: int,
        x: Tensor | None = None,
        *,
        seed: int | None = None,
        chunk_rows: int | None = None,
        config: MCMCConfig | None = None,
    ) -> Tensor:
        """Draw ``n`` samples of θ for each observation.

        Args:
            n: Samples per observation.
            x: One observation (D_x,) or a batch (B, D_x).
            seed: Seeds the draws (the global RNG is restored afterwards).
            chunk_rows: Largest number of rows drawn in one estimator call; ``None`` picks
                :func:`default_chunk_rows` for the device.
            config: Overrides :attr:`config`, the MCMC settings of an unnormalised density,
                for this call.

        Returns:
            θ of shape (n, D_θ) for one observation, (n, B, D_θ) for a batch; on the CPU. An
            unnormalised density's draws come from ``min(num_chains, n / 10)`` chains, each
            observation's in :attr:`last_result` after the call (the last one's).
        """
        x, single = self._x(x)
        n = as_count(n, "n")
        seed = None if seed is None else as_count(seed, "seed")
        if chunk_rows is None:
            chunk_rows = default_chunk_rows(self.device)
        elif chunk_rows < 1:
            raise SbitkError(f"chunk_rows must be >= 1, got {chunk_rows}")
        with seeded(seed, [self.device]):
            if not self.amortized:
                theta = self._mcmc(n, x, config or self.config)
            elif self.unconstrained:
                theta = self.bijection.inverse(self._draw_u(n, x, chunk_rows))
                self.acceptance_rate = 1.0
            else:
                theta = self._reject(n, x, chunk_rows)
        theta = theta.cpu()
        return theta[:, 0] if single else theta

    def _reject(self, n: int, x: Tensor, chunk_rows: int) -> Tensor:
        b = x.shape[0]
        out = x.new_zeros(n, b, self.theta_dim)
        filled = torch.zeros(b, dtype=torch.long)
        proposed, accepted = torch.zeros(b), torch.zeros(b)
        hopeless = torch.zeros(b, dtype=torch.bool)
        start = time.perf_counter()
        want = n
        for attempt in range(self.max_rejection_attempts):
            todo = ((filled < n) & ~hopeless).nonzero().squeeze(-1)
            if todo.numel() == 0:
                break
            draw = self._draw_u(want, x[todo.to(x.device)], chunk_rows)  # (want, b', D)
            inside = self.prior.support_contains(draw).cpu()
            proposed[todo] += inside.shape[0]
            accepted[todo] += inside.sum(0).float()
            for j, i in enumerate(todo.tolist()):
                good = draw[inside[:, j], j]
                take = min(n - int(filled[i]), good.shape[0])
                out[filled[i] : filled[i] + take, i] = good[:take]
                filled[i] += take
            rates = accepted / proposed.clamp_min(1)
            # An observation whose proposals almost all miss the support would need too many
            # rounds: it is sampled by MCMC below instead.
            if attempt >= 2:
                hopeless |= (filled < n) & (rates < MCMC_FALLBACK_RATE)
            rate = max(float(rates[todo].min()), MCMC_FALLBACK_RATE)
            want = min(int(1.2 * (n - int(filled[todo].min())) / rate) + 1, 100 * n + 1)
            if time.perf_counter() - start > self.max_rejection_time:
                break
        self.acceptance_rate = float(accepted.sum() / proposed.sum().clamp_min(1))
        short = (filled < n).nonzero().squeeze(-1).tolist()
        self.mcmc_observations = short
        if short:
            for i in short:
                k = int(filled[i])
                out[k:, i] = self._truncated_mcmc(x[i], n - k, out[:k, i])
            warnings.warn(
                f"rejection sampling accepted only {self.acceptance_rate:.2%} of the proposals "
                f"(the estimator puts its mass outside the prior's support); the missing "
                f"samples of {len(short)} observation(s) (indices {short[:10]}) were drawn by "
                "slice sampling the estimator truncated to the support, which gives correlated "
                "draws. Such observations may lie outside what the training data covers.",
                stacklevel=3,
            )
        elif self.acceptance_rate < 0.01 and proposed.sum() > 0:  # none asked: nothing to say
            warnings.warn(
                f"rejection sampling accepted only {self.acceptance_rate:.2%} of the proposals; "
                "the estimator puts most of its mass outside the prior's support",
                stacklevel=3,
            )
        return out

    def _truncated_mcmc(self, x: Tensor, m: int, accepted: Tensor) -> Tensor:
        """``m`` draws of the estimator truncated to the support for one observation ``x``, by
        slice sampling in the prior's unconstrained coordinates.

        Chains start from the samples already ``accepted`` (k, D) where there are enough, else
        from prior draws resampled by their estimator density (sampling-importance-resampling).
        """
        bijection, dist = self.prior.bijection(), self.estimator(x.unsqueeze(0))
        chains = min(MCMC_FALLBACK_CHAINS, m)
        gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, ())))
        if accepted.shape[0] >= chains:
            init = accepted[torch.randperm(accepted.shape[0], generator=gen)[:chains]]
            init = bijection.forward(init.to(x))[0]
        else:
            config = MCMCConfig(num_chains=chains, sir_candidates=10 * MCMC_FALLBACK_CHAINS**2)
            try:
                init = sir_init(
                    self._log_weight(dist), self.prior, config, gen, x.device, x.dtype
                )[0]
            except SbitkError as err:
                raise SbitkError(
                    f"rejection sampling found no samples inside the prior's support, and {err}; "
                    "train with unconstrained=True"
                ) from err
        draws = -(-m // chains)
        result = slice_sample(
            self._target(dist),
            init,
            draws,
            warmup=MCMC_FALLBACK_WARMUP,
            seed=int(torch.randint(2**31 - 1, (), generator=gen)),
        )
        u = result.samples.transpose(0, 1).reshape(-1, self.theta_dim)[:m]
        return bijection.inverse(u)

    def _log_q(self, theta: Tensor, dist) -> Tensor:
        """The estimator's log density of θ (N, D) under ``dist`` (one observation's), (N,)."""
        u, logdet = self.bijection.forward(theta)
        return dist.log_prob(u.unsqueeze(-2)).squeeze(-1) + logdet

    def _log_weight(self, dist):
        """Weights q(θ | x) / p(θ) of prior draws under one observation's ``dist``, in logs: the
        start of MCMC by sampling-importance-resampling (see :func:`sir_init`)."""

        def log_weight(theta: Tensor, u: Tensor) -> Tensor:
            parts = [self._log_q(t, dist) for t in theta.split(50_000)]
            return torch.cat(parts) - self.prior.log_prob(theta)

        return log_weight

    def _target(self, dist):
        """The log density of one observation's posterior in the prior's unconstrained
        coordinates v = f(θ), for MCMC: :math:`\\log q(\\theta(v) \\mid x) + \\log|\\det
        J_{f^{-1}}(v)|`, ``-inf`` where it is not finite."""
        bijection = self.prior.bijection()

        def log_target(v: Tensor) -> Tensor:
            theta = bijection.inverse(v)
            lp = self._log_q(theta, dist) - bijection.forward(theta)[1]
            return torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf))

        return log_target

    def _mcmc(self, n: int, x: Tensor, config: MCMCConfig) -> Tensor:
        """(n, B, D) draws by slice sampling, one observation of x (B, D_x) at a time, with
        NLE's sampler and settings; the chains start from prior draws resampled by q / p."""
        out = x.new_zeros(n, x.shape[0], self.theta_dim)
        if n == 0:
            return out
        for i in range(x.shape[0]):
            dist = self.estimator(x[i : i + 1])
            seed = int(torch.randint(2**31 - 1, ()))
            self.last_result = result = posterior_chains(
                self._target(dist), self._log_weight(dist), self.prior, n, config, seed, x.device
            )
            out[:, i] = result.samples.transpose(0, 1).reshape(-1, self.theta_dim)[:n]
        self.acceptance_rate = 1.0
        return out

    @limited_threads
    def log_prob(self, theta: Tensor, x: Tensor | None = None) -> Tensor:
        """The log density of θ under :math:`q(\\theta \\mid x)`; ``-inf`` outside the support.

        Args:
            theta: (*, D_θ) for one observation; for a batch of B observations (*, B, D_θ).
            x: One observation (D_x,) or a batch (B, D_x).

        Returns:
            Log densities of shape (*); not normalised for the truncation when
            ``unconstrained=False``. With an estimated density (a VAE) a Monte Carlo estimate,
            with an unnormalised one (an energy model) up to a constant per observation.
        """
        self._need_density("log_prob")
        x, single = self._x(x)
        theta = self._check_theta(theta)
        if not single and (theta.dim() < 2 or theta.shape[-2] != x.shape[0]):
            raise SbitkError(
                f"with a batch of {x.shape[0]} observations theta must have shape "
                f"(*, {x.shape[0]}, {self.theta_dim}), got {tuple(theta.shape)}"
            )
        inside = self.prior.support_contains(theta)
        if theta.numel() == 0:
            return theta.new_zeros(theta.shape[:-1])
        # θ outside the support (NaN included) is evaluated at a point inside and masked, so
        # that no estimator sees values it may refuse
        anchor = self.bijection.inverse(theta.new_zeros(self.theta_dim))
        theta = torch.where(inside.unsqueeze(-1), theta, anchor)
        u, logdet = self.bijection.forward(theta)
        dist = self.estimator(x)
        lp = dist.log_prob(u.unsqueeze(-2) if single else u)
        lp = (lp.squeeze(-1) if single else lp) + logdet
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    @limited_threads
    def map(
        self,
        x: Tensor | None = None,
        *,
        n_init: int = 1_000,
        steps: int = 100,
        seed: int | None = 0,
    ) -> Tensor:
        """The maximum a posteriori θ: the best of ``n_init`` samples, refined by at most
        ``steps`` iterations of L-BFGS (:func:`~sbitk.posteriors.base.ascend`); the best sample
        itself where the estimator's density carries no gradient (flow matching, diffusion).

        The ascent runs in unconstrained space on :math:`\\log q(\\theta(u) \\mid x)`, so it stays
        inside the prior's support.

        Returns:
            θ of shape (D_θ,) for one observation, (B, D_θ) for a batch; on the CPU.
        """
        self._need_density("map")
        xb, single = self._x(x)
        with torch.no_grad():
            init = self.sample(n_init, xb, seed=seed).to(self.device)  # (n, B, D)
            lp = self.log_prob(init, xb)
            best = init[lp.argmax(0), torch.arange(xb.shape[0])]  # (B, D)
            start = self.bijection.forward(best)[0]
        if not has_gradient(lambda u: self.estimator(xb[:1]).log_prob(u), start[:1]):
            return best.cpu()[0] if single else best.cpu()
        # Each observation ascends on its own, so that one that meets a non-finite density (or
        # converges early) does not end the others' ascent.
        u = torch.cat([
            ascend(lambda u, x=x: self._log_prob_u(u, self.bijection.inverse(u), x), s, steps)
            for s, x in zip(start.split(1), xb.split(1), strict=True)
        ])  # fmt: skip
        with torch.no_grad():
            theta = self.bijection.inverse(u)
            final = self.log_prob(theta.unsqueeze(0), xb)[0]
            # Keep the starting point where the ascent did not improve (flat or noisy regions).
            theta = torch.where((final >= lp.max(0).values).unsqueeze(-1), theta, best)
        theta = theta.detach().cpu()
        return theta[0] if single else theta

    def _log_prob_u(self, u: Tensor, theta: Tensor, x: Tensor) -> Tensor:
        _, logdet = self.bijection.forward(theta)
        return self.estimator(x).log_prob(u) + logdet


__all__ = ["DirectPosterior", "default_chunk_rows", "seeded"]
