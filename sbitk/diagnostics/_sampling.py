"""Posterior draws for many observations at once, and ranks with randomised tie-breaking."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor

from sbitk.diagnostics._checks import DiagnosticInputError
from sbitk.inference import data
from sbitk.posteriors.direct import default_chunk_rows


class BatchedSampler(Protocol):
    """A posterior sampler batched over observations: ``sample(x, n) -> (n, B, D)``.

    ``x`` has shape ``(B, D_x)``; the result holds ``n`` draws of ``q(θ | x_b)`` for every
    observation ``b``.
    """

    def __call__(self, x: Tensor, n: int) -> Tensor: ...


#: An array-like as a floating tensor of a given rank (:func:`sbitk.inference.data.as_tensor`).
as_tensor = partial(data.as_tensor, error=DiagnosticInputError)
#: θ (N, D) and x (N, D_x) as finite tensors with the same N >= ``minimum`` (2 unless given):
#: the one pair check, :func:`sbitk.inference.data.check_pair`.
check_pairs = partial(data.check_pair, minimum=2, error=DiagnosticInputError)


def check_finite_tensor(value: Tensor, name: str) -> None:
    """Raise when ``value`` holds NaN or infinite entries, saying how many."""
    # Fast path: NaN and ±inf propagate into the sum; only a non-finite sum needs the count.
    if value.numel() == 0 or bool(torch.isfinite(value.sum())):
        return
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise DiagnosticInputError(
            f"{name} must be finite, found {int(bad.sum())} non-finite value(s)"
        )


def progress_enabled(progress: bool | None) -> bool:
    """Show a progress bar when asked, or by default on a TTY unless ``TQDM_DISABLE`` is set."""
    if progress is not None:
        return bool(progress)
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


def posterior_chunks(
    posterior: BatchedSampler | Any,
    x: Tensor,
    n_samples: int,
    batch_size: int,
    dim: int,
    progress: bool | None = None,
    desc: str = "posterior draws",
):
    """Yield ``(start, stop, draws)`` with draws of shape ``(n_samples, stop - start, D)``.

    Args:
        posterior: a :class:`BatchedSampler`, or precomputed draws of shape ``(L, N, D)``
            (then ``n_samples`` is ignored and all ``L`` draws are used).
        x: observations, shape ``(N, D_x)``.
        n_samples: draws per observation when ``posterior`` is a sampler.
        batch_size: observations per call of the sampler.
        dim: the parameter dimension ``D`` the draws must have.
        progress: show a progress bar (``None``: on a TTY unless ``TQDM_DISABLE`` is set).
        desc: progress bar label.
    """
    n = x.shape[0]
    if not callable(posterior):
        draws = as_tensor(posterior, "posterior samples", ndim=3)
        if draws.shape[1:] != (n, dim) or draws.shape[0] < 1:
            raise DiagnosticInputError(
                f"posterior samples must have shape (L, {n}, {dim}) with L >= 1 draws, found "
                f"{tuple(draws.shape)}"
            )
        check_finite_tensor(draws, "posterior samples")
        yield 0, n, draws
        return
    if getattr(posterior, "__name__", "") == "sample" and hasattr(posterior, "__self__"):
        raise DiagnosticInputError(
            "the sampler is called as sampler(x, n), and a posterior's sample method takes "
            "(n, x): pass lambda x, n: posterior.sample(n, x) (NPE) or the draws themselves"
        )
    if int(n_samples) < 1:
        raise DiagnosticInputError(f"n_samples must be positive, found {n_samples}")
    if int(batch_size) < 1:
        raise DiagnosticInputError(f"batch_size must be positive, found {batch_size}")
    from tqdm.auto import tqdm

    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress_enabled(progress)):
        stop = min(start + batch_size, n)
        with torch.no_grad():
            draws = posterior(x[start:stop], int(n_samples))
        draws = as_tensor(draws, "posterior sampler output").detach()
        expected = (int(n_samples), stop - start, dim)
        if tuple(draws.shape) != expected:
            raise DiagnosticInputError(
                f"posterior sampler must return shape (n, B, D) = {expected}, found "
                f"{tuple(draws.shape)}"
            )
        check_finite_tensor(draws, "posterior sampler output")
        yield start, stop, draws


def randomized_ranks(stat_draws: Tensor, stat_true: Tensor, generator: torch.Generator) -> Tensor:
    """Rank of the true statistic among the draws' statistics, ties broken at random.

    Args:
        stat_draws: statistic of each draw, shape ``(L, *B)``.
        stat_true: statistic of the true value, shape ``(*B,)``.
        generator: source of the tie-breaking randomness.

    Returns:
        Integer ranks in ``{0, ..., L}``, shape ``(*B,)``: uniform when the true value is
        exchangeable with the draws, whatever the ties.
    """
    # Counting in cache-sized slices of draws with byte-wide booleans summed into int32 is
    # several times faster than one int64 reduction over the whole (L, *B) comparison.
    less = torch.zeros(stat_true.shape, dtype=torch.int32, device=stat_true.device)
    ties = torch.zeros_like(less)
    for start in range(0, stat_draws.shape[0], 128):
        chunk = stat_draws[start : start + 128]
        less += (chunk < stat_true).view(torch.uint8).sum(0, dtype=torch.int32)
        ties += (chunk == stat_true).view(torch.uint8).sum(0, dtype=torch.int32)
    less, ties = less.long(), ties.long()
    u = torch.rand(less.shape, generator=generator, dtype=torch.float64).to(less.device)
    return less + torch.floor(u * (ties + 1).to(torch.float64)).to(less.dtype)


def evaluate_quantity(
    fn: Callable[[Tensor, Tensor], Tensor],
    theta: Tensor,
    x: Tensor,
    name: str,
    chunk_rows: int | None = None,
) -> Tensor:
    """Call a test quantity ``f(θ (L, B, D), x (B, D_x)) -> (L, B)`` and check its shape.

    The draws are passed in slices along ``L`` of at most ``chunk_rows`` rows (``None``: the
    device's :func:`~sbitk.posteriors.direct.default_chunk_rows`), since a density network
    evaluated on 10⁵ rows at once runs out of cache on the CPU.
    """
    rows = chunk_rows or default_chunk_rows(theta.device)
    step = max(1, rows // max(1, math.prod(theta.shape[1:-1])))
    parts = []
    for start in range(0, max(theta.shape[0], 1), step):
        part = theta[start : start + step]
        out = as_tensor(fn(part, x), f"test quantity {name!r}")
        if tuple(out.shape) != tuple(part.shape[:-1]):
            raise DiagnosticInputError(
                f"test quantity {name!r} must map θ of shape {tuple(part.shape)} to shape "
                f"{tuple(part.shape[:-1])}, found {tuple(out.shape)}"
            )
        parts.append(out)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


_STREAMS = {"ranks": 1, "references": 2, "simulator": 3, "split": 4, "permutations": 5}


def stream(seed: int, purpose: str) -> torch.Generator:
    """A torch generator for one purpose, seeded by hashing ``(seed, purpose)``.

    Callers commonly draw their data from ``torch.Generator().manual_seed(seed)`` with the same
    small seed they pass here; a generator seeded identically would replay the very uniforms
    behind those draws (Mersenne Twister), making "random" reference points or tie-breaks
    depend on the true parameters. Hashing through ``numpy.random.SeedSequence`` avoids that.
    """
    import numpy as np

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _STREAMS[purpose]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
