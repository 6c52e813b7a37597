r"""Approximate Bayesian computation (ABC): rejection ABC and SMC-ABC, the classical baselines.

ABC needs no model of the likelihood, only simulations. A parameter :math:`\theta` is kept when
the data it simulates land close to the observation:

.. math::

    \pi_\epsilon(\theta \mid x_o) \propto p(\theta) \int \mathbb 1\bigl[
        d(x, x_o) \le \epsilon\bigr]\, p(x \mid \theta)\, dx
    \;\xrightarrow{\epsilon \to 0}\; p(\theta \mid x_o)
    \quad (\text{for sufficient summaries}).

The distance is Euclidean between summaries :math:`s(x)` standardised by their median absolute
deviation (MAD) under the prior predictive, :math:`d(x, x_o) = \lVert (s(x) - s(x_o)) / m
\rVert`, so that no summary dominates because of its units.

* **Rejection ABC** simulates from the prior and keeps the closest ``quantile`` of the draws
  (or all within ``tolerance``).
* **SMC-ABC** (population Monte Carlo, Beaumont et al. 2009) moves a population of particles
  through shrinking tolerances :math:`\epsilon_1 > \epsilon_2 > \dots`, each the ``alpha``
  quantile of the previous population's distances. New particles are drawn from the previous
  ones (chosen by weight), perturbed by a Gaussian with their weighted covariance, and kept
  when their simulation falls within :math:`\epsilon_t`; the weights
  :math:`w_i \propto p(\theta_i) / \sum_j w_j^{(t-1)} K(\theta_i \mid \theta_j)` correct for the
  proposal. It stops when the simulation budget is spent, the acceptance rate falls below
  ``min_acceptance``, or after ``max_rounds``. Each round is sized from the budget left, so
  that no simulation is wasted: a round keeps the closest ``num_particles`` of its
  simulations; when what would be left after it could not fund another round, it spends
  that too and its tolerance drops below :math:`\epsilon_t`; and when the budget ends it
  before :math:`\epsilon_t` is reached, its closest particles still form the last
  population, at a tolerance between :math:`\epsilon_t` and :math:`\epsilon_{t-1}`.
* **Regression adjustment** (Beaumont, Zhang & Balding 2002) corrects each kept particle for the
  distance still left between its summaries and the observation, by the weighted least-squares
  fit :math:`\theta \approx \alpha + \beta^\top (s - s_o)`:
  :math:`\theta_i^* = \theta_i - \beta^\top (s_i - s_o)`, done in the prior's unconstrained
  coordinates so that adjusted particles stay in the support. For a linear-Gaussian model it is
  exact.

Every result records the number of simulations used.

References:
    Pritchard et al. (1999), "Population growth of human Y chromosomes", Mol. Biol. Evol. 16.
    Beaumont, Zhang & Balding (2002), "Approximate Bayesian computation in population
    genetics", Genetics 162(4).
    Beaumont, Cornuet, Marin & Robert (2009), "Adaptive approximate Bayesian computation",
    Biometrika 96(4), arXiv:0805.2256.

Example:
    >>> import torch
    >>> from sbitk.simulation.priors import Normal
    >>> prior = Normal(0.0, 1.0, dim=1)
    >>> def simulate(theta, generator):
    ...     return theta + 0.5 * torch.randn(theta.shape, generator=generator)
    >>> result = rejection_abc(simulate, torch.tensor([1.0]), prior=prior, seed=0)
    >>> result.num_simulations, result.samples.shape
    (10000, torch.Size([100, 1]))
    >>> round(float(result.samples.mean()), 1)  # exact posterior mean 0.8
    0.8
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.divergences.kernels import sq_dist
from sbitk.simulation.priors import Prior

SimulateFn = Callable[[Tensor, torch.Generator], Tensor]
Summary = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ABCResult:
    """Weighted particles approximating the posterior at one observation.

    Attributes:
        samples: Particles (n, D_θ).
        weights: Normalised weights (n,) (uniform for rejection ABC).
        distances: Standardised distance of each particle's simulation to the observation.
        tolerance: The final :math:`\\epsilon`.
        tolerances: :math:`\\epsilon` of every round, the largest distance it kept (one for
            rejection ABC).
        acceptance_rates: Kept / simulated in every round.
        num_simulations: Simulations run, failed ones included; at most the budget.
        scale: The MAD scale of each summary.
        adjusted: Whether the particles were regression-adjusted.
    """

    samples: Tensor
    weights: Tensor
    distances: Tensor
    tolerance: float
    tolerances: tuple[float, ...]
    acceptance_rates: tuple[float, ...]
    num_simulations: int
    scale: Tensor
    adjusted: bool

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` draws (n, D_θ) resampled with replacement by weight."""
        generator = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.samples[idx]

    @property
    def effective_sample_size(self) -> float:
        """Kish's :math:`(\\sum w)^2 / \\sum w^2`."""
        return float(1.0 / self.weights.square().sum())


