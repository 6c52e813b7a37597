"""A posterior made elsewhere (sbi, or any object with ``sample`` and ``log_prob``), in the shape
sbitk's diagnostics, report and ArviZ export read.

sbi's posteriors sample with ``posterior.sample((n,), x=x_o) -> (n, D)`` and evaluate
``posterior.log_prob(theta, x=x_o) -> (n,)``, one observation at a time; its direct posteriors
also batch over observations (``sample_batched``, ``log_prob_batched``). :func:`wrap_posterior`
uses the batched calls where the object has them and loops over observations otherwise, so that
``sbitk.workflow.diagnose`` (and ``sbitk.check_posterior``) run on it unchanged.

Example:
    >>> import torch
    >>> class Shifted:  # any object with sample and log_prob, one observation at a time
    ...     def sample(self, shape, x):
    ...         return x + torch.randn(*shape, x.shape[-1])
    ...     def log_prob(self, theta, x):
    ...         return torch.distributions.Normal(x, 1.0).log_prob(theta).sum(-1)
    >>> posterior = wrap_posterior(Shifted(), parameter_names=["a", "b"])
    >>> posterior.sample(5, torch.zeros(3, 2), seed=0).shape
    torch.Size([5, 3, 2])
    >>> posterior.log_prob(torch.zeros(5, 3, 2), torch.zeros(3, 2)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sbitk.errors import SbitkError
from sbitk.models.contract import EXACT, NONE
from sbitk.simulation.rng import cuda_in_use, seeded


class ExternalPosterior:
    """An amortized posterior q(θ | x) from another library, behind sbitk's posterior interface.

    Args:
        posterior: An object with ``sample(shape, x=...)`` and, for HPD coverage and the ArviZ
            ``lp`` values, ``log_prob(theta, x=...)``.
        parameter_names: Names of the D parameters.
        output_names: Names of the simulator's outputs (default ``x[0]``, ``x[1]``, ...).
        simulator_name: The registered simulator it was trained on (for the report).
    """

    amortized, iid_trials, role, history = True, False, "npe", None
    #: Columns of x that may be left out (NaN): none, x is taken whole.
    absent_columns: tuple[int, ...] = ()

    def __init__(
        self,
        posterior: Any,
        parameter_names: Sequence[str],
        output_names: Sequence[str] | None = None,
        simulator_name: str | None = None,
    ):
        if not callable(getattr(posterior, "sample", None)):
            raise SbitkError(
                f"a posterior to check needs a sample(shape, x=...) method; "
                f"{type(posterior).__name__} has none"
            )
        self.posterior = posterior
        self.parameter_names = tuple(parameter_names)
        self.output_names = None if output_names is None else tuple(output_names)
        self.simulator_name = simulator_name
        self.density = EXACT if callable(getattr(posterior, "log_prob", None)) else NONE

    def _batched(self, name: str):
        method = getattr(self.posterior, f"{name}_batched", None)
        return method if callable(method) else None

    def sample(self, n: int, x: Tensor, *, seed: int | None = None) -> Tensor:
        """Draws ``(n, B, D)`` for observations x ``(B, D_x)``; ``(n, D)`` for one ``(D_x,)``."""
        single = x.dim() == 1
        xs = x.reshape(1, -1) if single else x
        with seeded(seed, cuda_in_use()):  # the wrapped posterior may live on any device
            batched = self._batched("sample")
            if batched is not None:
                draws = batched((n,), x=xs, **_quiet(batched))
            else:
                one = self.posterior.sample
                draws = torch.stack([one((n,), x=xb, **_quiet(one)) for xb in xs], 1)
        draws = torch.as_tensor(draws).reshape(n, xs.shape[0], -1).detach().cpu()
        return draws[:, 0] if single else draws

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """log q(θ | x) for θ ``(n, B, D)`` and x ``(B, D_x)`` (up to a constant per x, which is
        all HPD coverage needs: sbi's normalisation by rejection is not asked for)."""
        if self.density == NONE:
            raise SbitkError(f"{type(self.posterior).__name__} offers samples only, no log_prob")
        xs = x.reshape(1, -1) if x.dim() == 1 else x
        theta = theta.reshape(-1, xs.shape[0], theta.shape[-1])
        batched = self._batched("log_prob")
        if batched is not None:
            extra = {"norm_posterior": False} if _accepts(batched, "norm_posterior") else {}
            out = batched(theta, x=xs, **extra)
        else:
            one = self.posterior.log_prob
            extra = {"norm_posterior": False} if _accepts(one, "norm_posterior") else {}
            out = torch.stack([one(theta[:, b], x=xb, **extra) for b, xb in enumerate(xs)], 1)
        return torch.as_tensor(out).reshape(theta.shape[:2]).detach().cpu()

    def __repr__(self) -> str:
        return f"ExternalPosterior({type(self.posterior).__name__}, density={self.density!r})"


def _accepts(method, name: str) -> bool:
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _quiet(method) -> dict:
    """Turn sbi's progress bars off where the method has the switch."""
    return {"show_progress_bars": False} if _accepts(method, "show_progress_bars") else {}


def wrap_posterior(
    posterior: Any,
    parameter_names: Sequence[str],
    output_names: Sequence[str] | None = None,
    simulator_name: str | None = None,
) -> ExternalPosterior:
    """``posterior`` behind sbitk's posterior interface (see :class:`ExternalPosterior`)."""
    return ExternalPosterior(posterior, parameter_names, output_names, simulator_name)


__all__ = ["ExternalPosterior", "wrap_posterior"]
