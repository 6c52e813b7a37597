r"""Posterior predictive checks: re-simulate from posterior draws and compare with :math:`x_o`.

For draws :math:`\theta_l \sim q(\theta \mid x_o)` and replicates
:math:`x^{\mathrm{rep}}_l \sim p(x \mid \theta_l)` (the real simulator, or a learned surrogate
likelihood: the result records which), each output :math:`j` gets its probability integral
transform and two-sided tail probability

.. math::

    \mathrm{PIT}_j = \Pr\!\left(x^{\mathrm{rep}}_j \le x_{o,j}\right), \qquad
    p_j = 2 \min(\mathrm{PIT}_j, 1 - \mathrm{PIT}_j),

estimated from the replicates (ties broken at random, counts shifted by one so that a
p-value is never zero). Posterior predictive p-values are conservative in general (the data
were used twice; Gelman, Meng & Stern 1996), so a flag is strong evidence, a pass is weak.

References:
    Gelman, Meng & Stern (1996), "Posterior predictive assessment of model fitness via
    realized discrepancies", Statistica Sinica 6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbitk.diagnostics._checks import DiagnosticInputError, check_level
from sbitk.diagnostics._sampling import as_tensor, check_finite_tensor, stream

__all__ = ["PPCResult", "posterior_predictive_check"]


@dataclass(frozen=True)
class PPCResult:
    """Posterior predictive check of one observation.

    Attributes:
        x_observed: the observation, shape ``(D_x,)``.
        replicates: the valid replicated data sets, shape ``(L_valid, D_x)``.
        pit: probability integral transform of each output.
        tail_probability: two-sided tail probability of each output.
        output_names: names of the outputs.
        simulator_kind: ``"simulator"`` (the real one) or ``"surrogate"``.
        n_failed: replicates dropped because the simulator returned non-finite values.
        alpha: overall level; each output present is tested at ``alpha / m``, ``m`` the
            number of outputs present (all but the absent ones, NaN in ``x_observed``, whose
            PIT and tail probability are NaN).
        flagged: names of the outputs whose tail probability is below ``alpha / m``.
        verdict: ``"consistent"`` or ``"inconsistent"``.
    """

    x_observed: np.ndarray
    replicates: np.ndarray
    pit: np.ndarray
    tail_probability: np.ndarray
    output_names: tuple[str, ...]
    simulator_kind: str
    n_failed: int
    alpha: float
    flagged: tuple[str, ...]
    verdict: str


def posterior_predictive_check(
    x_o: Any,
    posterior_samples: Any,
    simulator: Callable[[Tensor, torch.Generator], Tensor],
    *,
    surrogate: bool = False,
    output_names: Sequence[str] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> PPCResult:
    """Per-output PIT values and tail probabilities of an observation under re-simulation.

    Args:
        x_o: the observation, shape ``(D_x,)`` or ``(1, D_x)``; NaN marks an absent value
            (an i.i.d. trial left out), which is not checked.
        posterior_samples: draws of ``q(θ | x_o)``, shape ``(L, D)``.
        simulator: ``simulator(theta (L, D), generator) -> (L, D_x)``: an
            :class:`sbitk.Simulator`, a surrogate likelihood's sampler, or any such callable.
            Rows with non-finite values count as failed simulations and are dropped.
        surrogate: whether ``simulator`` is a learned surrogate rather than the real simulator
            (recorded in the result: a surrogate check says how the *surrogate* sees ``x_o``).
        output_names: names of the outputs (default ``x[0]``, ``x[1]``, ...).
        alpha: overall level of the verdict.
        seed: seeds the simulator's generator and the tie-breaking.

    Returns:
        A :class:`PPCResult`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> draws = torch.randn(500, 2, generator=g) * 0.1
        >>> sim = lambda th, gen: th + torch.randn(th.shape, generator=gen)
        >>> posterior_predictive_check(torch.tensor([0.2, -0.3]), draws, sim).verdict
        'consistent'
        >>> posterior_predictive_check(torch.tensor([6.0, 0.0]), draws, sim).flagged
        ('x[0]',)
    """
    x_obs = as_tensor(x_o, "x_o").to("cpu", torch.float64)
    if x_obs.dim() == 2 and x_obs.shape[0] == 1:
        x_obs = x_obs[0]
    if x_obs.dim() != 1:
        raise DiagnosticInputError(
            f"x_o must be one observation of shape (D_x,), found {tuple(x_obs.shape)}"
        )
    present = ~torch.isnan(x_obs)
    if bool(torch.isinf(x_obs).any()) or not bool(present.any()):
        raise DiagnosticInputError("x_o must be finite where present (NaN: an absent value)")
    draws = as_tensor(posterior_samples, "posterior_samples", ndim=2)
    check_finite_tensor(draws, "posterior_samples")
    check_level(alpha)
    if not callable(simulator):
        raise DiagnosticInputError(f"simulator must be callable, found {type(simulator).__name__}")
    generator = stream(seed, "simulator")
    with torch.no_grad():
        reps = as_tensor(simulator(draws, generator), "simulator output")
    dx = x_obs.shape[0]
    if reps.dim() != 2 or tuple(reps.shape) != (draws.shape[0], dx):
        raise DiagnosticInputError(
            f"simulator must return shape ({draws.shape[0]}, {dx}), found {tuple(reps.shape)}"
        )
    reps = reps.to("cpu", torch.float64)
    ok = torch.isfinite(reps).all(1)
    n_failed = int((~ok).sum())
    reps = reps[ok]
    if reps.shape[0] < 2:
        raise DiagnosticInputError(
            f"posterior predictive check needs at least 2 valid replicates, found {reps.shape[0]}"
        )
    names = tuple(output_names) if output_names is not None else None
    if names is not None and len(names) != dx:
        raise DiagnosticInputError(f"output_names must have {dx} entries, found {len(names)}")
    names = names or tuple(f"x[{j}]" for j in range(dx))

    n = reps.shape[0]
    less = (reps < x_obs).sum(0).to(torch.float64)
    ties = (reps == x_obs).sum(0).to(torch.float64)
    u = torch.rand(dx, generator=stream(seed, "ranks"), dtype=torch.float64)
    below = less + u * ties  # replicates counted below x_o, ties split at random
    pit = ((below + 0.5) / (n + 1)).numpy()
    lower_tail = (below + 1) / (n + 1)
    upper_tail = (n - below + 1) / (n + 1)
    tail = torch.clamp(2 * torch.minimum(lower_tail, upper_tail), max=1.0)
    pit[~present.numpy()] = np.nan
    tail = torch.where(present, tail, torch.nan).numpy()
    m = int(present.sum())
    flagged = tuple(names[j] for j in range(dx) if tail[j] < alpha / m)
    return PPCResult(
        x_observed=x_obs.numpy(),
        replicates=reps.numpy(),
        pit=pit,
        tail_probability=tail,
        output_names=names,
        simulator_kind="surrogate" if surrogate else "simulator",
        n_failed=n_failed,
        alpha=float(alpha),
        flagged=flagged,
        verdict="inconsistent" if flagged else "consistent",
    )
