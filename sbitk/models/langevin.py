r"""Langevin samplers: unadjusted (ULA), Metropolis-adjusted (MALA) and annealed.

All three move a batch of chains together, each a row of ``init`` (*, D), with one batched call
of the log density (or score) per step, and run a fixed number of steps: they cannot hang.

**ULA** discretises the Langevin diffusion :math:`dx = \tfrac12 M \nabla \log p(x)\,dt +
M^{1/2} dW` with step :math:`h` and a diagonal preconditioner :math:`M = \mathrm{diag}(s^2)`,

.. math:: x_{k+1} = x_k + \tfrac{h}{2} M \nabla \log p(x_k) + \sqrt{h}\, M^{1/2} \xi_k,
    \qquad \xi_k \sim \mathcal{N}(0, I),

whose stationary law is :math:`p` only as :math:`h \to 0` (a bias of order :math:`h`).

**MALA** takes the ULA step as a proposal :math:`y` and accepts it with probability
:math:`\min\{1, p(y)\,q(x \mid y) / (p(x)\,q(y \mid x))\}`,
:math:`q(y \mid x) = \mathcal{N}(y; x + \tfrac{h}{2} M \nabla \log p(x), h M)`, which makes
:math:`p` exactly stationary. During warm-up the log step follows a Robbins-Monro recursion
towards an acceptance rate of 0.574, the optimal rate for MALA in high dimension (Roberts &
Rosenthal 1998), and the preconditioner :math:`s` is set twice from the chains' spread. Step and
preconditioner are shared by the leading ``chain_dims`` dimensions of the batch (the chains of
one context) and separate across the others (the contexts), so one call samples the
posteriors of many observations, each with its own scale.

**Annealed Langevin** (Song & Ermon 2019) runs ULA on a score :math:`s(x, \sigma)` of the data
perturbed by Gaussian noise of each level :math:`\sigma_1 > \dots > \sigma_L` in turn, with step
:math:`\alpha_i = \epsilon\,\sigma_i^2 / \sigma_L^2`, so that the broad levels carry the chains
between modes and the narrow ones refine them; a last denoising step
:math:`x \leftarrow x + \sigma_L^2 s(x, \sigma_L)` (Tweedie's formula) removes the remaining
noise of scale :math:`\sigma_L` (Song & Ermon 2020).

Legend: ``x`` (*, D) states, ``lp`` (*) their log densities, ``g`` (*, D) their gradients,
``h`` step sizes and ``s`` preconditioner scales, both broadcasting against ``x``.

References:
    Roberts & Tweedie (1996), Exponential convergence of Langevin distributions and their
    discrete approximations, Bernoulli 2(4), 341-363.
    Roberts & Rosenthal (1998), Optimal scaling of discrete approximations to Langevin
    diffusions, J. R. Stat. Soc. B 60(1), 255-268.
    Song & Ermon (2019), Generative modeling by estimating gradients of the data distribution,
    arXiv:1907.05600.
    Song & Ermon (2020), Improved techniques for training score-based generative models,
    arXiv:2006.09011.

Example:
    >>> import torch
    >>> log_prob = lambda x: -0.5 * x.square().sum(-1)
    >>> g = torch.Generator().manual_seed(0)
    >>> result = mala(log_prob, torch.zeros(2000, 2), 100, warmup=100, generator=g)
    >>> result.samples.shape, bool(abs(result.samples.var(0) - 1).max() < 0.15)
    (torch.Size([2000, 2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sbitk.errors import SbitkError

#: A log density up to a constant, (*, D) -> (*), differentiable in its argument.
LogProb = Callable[[Tensor], Tensor]
#: A score :math:`s(x, \sigma)`: states (*, D) and a noise level (a scalar tensor) -> (*, D).
Score = Callable[[Tensor, Tensor], Tensor]
#: The acceptance rate MALA's warm-up aims at (Roberts & Rosenthal 1998).
TARGET_ACCEPTANCE = 0.574


def log_prob_and_grad(log_prob: LogProb, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log_prob(x)`` (*) and its gradient in ``x`` (*, D), detached; works under no_grad.

    Non-finite log densities become ``-inf`` with a zero gradient, so that MALA rejects moves
    into them and ULA is not derailed by NaN.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)
    ok = torch.isfinite(lp)
    lp = torch.where(ok, lp.detach(), torch.full_like(lp, -math.inf))
    grad = torch.where(ok.unsqueeze(-1) & torch.isfinite(grad), grad, torch.zeros_like(grad))
    return lp, grad


def _check_init(init: Tensor, steps: int, what: str) -> None:
    if init.dim() < 1 or init.shape[-1] < 1:
        raise SbitkError(f"{what}: expected init of shape (*, D), found {tuple(init.shape)}")
    if steps < 0:
        raise SbitkError(f"{what}: expected steps >= 0, found {steps}")


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = like.device if generator is None else generator.device
    xi = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return xi.to(like.device)


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    device = like.device if generator is None else generator.device
    u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=device)
    return u.to(like.device)


def ula(
    log_prob: LogProb,
    init: Tensor,
    steps: int,
    step_size: float | Tensor = 0.01,
    *,
    scale: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Unadjusted Langevin: ``steps`` moves of every chain, no accept/reject.

    Args:
        log_prob: Log density up to a constant, (*, D) -> (*), differentiable.
        init: Starting states (*, D), one chain per row.
        steps: Number of moves.
        step_size: :math:`h`, a float or a tensor broadcasting against (*, 1).
        scale: Preconditioner :math:`s` (broadcasting against (*, D)), or None for 1.
        generator: Seeds the noise (None: torch's global generator).

    Returns:
        The final states (*, D).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = ula(lambda x: -0.5 * x.square().sum(-1), torch.zeros(4000, 1), 200, 0.1,
        ...         generator=g)
        >>> bool(abs(x.var() - 1) < 0.1)
        True
    """
    _check_init(init, steps, "ula")
    h = torch.as_tensor(step_size, dtype=init.dtype, device=init.device)
    if not bool((h > 0).all()):
        raise SbitkError(f"ula: expected step sizes > 0, found {step_size!r}")
    s = torch.ones((), dtype=init.dtype, device=init.device) if scale is None else scale
    x = init.detach().clone()
    for _ in range(steps):
        _, g = log_prob_and_grad(log_prob, x)
        x = x + 0.5 * h * s.square() * g + h.sqrt() * s * _noise(x, generator)
    return x