def _setup(simulator, prior: Prior | None, x_o: Tensor) -> tuple[SimulateFn, Prior, Tensor]:
    if prior is None:
        prior = getattr(simulator, "prior", None)
        if prior is None:
            raise SbitkError("ABC needs a prior: pass prior= or a Simulator that declares one")
    if not callable(simulator):
        raise SbitkError(f"ABC: simulator must be callable, got {type(simulator).__name__}")
    # ABC simulates on the CPU: an observation on a GPU joins it there
    x_o = torch.as_tensor(x_o, dtype=torch.get_default_dtype(), device="cpu")
    if x_o.dim() != 1 or not bool(torch.isfinite(x_o).all()):
        raise SbitkError(f"ABC: x_o must be one finite observation (D_x,), got {tuple(x_o.shape)}")
    return simulator, prior, x_o


def _summaries(summary: Summary | None, x: Tensor, x_o: Tensor) -> Tensor:
    s = x if summary is None else summary(x)
    if s.dim() != 2 or s.shape[0] != x.shape[0]:
        raise SbitkError(
            f"ABC: summaries must be (N, S), got {tuple(s.shape)} for {x.shape[0]} rows"
        )
    return s


def _simulate(simulate: SimulateFn, theta: Tensor, x_o: Tensor, generator) -> Tensor:
    x = simulate(theta, generator)
    if x.dim() != 2 or x.shape != (theta.shape[0], x_o.shape[0]):
        raise SbitkError(
            f"ABC: the simulator must return ({theta.shape[0]}, {x_o.shape[0]}), got "
            f"{tuple(x.shape)}"
        )
    return x.to(x_o)


def _mad_scale(s: Tensor) -> Tensor:
    """Median absolute deviation of each summary over the finite rows (1 where it is 0)."""
    s = s[torch.isfinite(s).all(-1)]
    if s.shape[0] < 2:
        raise SbitkError("ABC: fewer than 2 finite simulations to standardise the summaries")
    mad = (s - s.median(0).values).abs().median(0).values
    return torch.where(mad > 0, mad, torch.ones_like(mad))


def _distance(s: Tensor, s_o: Tensor, scale: Tensor) -> Tensor:
    d = ((s - s_o) / scale).norm(dim=-1)
    return torch.where(torch.isfinite(d), d, math.inf)  # failed simulations are never kept


