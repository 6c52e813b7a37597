"""Vectorized MCMC: many slice-sampling chains advanced together, with R-hat and ESS.

Axis-aligned slice sampling (Neal 2003) updates one coordinate :math:`d` at a time. For the
current point :math:`z` it draws a log height :math:`\\log y = \\log p(z) - E`, :math:`E \\sim
\\mathrm{Exp}(1)`, places an interval of width :math:`w_d` at random around :math:`z_d`, steps it
out while its ends are above the height (at most ``max_step_out`` widths in all), then draws from
it uniformly, shrinking it towards :math:`z_d` on each rejection. Every chain does this at the
same time: a step out or a shrink is one batched call of the log density on the chains that are
still busy, so a neural likelihood is evaluated on large batches, never point by point.

Legend: ``C`` chains, ``D`` dimensions, ``z`` (C, D) states, ``lp`` (C,) their log densities,
``w`` (D,) slice widths tuned during warm-up.

References:
    Neal (2003), Slice sampling, Annals of Statistics 31(3), arXiv:physics/0009028.
    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC, arXiv:1903.08008.

Example:
    >>> import torch
    >>> log_prob = lambda z: -0.5 * (z**2).sum(-1)
    >>> init = torch.zeros(50, 2)
    >>> result = slice_sample(log_prob, init, 200, warmup=50, seed=0)
    >>> result.samples.shape
    torch.Size([50, 200, 2])
    >>> bool((result.rhat < 1.05).all())
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sbitk.errors import SbitkError

LogProb = Callable[[Tensor], Tensor]
#: Slice width, in units of the median move of a coordinate, tuned during warm-up.
WIDTH_PER_MOVE = 3.0


@dataclass(frozen=True)
class MCMCConfig:
    """Settings of posterior sampling by MCMC.

    Many chains and a short warm-up are the fast default: one batched call of the log density
    costs nearly the same for 100 or 1,000 chains, and chains initialised by importance
    resampling start close to the posterior.

    Args:
        num_chains: Chains run in parallel.
        warmup: Sweeps (one update of every coordinate) discarded while widths are tuned.
        thin: Keep one sweep in ``thin``.
        init: ``"sir"`` (sampling-importance-resampling from prior draws) or ``"prior"``.
        sir_candidates: Prior draws weighed first for SIR initialisation.
        sir_min_ess: SIR draws more candidates, doubling their number, until the effective
            sample size of the importance weights reaches this. The chains cannot be more
            faithful to the posterior's modes than the draws they start from: on slcp, 10,000
            prior draws can have an effective size of 2, and the chains then fill one or two
            of its four modes.
        sir_max_candidates: Most candidates SIR weighs in all.
        max_step_out: Most widths an interval is stepped out by, per update.
        max_shrink: Most shrinkage steps per update before the chain stays put.
        seed: Seeds initialisation and the chains.
        progress: Show a progress bar over sweeps.
    """

    num_chains: int = 1000
    warmup: int = 20
    thin: int = 1
    init: str = "sir"
    sir_candidates: int = 10_000
    sir_min_ess: float = 20.0
    sir_max_candidates: int = 320_000
    max_step_out: int = 10
    max_shrink: int = 50
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        checks = [
            ("num_chains", self.num_chains >= 1, ">= 1"),
            ("warmup", self.warmup >= 0, ">= 0"),
            ("thin", self.thin >= 1, ">= 1"),
            ("init", self.init in ("sir", "prior"), "'sir' or 'prior'"),
            ("sir_candidates", self.sir_candidates >= 1, ">= 1"),
            ("sir_min_ess", self.sir_min_ess >= 1, ">= 1"),
            (
                "sir_max_candidates",
                self.sir_max_candidates >= self.sir_candidates,
                f">= sir_candidates ({self.sir_candidates})",
            ),
            ("max_step_out", self.max_step_out >= 1, ">= 1"),
            ("max_shrink", self.max_shrink >= 1, ">= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise SbitkError(
                    f"MCMCConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )


@dataclass(frozen=True, eq=False)
class MCMCResult:
    """Chains, convergence diagnostics and cost of one MCMC run.

    Attributes:
        samples: Kept states, (chains, draws, D).
        rhat: Split R-hat per dimension (D,); near 1 when the chains agree.
        ess: Effective sample size per dimension (D,), over all chains.
        n_evaluations: Rows passed to the log density in all.
        time_s: Wall-clock seconds.
        stuck: Updates that hit ``max_shrink`` and kept the old value.
        init_candidates: Prior draws weighed to initialise the chains (0: not SIR).
        init_ess: Effective sample size of the SIR weights (``nan``: not SIR).
    """

    samples: Tensor
    rhat: Tensor
    ess: Tensor
    n_evaluations: int
    time_s: float
    stuck: int = 0
    init_candidates: int = 0
    init_ess: float = math.nan

    def summary(self) -> dict:
        return {
            "chains": self.samples.shape[0],
            "draws": self.samples.shape[1],
            "rhat_max": float(self.rhat.max()),
            "ess_min": float(self.ess.min()),
            "n_evaluations": self.n_evaluations,
            "time_s": round(self.time_s, 3),
            "stuck": self.stuck,
            "init_candidates": self.init_candidates,
            "init_ess": None if math.isnan(self.init_ess) else round(self.init_ess, 1),
        }


class _Counted:
    """Wraps the log density: counts rows and maps NaN to -inf (outside support, overflow)."""

    def __init__(self, fn: LogProb):
        self.fn, self.rows = fn, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.rows += z.shape[0]
        lp = self.fn(z)
        return torch.where(torch.isnan(lp), torch.full_like(lp, -math.inf), lp)


def _uniform(shape, like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def _update_coordinate(
    f: _Counted,
    z: Tensor,
    lp: Tensor,
    d: int,
    width: Tensor,
    config: MCMCConfig,
    gen: torch.Generator,
) -> int:
    """One slice-sampling update of coordinate ``d`` of every chain, in place; returns # stuck."""
    c = z.shape[0]
    height = lp - torch.empty_like(lp).exponential_(generator=gen)
    left = z[:, d] - width * _uniform(c, z, gen)
    right = left + width
    # Neal's budgeted stepping out: at most max_step_out widths, split at random.
    m = config.max_step_out
    j = torch.floor(m * _uniform(c, z, gen))
    k = (m - 1) - j

    # Both ends step out in the same batched call of the log density. When few chains are
    # still stepping out, each probes its next several ends in that call: the ends form a
    # fixed sequence, so evaluating more of it than needed changes nothing but the cost.
    act_l = (j > 0).nonzero().squeeze(-1)
    act_r = (k > 0).nonzero().squeeze(-1)
    while act_l.numel() or act_r.numel():
        n_act = act_l.numel() + act_r.numel()
        per = max(1, min(m, c // n_act))
        steps = torch.arange(per, dtype=z.dtype, device=z.device)
        ends = torch.cat([left[act_l, None] - steps * width, right[act_r, None] + steps * width])
        rows = torch.cat([act_l, act_r])
        probe = z[rows].repeat_interleave(per, 0)
        probe[:, d] = ends.reshape(-1)
        above = (f(probe).reshape(n_act, per) > height[rows, None]).to(z.dtype)
        # Extensions: the leading probes above the slice, within each chain's budget.
        budget = torch.cat([j[act_l], k[act_r]])
        ext = torch.minimum(torch.cumprod(above, 1).sum(1), budget)
        nl = act_l.numel()
        left[act_l] -= ext[:nl] * width
        right[act_r] += ext[nl:] * width
        j[act_l] -= ext[:nl]
        k[act_r] -= ext[nl:]
        going = (ext == per) & (budget - ext > 0)
        act_l, act_r = act_l[going[:nl]], act_r[going[nl:]]

    # Shrinkage. When few chains are left, each draws several candidates from its interval in
    # one call and takes them in order: a candidate outside the interval as shrunk by the
    # earlier ones is skipped, which leaves the rest uniform on the shrunk interval.
    active = torch.arange(c, device=z.device)
    for _ in range(config.max_shrink):
        na = active.numel()
        per = max(1, min(8, c // na))
        lo, hi = left[active], right[active]
        cand = lo[:, None] + (hi - lo)[:, None] * _uniform((na, per), z, gen)
        probe = z[active].repeat_interleave(per, 0)
        probe[:, d] = cand.reshape(-1)
        lp_new = f(probe).reshape(na, per)
        ok = lp_new > height[active, None]
        x0 = z[active, d]
        done = torch.zeros(na, dtype=torch.bool, device=z.device)
        new_x, new_lp = x0.clone(), lp[active].clone()
        for i in range(per):
            ci = cand[:, i]
            inside = (ci > lo) & (ci < hi) & ~done
            acc = inside & ok[:, i]
            new_x = torch.where(acc, ci, new_x)
            new_lp = torch.where(acc, lp_new[:, i], new_lp)
            done = done | acc
            rej = inside & ~ok[:, i]
            below = ci < x0
            lo = torch.where(rej & below, ci, lo)
            hi = torch.where(rej & ~below, ci, hi)
        z[active, d] = new_x
        lp[active] = new_lp
        left[active], right[active] = lo, hi
        active = active[~done]
        if not active.numel():
            return 0
    return int(active.numel())


def slice_sample(
    log_prob: LogProb,
    init: Tensor,
    num_draws: int,
    *,
    warmup: int = 100,
    thin: int = 1,
    width: Tensor | float | None = None,
    max_step_out: int = 10,
    max_shrink: int = 50,
    seed: int = 0,
    precondition: bool = True,
    progress: bool = False,
) -> MCMCResult:
    """Run one slice-sampling chain per row of ``init`` until each keeps ``num_draws`` states.

    Args:
        log_prob: Unnormalised log density, (C', D) -> (C',) for any number C' of rows;
            ``-inf`` outside the support.
        init: Starting states (C, D), each with a finite log density.
        num_draws: Kept states per chain.
        warmup: Sweeps discarded first; the widths are tuned during them.
        thin: Keep one sweep in ``thin``.
        width: Initial slice widths, (D,) or a scalar; by default from the spread of ``init``.
        max_step_out, max_shrink: See :class:`MCMCConfig`.
        seed: Seeds the chains.
        precondition: During warm-up, whiten the coordinates with the chains' covariance
            (needs more chains than dimensions), so that strongly correlated targets mix.
        progress: Show a progress bar over sweeps.

    Returns:
        An :class:`MCMCResult` with samples (C, num_draws, D), R-hat and ESS.
    """
    if init.dim() != 2:
        raise SbitkError(f"init must have shape (chains, D), got {tuple(init.shape)}")
    config = MCMCConfig(
        num_chains=init.shape[0],
        warmup=warmup,
        thin=thin,
        max_step_out=max_step_out,
        max_shrink=max_shrink,
        seed=seed,
    )
    start = time.perf_counter()
    gen = torch.Generator(device=init.device).manual_seed(seed)
    f = _Counted(log_prob)
    c, dim = init.shape
    # Chains move in a whitened basis z = shift + v L^T, with L from the chains' covariance
    # during warm-up: axis-aligned updates then follow the target's principal directions.
    shift = init.new_zeros(dim)
    chol = torch.eye(dim, dtype=init.dtype, device=init.device)

    def f_v(v: Tensor) -> Tensor:
        return f(shift + v @ chol.T)

    v = init.detach().clone()
    with torch.no_grad():
        lp = f(v)
        if not torch.isfinite(lp).all():
            bad = int((~torch.isfinite(lp)).sum())
            raise SbitkError(
                f"{bad} of {c} initial MCMC states have a non-finite log density; start "
                "inside the support"
            )
        w = _initial_width(v, width)
        total = warmup + num_draws * thin
        kept = init.new_empty(c, num_draws, dim)
        stuck = 0
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            desc="MCMC",
            unit="sweep",
            leave=False,
            disable=True if not progress else None,
        )
        for sweep in range(total):
            for d in range(dim):
                before = v[:, d].clone()
                stuck += _update_coordinate(f_v, v, lp, d, w[d], config, gen)
                if sweep < warmup and sweep >= 2:
                    # A width of a few typical moves keeps stepping out and shrinking short,
                    # which matters more than for one chain: the slowest chain sets the number
                    # of batched calls.
                    step = (v[:, d] - before).abs().median()
                    if step > 0:
                        w[d] = 0.5 * w[d] + 0.5 * WIDTH_PER_MOVE * step
            if precondition and sweep < warmup and sweep >= 4 and sweep % 5 == 4 and c > dim:
                z = shift + v @ chol.T
                new = _whitening(z)
                if new is not None:
                    shift, chol = z.mean(0), new
                    v = torch.linalg.solve_triangular(chol, (z - shift).T, upper=False).T
                    w = torch.full_like(w, 3.0)
            after = sweep - warmup
            if after >= 0 and after % thin == thin - 1:
                kept[:, after // thin] = shift + v @ chol.T
            bar.update(1)
        bar.close()
    samples = kept
    return MCMCResult(
        samples=samples,
        rhat=split_rhat(samples),
        ess=effective_sample_size(samples),
        n_evaluations=f.rows,
        time_s=time.perf_counter() - start,
        stuck=stuck,
    )


#: Fewest kept draws per chain: fewer chains are run when ``n`` is small.
MIN_DRAWS = 10
#: A function of prior draws θ (N, D) and their unconstrained u = f(θ) (N, D): the log of the
#: target's density over the prior's, up to a constant (N,).
LogWeight = Callable[[Tensor, Tensor], Tensor]


def sir_init(
    log_weight: LogWeight, prior, config: MCMCConfig, gen: torch.Generator, device, dtype
) -> tuple[Tensor, int, float]:
    """``config.num_chains`` starting states in the prior's unconstrained coordinates, by
    sampling-importance-resampling of prior draws; also the candidates weighed and the
    weights' effective sample size.

    The candidates double in number until that effective size reaches ``sir_min_ess`` or
    ``sir_max_candidates`` are weighed (``init="prior"``: plain prior draws, unweighed).
    """
    bijection = prior.bijection()
    if config.init == "prior":
        theta = prior.sample(config.num_chains, gen).to(device, dtype)
        return bijection.forward(theta)[0], 0, math.nan
    us, log_ws = [], []
    weighed, batch, ess = 0, config.sir_candidates, 0.0
    while batch > 0:
        theta = prior.sample(batch, gen).to(device, dtype)
        u = bijection.forward(theta)[0]
        log_w = log_weight(theta, u)
        us.append(u)
        log_ws.append(torch.where(torch.isnan(log_w), -math.inf, log_w).double())
        weighed += batch
        log_w = torch.cat(log_ws)
        if torch.isfinite(log_w).any():
            ess = float(torch.exp(2 * log_w.logsumexp(0) - (2 * log_w).logsumexp(0)))
            if ess >= config.sir_min_ess:
                break
        batch = min(weighed, config.sir_max_candidates - weighed)
    if not torch.isfinite(log_w).any():
        raise SbitkError(
            f"none of the {weighed} prior draws has a finite density under the model for this "
            "x: the observation is far outside the training data"
        )
    probs = torch.softmax(log_w, 0).cpu()
    idx = torch.multinomial(probs, config.num_chains, replacement=True, generator=gen)
    return torch.cat(us)[idx.to(device)], weighed, ess


def posterior_chains(
    log_target: LogProb, log_weight: LogWeight, prior, n: int, config: MCMCConfig, seed: int,
    device,
) -> MCMCResult:  # fmt: skip
    """``n`` draws of a posterior known up to a constant, in θ (chains, draws, D): chains
    started by :func:`sir_init` and slice sampled in the prior's unconstrained coordinates u.

    ``log_target`` is the log density in u (θ's plus the log-determinant of :math:`f^{-1}`);
    ``log_weight`` weighs prior draws for the start (see :data:`LogWeight`). There are
    ``min(num_chains, n / MIN_DRAWS)`` chains, at least 4, so that R-hat and ESS mean something.
    """
    chains = min(config.num_chains, max(4, math.ceil(n / MIN_DRAWS)))
    config = dataclasses.replace(config, num_chains=chains)
    gen = torch.Generator().manual_seed(seed)
    init, candidates, init_ess = sir_init(
        log_weight, prior, config, gen, device, torch.get_default_dtype()
    )
    result = slice_sample(
        log_target,
        init,
        math.ceil(n / chains),
        warmup=config.warmup,
        thin=config.thin,
        max_step_out=config.max_step_out,
        max_shrink=config.max_shrink,
        seed=seed,
        progress=config.progress,
    )
    return dataclasses.replace(
        result,
        samples=prior.bijection().inverse(result.samples).cpu(),
        rhat=result.rhat.cpu(),
        ess=result.ess.cpu(),
        init_candidates=candidates,
        init_ess=init_ess,
    )


def _whitening(z: Tensor) -> Tensor | None:
    """Cholesky factor of the chains' covariance (C, D), or None when it is singular."""
    cov = torch.cov(z.T.double()).reshape(z.shape[1], z.shape[1])
    eye = torch.eye(z.shape[1], dtype=cov.dtype, device=cov.device)
    cov = cov + 1e-9 * cov.diagonal().mean() * eye
    chol, info = torch.linalg.cholesky_ex(cov)
    if info.item() != 0 or not torch.isfinite(chol).all():
        return None
    return chol.to(z.dtype)


def _initial_width(z: Tensor, width) -> Tensor:
    dim = z.shape[1]
    if width is None:
        spread = 2.0 * z.std(0) if z.shape[0] > 1 else torch.ones(dim, device=z.device)
        return torch.where(spread > 1e-6, spread, torch.ones_like(spread))
    w = torch.as_tensor(width, dtype=z.dtype, device=z.device).expand(dim).clone()
    if not (w > 0).all():
        raise SbitkError(f"slice widths must be > 0, got {w.tolist()}")
    return w


# ---- convergence diagnostics ---------------------------------------------------------------
def _autocovariance(x: Tensor) -> Tensor:
    """Autocovariance of each chain at every lag, (C, N) -> (C, N), by FFT."""
    n = x.shape[-1]
    centered = x - x.mean(-1, keepdim=True)
    size = 2 ** math.ceil(math.log2(2 * n))
    spec = torch.fft.rfft(centered, n=size)
    acov = torch.fft.irfft(spec * spec.conj(), n=size)[..., :n]
    return acov / n


def effective_sample_size(samples: Tensor) -> Tensor:
    """Multi-chain effective sample size per dimension, Geyer's initial monotone sequence.

    Args:
        samples: (chains, draws, D).

    Returns:
        ESS (D,), at most chains × draws times a small factor for antithetic chains.
    """
    x = samples.double().permute(2, 0, 1)  # (D, C, N)
    _, c, n = x.shape
    if n < 4:
        return torch.full((x.shape[0],), float("nan"), device=x.device)
    acov = _autocovariance(x)  # (D, C, N)
    chain_var = acov[..., 0] * n / (n - 1)
    within = chain_var.mean(-1)  # (D,)
    var_plus = within * (n - 1) / n
    if c > 1:
        var_plus = var_plus + x.mean(-1).var(-1)
    rho = 1 - (within.unsqueeze(-1) - acov.mean(1)) / var_plus.unsqueeze(-1).clamp_min(1e-300)
    rho[..., 0] = 1.0
    out = []
    for r in rho:
        m = (n - 1) // 2
        pairs = r[: 2 * m].reshape(m, 2).sum(-1)
        # Truncate at the first non-positive pair sum, then make the sums monotone.
        nonpos = (pairs <= 0).nonzero()
        stop = int(nonpos[0]) if nonpos.numel() else m
        pairs = pairs[:stop]
        if pairs.numel():
            pairs = torch.cummin(pairs, 0).values
        tau = -1.0 + 2.0 * float(pairs.sum()) if pairs.numel() else 1.0
        tau = max(tau, 1.0 / math.log10(c * n + 10))
        out.append(c * n / tau)
    return torch.tensor(out, dtype=torch.float64, device=x.device)


def split_rhat(samples: Tensor) -> Tensor:
    """Split R-hat per dimension: each chain is halved, then between/within variances compared.

    Args:
        samples: (chains, draws, D) with at least 4 draws.

    Returns:
        R-hat (D,); values above about 1.01 to 1.05 say the chains have not mixed.
    """
    x = samples.double()
    half = x.shape[1] // 2
    if half < 2:
        return torch.full((x.shape[2],), float("nan"), device=x.device)
    chains = torch.cat([x[:, :half], x[:, half : 2 * half]], 0)  # (2C, n, D)
    n = chains.shape[1]
    within = chains.var(1).mean(0)
    between = n * chains.mean(1).var(0)
    var_plus = (n - 1) / n * within + between / n
    return torch.sqrt(var_plus / within.clamp_min(1e-300))


__all__ = [
    "MCMCConfig",
    "MCMCResult",
    "effective_sample_size",
    "slice_sample",
    "split_rhat",
]