@dataclass(frozen=True, eq=False)
class LangevinResult:
    """The outcome of :func:`mala`.

    Attributes:
        samples: Final states (*, D).
        acceptance: Mean acceptance probability after warm-up, per step-size group.
        step_size: The step sizes :math:`h` used after warm-up, per group (broadcasting
            against (*, 1)).
        scale: The preconditioner :math:`s` (broadcasting against (*, D)).
        log_prob: Log densities of the final states (*).
    """

    samples: Tensor
    acceptance: Tensor
    step_size: Tensor
    scale: Tensor
    log_prob: Tensor


def _group_mean(t: Tensor, chain_dims: int) -> Tensor:
    """Mean of ``t`` (*) over its leading ``chain_dims`` dimensions, kept as size-1 dims."""
    dims = tuple(range(chain_dims))
    return t.mean(dims, keepdim=True) if dims else t


def mala(
    log_prob: LogProb,
    init: Tensor,
    steps: int,
    step_size: float | Tensor = 0.1,
    *,
    warmup: int = 0,
    chain_dims: int = 1,
    target_acceptance: float = TARGET_ACCEPTANCE,
    precondition: bool = True,
    generator: torch.Generator | None = None,
) -> LangevinResult:
    r"""Metropolis-adjusted Langevin: ``warmup`` adapting moves, then ``steps`` fixed ones.

    Args:
        log_prob: Log density up to a constant, (*, D) -> (*), differentiable; ``-inf`` (or
            NaN) where the density is zero.
        init: Starting states (*, D), one chain per row, with finite log densities.
        steps: Moves after warm-up, with step and preconditioner fixed (so that the target is
            exactly stationary).
        step_size: Initial :math:`h`, a float or a tensor broadcasting against (*, 1).
        warmup: Moves during which the step size is adapted towards ``target_acceptance`` and
            (with ``precondition``) the scales :math:`s` are set from the chains' spread.
        chain_dims: How many leading dimensions of ``init``'s batch hold chains of one target;
            the step size and scales are shared over them and separate across the rest.
        target_acceptance: Acceptance rate the warm-up aims at.
        precondition: Set a diagonal preconditioner from the chains during warm-up (needs at
            least 2 chains per group).
        generator: Seeds proposals and acceptance (None: torch's global generator).

    Returns:
        A :class:`LangevinResult`.
    """
    _check_init(init, steps, "mala")
    batch = init.dim() - 1
    if not 0 <= chain_dims <= batch:
        raise SbitkError(f"mala: expected 0 <= chain_dims <= {batch}, found {chain_dims}")
    if warmup < 0 or not 0 < target_acceptance < 1:
        raise SbitkError(
            f"mala: expected warmup >= 0 and 0 < target_acceptance < 1, found {warmup} and "
            f"{target_acceptance}"
        )
    group = (1,) * chain_dims + tuple(init.shape[chain_dims:-1]) + (1,)
    h0 = torch.as_tensor(step_size, dtype=init.dtype, device=init.device)
    if not bool((h0 > 0).all()):
        raise SbitkError(f"mala: expected step sizes > 0, found {step_size!r}")
    log_h = h0.log().expand(group).clone()
    s = init.new_ones((*group[:-1], init.shape[-1]))
    x = init.detach().clone()
    lp, g = log_prob_and_grad(log_prob, x)
    if not bool(torch.isfinite(lp).all()):
        bad = int((~torch.isfinite(lp)).sum())
        raise SbitkError(
            f"mala: {bad} of {lp.numel()} initial states have a non-finite log density; start "
            "where the density is positive"
        )
    chains = math.prod(init.shape[:chain_dims])
    # Scales are set twice, so that the second uses chains that have moved under the first.
    checkpoints = {warmup // 3, (2 * warmup) // 3} - {0} if precondition and chains > 1 else set()
    accepted = torch.zeros_like(log_h)
    restart = 0
    for k in range(warmup + steps):
        h = log_h.exp()
        mean = x + 0.5 * h * s.square() * g
        y = mean + h.sqrt() * s * _noise(x, generator)
        lp_y, g_y = log_prob_and_grad(log_prob, y)
        back = y + 0.5 * h * s.square() * g_y
        forward_q = -0.5 * ((y - mean) / s).square().sum(-1) / h.squeeze(-1)
        backward_q = -0.5 * ((x - back) / s).square().sum(-1) / h.squeeze(-1)
        log_ratio = lp_y - lp + backward_q - forward_q
        prob = torch.where(torch.isfinite(log_ratio), log_ratio.clamp(max=0).exp(), 0.0)
        accept = _uniform(prob, generator) < prob
        x = torch.where(accept.unsqueeze(-1), y, x)
        lp = torch.where(accept, lp_y, lp)
        g = torch.where(accept.unsqueeze(-1), g_y, g)
        rate = _group_mean(prob, chain_dims).unsqueeze(-1)
        if k < warmup:
            # Robbins-Monro on log h: a decaying gain, restarted at each new preconditioner
            # (as Stan restarts its adaptation in windows), settles the step by the end.
            log_h = log_h + (rate - target_acceptance) / math.sqrt(k - restart + 1)
            if k + 1 in checkpoints:
                spread = x.std(tuple(range(chain_dims)), keepdim=True) * s.new_ones(s.shape)
                new_s = torch.where(spread > 1e-8, spread, s)
                # Keep the proposal's typical size h s^2 (geometric mean over coordinates).
                log_h = log_h + 2 * (s / new_s).log().mean(-1, keepdim=True)
                s, restart = new_s, k + 1
        else:
            accepted = accepted + rate
    acceptance = (accepted / max(steps, 1)).squeeze(-1)
    return LangevinResult(x, acceptance, log_h.exp(), s, lp)


def geometric_sigmas(
    sigma_max: float, sigma_min: float, levels: int, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Noise levels :math:`\sigma_1 > \dots > \sigma_L` in geometric progression.

    Example:
        >>> geometric_sigmas(1.0, 0.01, 3)
        tensor([1.0000, 0.1000, 0.0100])
    """
    if not 0 < sigma_min < sigma_max or levels < 2:
        raise SbitkError(
            "geometric_sigmas: expected 0 < sigma_min < sigma_max and levels >= 2, found "
            f"{sigma_min}, {sigma_max} and {levels}"
        )
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), levels, dtype=dtype)


def annealed_langevin(
    score: Score,
    init: Tensor,
    sigmas: Sequence[float] | Tensor,
    steps_per_level: int = 100,
    epsilon: float = 2e-5,
    *,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Annealed Langevin dynamics over the noise levels ``sigmas`` (Song & Ermon 2019).

    Args:
        score: :math:`s(x, \sigma)`, states (*, D) and a scalar tensor :math:`\sigma` -> (*, D).
        init: Starting states (*, D), typically uniform or :math:`\mathcal{N}(0, \sigma_1^2 I)`.
        sigmas: Decreasing noise levels :math:`\sigma_1 > \dots > \sigma_L`.
        steps_per_level: ULA steps :math:`T` at each level.
        epsilon: Base step :math:`\epsilon`; level i steps by
            :math:`\alpha_i = \epsilon \sigma_i^2 / \sigma_L^2`.
        denoise: Finish with :math:`x + \sigma_L^2 s(x, \sigma_L)`.
        generator: Seeds the noise (None: torch's global generator).

    Returns:
        The final states (*, D).

    Example:
        >>> score = lambda x, sigma: -x / (1 + sigma**2)  # N(0, I) perturbed by N(0, sigma^2 I)
        >>> g = torch.Generator().manual_seed(0)
        >>> sigmas = geometric_sigmas(5.0, 0.05, 8)
        >>> x = annealed_langevin(score, 5 * torch.randn(4000, 2, generator=g), sigmas, 100,
        ...                       1e-3, generator=g)
        >>> bool(abs(x.var(0) - 1).max() < 0.1)
        True
    """
    _check_init(init, steps_per_level, "annealed_langevin")
    sig = torch.as_tensor(sigmas, dtype=init.dtype, device=init.device).flatten()
    if sig.numel() < 1 or not bool((sig > 0).all()) or not bool((sig[1:] < sig[:-1]).all()):
        raise SbitkError(f"annealed_langevin: expected decreasing positive sigmas, found {sigmas}")
    if epsilon <= 0:
        raise SbitkError(f"annealed_langevin: expected epsilon > 0, found {epsilon}")
    x = init.detach().clone()
    last = sig[-1]
    with torch.no_grad():
        for sigma in sig:
            alpha = epsilon * (sigma / last).square()
            for _ in range(steps_per_level):
                x = x + 0.5 * alpha * score(x, sigma) + alpha.sqrt() * _noise(x, generator)
        if denoise:
            x = x + last.square() * score(x, last)
    return x


__all__ = [
    "TARGET_ACCEPTANCE",
    "LangevinResult",
    "LogProb",
    "Score",
    "annealed_langevin",
    "geometric_sigmas",
    "log_prob_and_grad",
    "mala",
    "ula",
]