def regression_adjust(
    theta: Tensor, s: Tensor, s_o: Tensor, weights: Tensor, prior: Prior | None = None
) -> Tensor:
    r"""Linear regression adjustment of ABC particles (Beaumont, Zhang & Balding 2002).

    Fits :math:`u \approx \alpha + \beta^\top (s - s_o)` by weighted least squares, with
    :math:`u` the prior's unconstrained coordinates of :math:`\theta` (θ itself without a
    prior), and returns :math:`\theta^* = f^{-1}\bigl(u - \beta^\top (s - s_o)\bigr)`.

    Args:
        theta: Particles (n, D_θ).
        s: Their summaries (n, S).
        s_o: The observation's summaries (S,).
        weights: Particle weights (n,).
        prior: Its bijection maps θ to unconstrained coordinates (optional).

    Returns:
        Adjusted particles (n, D_θ).

    Example:
        >>> theta = torch.tensor([[0.0], [1.0], [2.0]])
        >>> s = theta * 2 + 1
        >>> adjusted = regression_adjust(theta, s, torch.tensor([3.0]), torch.ones(3))
        >>> adjusted.flatten().round(decimals=4)
        tensor([1., 1., 1.])
    """
    bijection = prior.bijection() if prior is not None else None
    u = bijection.forward(theta)[0] if bijection is not None else theta
    if theta.shape[0] <= s.shape[1] + 1:
        raise SbitkError(
            f"regression_adjust: needs more particles ({theta.shape[0]}) than summaries + 1 "
            f"({s.shape[1] + 1})"
        )
    design = torch.cat([torch.ones_like(s[:, :1]), s - s_o], 1)
    root_w = (weights / weights.sum()).sqrt()[:, None]
    coef = torch.linalg.lstsq(design * root_w, u * root_w).solution
    adjusted = u - (s - s_o) @ coef[1:]
    return bijection.inverse(adjusted) if bijection is not None else adjusted


def rejection_abc(
    simulator: SimulateFn,
    x_o: Tensor,
    *,
    prior: Prior | None = None,
    num_simulations: int = 10_000,
    quantile: float | None = 0.01,
    tolerance: float | None = None,
    summary: Summary | None = None,
    regression: bool = False,
    batch_size: int = 100_000,
    seed: int = 0,
) -> ABCResult:
    """Rejection ABC: simulate from the prior, keep what lands closest to ``x_o``.

    Args:
        simulator: A :class:`~sbitk.simulation.Simulator` or any ``(theta (N, D_θ), generator)
            -> x (N, D_x)``.
        x_o: The observation (D_x,).
        prior: The prior (default: the simulator's).
        num_simulations: Simulations to run.
        quantile: Keep this fraction of the simulations, the closest (when ``tolerance`` is
            ``None``); of equal distances, the first simulated.
        tolerance: Keep every simulation within this standardised distance instead.
        summary: Summary statistics ``s(x (N, D_x)) -> (N, S)`` (default: x itself).
        regression: Apply :func:`regression_adjust` to the kept particles.
        batch_size: Simulations per call of the simulator.
        seed: Seeds the prior draws and the simulator.

    Returns:
        An :class:`ABCResult` with uniform weights.
    """
    simulate, prior, x_o = _setup(simulator, prior, x_o)
    if (quantile is None) == (tolerance is None):
        raise SbitkError("rejection_abc: give exactly one of quantile and tolerance")
    if quantile is not None and not 0 < quantile <= 1:
        raise SbitkError(f"rejection_abc: quantile must lie in (0, 1], got {quantile!r}")
    if num_simulations < 2 or batch_size < 1:
        raise SbitkError(
            f"rejection_abc: needs num_simulations >= 2, batch_size >= 1, got "
            f"{num_simulations} and {batch_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    theta = prior.sample(num_simulations, generator).to(x_o)
    x = torch.cat([_simulate(simulate, t, x_o, generator) for t in theta.split(batch_size)])
    s, s_o = _summaries(summary, x, x_o), _summaries(summary, x_o[None], x_o)[0]
    scale = _mad_scale(s)
    d = _distance(s, s_o, scale)
    if tolerance is None:
        # Of equal distances the first simulated (a stable sort: the same on every device).
        keep = torch.argsort(d, stable=True)[: max(1, math.ceil(quantile * num_simulations))]
        keep = keep[torch.isfinite(d[keep])]
    else:
        keep = torch.nonzero(d <= tolerance).flatten()
    if keep.numel() == 0:
        raise SbitkError(f"rejection_abc: no simulation within tolerance {tolerance}")
    eps = float(d[keep].max())
    weights = torch.full((keep.numel(),), 1.0 / keep.numel(), dtype=x_o.dtype)
    samples = theta[keep]
    if regression:
        samples = regression_adjust(samples, s[keep], s_o, weights, prior)
    return ABCResult(
        samples=samples,
        weights=weights,
        distances=d[keep],
        tolerance=eps,
        tolerances=(eps,),
        acceptance_rates=(keep.numel() / num_simulations,),
        num_simulations=num_simulations,
        scale=scale,
        adjusted=regression,
    )


@dataclass
class _Population:
    theta: Tensor
    weights: Tensor
    distances: Tensor
    summaries: Tensor


def _log_kernel_mixture(theta: Tensor, parents: Tensor, log_w: Tensor, chol: Tensor) -> Tensor:
    r""":math:`\log \sum_j w_j \mathcal N(\theta_i; \theta_j, \Sigma)` for each row i.

    Both sets are whitened by :math:`L^{-1}` once, so the kernel is a squared distance; rows go
    in blocks to bound memory.
    """
    white_t = torch.linalg.solve_triangular(chol, theta.T, upper=False).T
    white_p = torch.linalg.solve_triangular(chol, parents.T, upper=False).T
    log_norm = -chol.diagonal().log().sum() - 0.5 * theta.shape[1] * math.log(2 * math.pi)
    parts = [
        torch.logsumexp(log_w[None] - 0.5 * sq_dist(block, white_p), 1)
        for block in white_t.split(2048)
    ]
    return torch.cat(parts) + log_norm


def _weighted_cov(theta: Tensor, weights: Tensor) -> Tensor:
    mean = weights @ theta
    centred = theta - mean
    cov = (centred * weights[:, None]).T @ centred
    jitter = 1e-10 * torch.eye(theta.shape[1], dtype=theta.dtype) * cov.diagonal().mean()
    return cov + jitter


def _weighted_quantile(values: Tensor, weights: Tensor, q: float) -> float:
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0) / weights.sum()
    idx = int(torch.searchsorted(cum, torch.tensor(q, dtype=cum.dtype)).clamp_max(len(cum) - 1))
    return float(values[order][idx])


@dataclass(frozen=True)
class _Context:
    """What every SMC round shares: the simulator, prior, summaries and the budget."""

    simulate: SimulateFn
    prior: Prior
    summary: Summary | None
    x_o: Tensor
    s_o: Tensor
    scale: Tensor
    generator: torch.Generator
    kernel_scale: float | None


def silverman_scale(weights: Tensor, dim: int) -> float:
    r"""Silverman's rule of thumb for a Gaussian kernel's covariance over the population's,
    :math:`(4 / ((d + 2)\,n))^{2 / (d + 4)}`, with n the population's effective size
    :math:`1 / \sum_i w_i^2` (pyabc's default width).

    Example:
        >>> round(silverman_scale(torch.full((1000,), 1e-3, dtype=torch.float64), 2), 3)
        0.1
    """
    n = float(1.0 / (weights.double() / weights.sum()).square().sum())
    return (4.0 / ((dim + 2) * n)) ** (2.0 / (dim + 4))


def _smc_round(
    ctx: _Context, pop: _Population, eps: float, eps_prev: float, n: int, budget: int
) -> tuple[_Population | None, int]:
    r"""One population: the ``n`` closest of its simulations, aiming at tolerance ``eps``.

    It proposes in batches until ``n`` simulations fall within ``eps`` or ``budget`` is spent,
    and keeps the ``n`` closest, so its tolerance is the n-th smallest distance, at most
    ``eps`` when it got there. When it does, but what is left of the budget could not fund
    another round (left × this round's acceptance rate < ``n``), it spends the rest too, on
    more proposals from the same kernel, rather than leave it idle. When the budget ends the
    round first, the ``n`` closest still make a population, at a tolerance between ``eps`` and
    the previous one ``eps_prev``; only if fewer than ``n`` simulations fell below ``eps_prev``
    is the round dropped (``None``), its simulations still counted.

    Keeping the closest of a fixed set of proposals is the tolerance-as-a-quantile rule of
    rejection ABC, so the importance weights :math:`p(\theta) / q(\theta)` stay correct.
    """
    scale = ctx.kernel_scale
    if scale is None:
        scale = silverman_scale(pop.weights, pop.theta.shape[1])
    chol = torch.linalg.cholesky(scale * _weighted_cov(pop.theta, pop.weights))
    kept: list[tuple[Tensor, Tensor, Tensor]] = []  # every proposal closer than eps_prev
    n_within, used = 0, 0
    while used < budget:
        if n_within >= n and (budget - used) * n_within >= n * used:
            break  # enough is left for another round
        rate = max(n_within / used, 1e-3) if used else 1.0
        want = math.ceil((n - n_within) / rate) if n_within < n else budget - used
        batch = min(budget - used, max(want, 16), 100_000)
        parents = torch.multinomial(pop.weights, batch, replacement=True, generator=ctx.generator)
        noise = torch.randn(batch, pop.theta.shape[1], generator=ctx.generator, dtype=chol.dtype)
        theta = pop.theta[parents] + noise @ chol.T
        theta = theta[ctx.prior.support_contains(theta)]  # outside the prior: no simulation
        if theta.shape[0] == 0:
            continue
        s = _summaries(
            ctx.summary, _simulate(ctx.simulate, theta, ctx.x_o, ctx.generator), ctx.x_o
        )
        d = _distance(s, ctx.s_o, ctx.scale)
        used += theta.shape[0]
        close = d < eps_prev
        kept.append((theta[close], d[close], s[close]))
        n_within += int((d <= eps).sum())
    theta, d, s = (torch.cat(part) for part in zip(*kept, strict=True))
    if theta.shape[0] < n:
        return None, used
    closest = torch.argsort(d, stable=True)[:n]
    theta, d, s = theta[closest], d[closest], s[closest]
    log_w = ctx.prior.log_prob(theta) - _log_kernel_mixture(
        theta, pop.theta, pop.weights.log(), chol
    )
    return _Population(theta, torch.softmax(log_w, 0), d, s), used


def smc_abc(
    simulator: SimulateFn,
    x_o: Tensor,
    *,
    prior: Prior | None = None,
    num_particles: int = 1000,
    num_simulations: int = 20_000,
    alpha: float = 0.5,
    max_rounds: int = 30,
    min_acceptance: float = 0.01,
    kernel_scale: float | None = None,
    summary: Summary | None = None,
    regression: bool = False,
    seed: int = 0,
) -> ABCResult:
    """SMC-ABC (population Monte Carlo) with adaptive tolerances; see the module docstring.

    Args:
        simulator: A :class:`~sbitk.simulation.Simulator` or any ``(theta (N, D_θ), generator)
            -> x (N, D_x)``.
        x_o: The observation (D_x,).
        prior: The prior (default: the simulator's).
        num_particles: Particles per population.
        num_simulations: The simulation budget, the first population's included.
        alpha: Each tolerance is this weighted quantile of the previous population's distances.
        max_rounds: Most populations after the first.
        min_acceptance: Stop after a round whose acceptance rate fell below this.
        kernel_scale: The perturbation kernel's covariance is this times the previous
            population's weighted covariance; ``None`` (the default): Silverman's rule,
            :func:`silverman_scale` (0.1 for 1,000 equal particles in 2-D). On two_moons
            (1,000 particles, 10 observations) C2ST was 0.907 and 0.559 at 10,000 and 100,000
            simulations with it, 0.942 and 0.718 with 1, and pyabc's 0.930 and 0.620: a wider
            kernel accepts less, and the budget ends at a larger tolerance. Beaumont et al.
            (2009) use 2.
        summary: Summary statistics ``s(x (N, D_x)) -> (N, S)`` (default: x itself).
        regression: Apply :func:`regression_adjust` to the final population.
        seed: Seeds everything random.

    Returns:
        An :class:`ABCResult` holding the last population. ``num_simulations`` is the budget
        unless the run stopped early (``max_rounds``, ``min_acceptance``, fewer than
        ``num_particles`` simulations left, or a last round that kept fewer than
        ``num_particles`` below the previous tolerance: dropped, its simulations counted).

    Example:
        >>> from sbitk.simulation.priors import Normal
        >>> def simulate(theta, generator):
        ...     return theta + 0.5 * torch.randn(theta.shape, generator=generator)
        >>> result = smc_abc(simulate, torch.tensor([1.0]), prior=Normal(0.0, 1.0, dim=1),
        ...                  num_particles=500, num_simulations=10_000)
        >>> result.num_simulations <= 10_000, len(result.tolerances) > 3
        (True, True)
    """
    simulate, prior, x_o = _setup(simulator, prior, x_o)
    if (
        not 0 < alpha < 1
        or not 0 <= min_acceptance < 1
        or not (kernel_scale is None or kernel_scale > 0)
    ):
        raise SbitkError(
            f"smc_abc: needs 0 < alpha < 1, 0 <= min_acceptance < 1, kernel_scale > 0, got "
            f"{alpha!r}, {min_acceptance!r}, {kernel_scale!r}"
        )
    if num_particles < 2 or num_simulations < num_particles:
        raise SbitkError(
            f"smc_abc: needs num_particles >= 2 and num_simulations >= num_particles, got "
            f"{num_particles} and {num_simulations}"
        )
    generator = torch.Generator().manual_seed(seed)
    theta = prior.sample(num_particles, generator).to(x_o)
    s = _summaries(summary, _simulate(simulate, theta, x_o, generator), x_o)
    s_o = _summaries(summary, x_o[None], x_o)[0]
    ctx = _Context(simulate, prior, summary, x_o, s_o, _mad_scale(s), generator, kernel_scale)
    d = _distance(s, s_o, ctx.scale)
    ok = torch.isfinite(d)
    pop = _Population(
        theta[ok], torch.softmax(torch.zeros(int(ok.sum())), 0).to(x_o), d[ok], s[ok]
    )
    used, tolerances, rates = num_particles, [math.inf], [float(ok.double().mean())]
    for _ in range(max_rounds):
        if num_simulations - used < num_particles:
            break  # too little left for a population (rounds leave 0 or enough)
        eps = _weighted_quantile(pop.distances, pop.weights, alpha)
        new, spent = _smc_round(
            ctx, pop, eps, tolerances[-1], num_particles, num_simulations - used
        )
        used += spent
        if new is None:
            break
        pop = new
        tolerances.append(float(pop.distances.max()))
        rates.append(num_particles / spent)
        if rates[-1] < min_acceptance:
            break
    samples = pop.theta
    if regression:
        samples = regression_adjust(samples, pop.summaries, s_o, pop.weights, prior)
    return ABCResult(
        samples=samples,
        weights=pop.weights,
        distances=pop.distances,
        tolerance=tolerances[-1],
        tolerances=tuple(tolerances),
        acceptance_rates=tuple(rates),
        num_simulations=used,
        scale=ctx.scale,
        adjusted=regression,
    )


#: The ABC methods :class:`ABCConfig` runs.
ABC_METHODS = ("rejection", "smc")
#: What ``quantile`` and ``num_particles`` are when left ``None``, by method.
DEFAULT_QUANTILE = {"rejection": 0.01, "smc": 0.5}
DEFAULT_PARTICLES = 1000


@dataclass(frozen=True)
class ABCConfig:
    """Settings of an ABC run, shared by the Python API, ``sbitk abc`` and the result file.

    Every value is checked when the config is made, so a bad one fails before any simulation.

    Args:
        method: ``"rejection"`` (:func:`rejection_abc`) or ``"smc"`` (:func:`smc_abc`).
        num_simulations: The simulation budget per observation.
        num_particles: SMC only: particles per population (``None``: 1,000). Rejection ABC
            keeps ``quantile`` of its simulations instead and refuses this.
        quantile: Rejection: the fraction of the simulations kept, the closest (``None``:
            0.01). SMC: each tolerance is this weighted quantile of the previous population's
            distances (``alpha``; ``None``: 0.5).
        regression: Regression-adjust the final particles (:func:`regression_adjust`).
        num_samples: Posterior draws per observation in a result file, resampled by weight.
        max_rounds: SMC: most populations after the first.
        min_acceptance: SMC: stop after a round whose acceptance rate fell below this.
        kernel_scale: SMC: perturbation covariance over the population's covariance
            (``None``: Silverman's rule).
        seed: Seeds the simulations (observation ``b`` of a file uses ``seed + b``).

    Example:
        >>> config = ABCConfig(method="rejection", num_simulations=5000)
        >>> config.resolved_quantile, config.resolved_particles
        (0.01, 50)
        >>> ABCConfig(quantile=1.5)
        Traceback (most recent call last):
        ...
        sbitk.errors.SbitkError: ABC: quantile must lie in (0, 1) for method 'smc', got 1.5
    """

    method: str = "smc"
    num_simulations: int = 20_000
    num_particles: int | None = None
    quantile: float | None = None
    regression: bool = False
    num_samples: int = 1000
    max_rounds: int = 30
    min_acceptance: float = 0.01
    kernel_scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ABC_METHODS:
            raise SbitkError(f"ABC: method must be one of {ABC_METHODS}, got {self.method!r}")
        for name in ("num_simulations", "num_samples", "max_rounds", "seed"):
            value = getattr(self, name)
            least = 0 if name == "seed" else 1
            if not isinstance(value, int) or value < least:
                raise SbitkError(f"ABC: {name} must be an integer >= {least}, got {value!r}")
        if self.num_simulations < 2:
            raise SbitkError(f"ABC: needs num_simulations >= 2, got {self.num_simulations}")
        q, upper = self.resolved_quantile, self.method == "rejection"
        if not (0 < q <= 1 if upper else 0 < q < 1):
            interval = "(0, 1]" if upper else "(0, 1)"
            raise SbitkError(
                f"ABC: quantile must lie in {interval} for method {self.method!r}, got {q!r}"
            )
        if self.method == "rejection" and self.num_particles is not None:
            raise SbitkError(
                "ABC: num_particles (--particles) is for method 'smc'; rejection ABC keeps the "
                "closest quantile (--quantile) of its simulations"
            )
        n = self.resolved_particles
        if self.method == "smc" and not 2 <= n <= self.num_simulations:
            raise SbitkError(
                f"ABC: SMC needs 2 <= particles <= num_simulations, got {n} particles for "
                f"{self.num_simulations} simulations"
            )
        if not 0 <= self.min_acceptance < 1 or not (
            self.kernel_scale is None or self.kernel_scale > 0
        ):
            raise SbitkError(
                f"ABC: needs 0 <= min_acceptance < 1 and kernel_scale > 0, got "
                f"{self.min_acceptance!r} and {self.kernel_scale!r}"
            )

    @property
    def resolved_quantile(self) -> float:
        """``quantile``, or the method's default when it is ``None``."""
        return DEFAULT_QUANTILE[self.method] if self.quantile is None else self.quantile

    @property
    def resolved_particles(self) -> int:
        """Particles of the result: SMC's population, or the kept ``quantile`` of rejection."""
        if self.method == "rejection":
            return max(1, math.ceil(self.resolved_quantile * self.num_simulations))
        return DEFAULT_PARTICLES if self.num_particles is None else self.num_particles

    def run(
        self,
        simulator: SimulateFn,
        x_o: Tensor,
        *,
        prior: Prior | None = None,
        summary: Summary | None = None,
        seed: int | None = None,
    ) -> ABCResult:
        """Run the configured method at one observation ``x_o`` (D_x,).

        Args:
            simulator: As for :func:`rejection_abc`.
            x_o: The observation.
            prior: The prior (default: the simulator's).
            summary: Summary statistics (default: x itself).
            seed: Overrides ``self.seed`` (one seed per observation).
        """
        common = {
            "prior": prior,
            "num_simulations": self.num_simulations,
            "summary": summary,
            "regression": self.regression,
            "seed": self.seed if seed is None else seed,
        }
        if self.method == "rejection":
            return rejection_abc(simulator, x_o, quantile=self.resolved_quantile, **common)
        return smc_abc(
            simulator,
            x_o,
            num_particles=self.resolved_particles,
            alpha=self.resolved_quantile,
            max_rounds=self.max_rounds,
            min_acceptance=self.min_acceptance,
            kernel_scale=self.kernel_scale,
            **common,
        )


__all__ = [
    "ABC_METHODS",
    "ABCConfig",
    "ABCResult",
    "regression_adjust",
    "rejection_abc",
    "smc_abc",
]
