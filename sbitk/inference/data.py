"""Training rows for NPE and NLE: from tensors or a bank, invalid rows handled and reported.

A bank row is invalid when the simulator failed (``valid`` is false) or when θ or x holds NaN or
Inf; a θ outside the prior's support cannot be mapped to unconstrained space and is treated the
same. :func:`clean_rows` drops them and says how many; :class:`BankChunks` streams a bank that does
not fit in memory, applying the same cleaning and transform to every chunk.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbitk.errors import BankError, SbitkError
from sbitk.simulation.bijections import Bijection, log_columns
from sbitk.simulation.simulator import trial_blocks


@dataclass(frozen=True)
class RowReport:
    """How many training rows were seen and why some were left out."""

    n_rows: int
    n_failed: int = 0
    n_non_finite: int = 0
    n_outside_support: int = 0

    @property
    def n_excluded(self) -> int:
        return self.n_failed + self.n_non_finite + self.n_outside_support

    @property
    def n_used(self) -> int:
        return self.n_rows - self.n_excluded

    def message(self) -> str:
        return (
            f"{self.n_excluded} of {self.n_rows} rows excluded from training "
            f"({self.n_failed} failed simulations, {self.n_non_finite} with NaN/Inf, "
            f"{self.n_outside_support} with theta outside the prior's support)"
        )

    def __add__(self, other: RowReport) -> RowReport:
        return RowReport(
            self.n_rows + other.n_rows,
            self.n_failed + other.n_failed,
            self.n_non_finite + other.n_non_finite,
            self.n_outside_support + other.n_outside_support,
        )


def as_tensor(
    value: Any, name: str, ndim: int | None = None, *, error: type[SbitkError] = SbitkError
) -> Tensor:
    """An array-like as a detached floating tensor (float32 stays float32) of rank ``ndim``.

    Args:
        value: A tensor, numpy array or nested sequence.
        name: What it is, for the error message.
        ndim: The rank it must have (``None``: any).
        error: The :class:`~sbitk.errors.SbitkError` subclass to raise.
    """
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise error(f"{name} must be a numeric array, found {type(value).__name__}") from exc
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    value = value.detach()
    if ndim is not None and value.dim() != ndim:
        raise error(f"{name} must have {ndim} dimension(s), found shape {tuple(value.shape)}")
    return value


def non_finite_rows(rows: Tensor) -> int:
    """How many rows of ``rows`` (N, D) hold NaN or Inf."""
    # Fast path: NaN and ±inf propagate into the sum; only a non-finite sum needs the count.
    if rows.numel() == 0 or bool(torch.isfinite(rows.sum())):
        return 0
    return int((~torch.isfinite(rows)).any(-1).sum())


def check_pair(
    theta: Any,
    x: Any | None,
    *,
    names: tuple[str, str] = ("theta", "x"),
    dim: int | None = None,
    finite: bool = True,
    minimum: int = 0,
    what: str = "this",
    error: type[SbitkError] = SbitkError,
) -> tuple[Tensor, Tensor | None]:
    """The one check of paired rows: θ (N, D_θ) and x (N, D_x), as training and the
    diagnostics take them (training names them ``inputs`` and ``context``).

    Args:
        theta, x: The rows; ``x`` may be ``None`` (an unconditional model's context).
        names: What to call them in messages.
        dim: The number of columns ``theta`` must have (``None``: any).
        finite: Refuse rows with NaN or Inf (NPE and NLE drop them instead, and say so).
        minimum: The fewest rows ``what`` needs.
        what: Who needs them, for the message about too few rows.
        error: The :class:`~sbitk.errors.SbitkError` subclass to raise.

    Returns:
        Both as detached floating tensors (integers become the default dtype).

    Example:
        >>> check_pair(torch.zeros(3, 2), torch.zeros(2, 1))
        Traceback (most recent call last):
        ...
        sbitk.errors.SbitkError: theta and x must have the same number of rows, found 3 and 2
    """
    theta = as_tensor(theta, names[0], ndim=2, error=error)
    x = None if x is None else as_tensor(x, names[1], ndim=2, error=error)
    n = theta.shape[0]
    if dim is not None and theta.shape[1] != dim:
        raise error(f"{names[0]} must have {dim} columns, found shape {tuple(theta.shape)}")
    if x is not None and x.shape[0] != n:
        raise error(
            f"{names[0]} and {names[1]} must have the same number of rows, found {n} and "
            f"{x.shape[0]}"
        )
    for rows, name in ((theta, names[0]), (x, names[1])) if finite else ():
        if rows is not None and (bad := non_finite_rows(rows)):
            raise error(f"{name} must be finite, found {bad} row(s) with NaN or Inf; drop them")
    if n < minimum:
        raise error(f"{what} needs at least {minimum} samples, found {n}")
    return theta, x


def clean_rows(
    theta: Tensor, x: Tensor, valid: Tensor | None, prior
) -> tuple[Tensor, Tensor, RowReport]:
    """Drop failed, non-finite and out-of-support rows; return what is left and a report."""
    n = theta.shape[0]
    failed = (
        torch.zeros(n, dtype=torch.bool, device=theta.device)
        if valid is None
        else ~valid.to(theta.device, torch.bool)
    )
    finite = torch.isfinite(theta).all(-1) & torch.isfinite(x).all(-1)
    non_finite = ~failed & ~finite
    outside = ~failed & finite & ~prior.support_contains(theta)
    keep = ~failed & finite & ~outside
    report = RowReport(n, int(failed.sum()), int(non_finite.sum()), int(outside.sum()))
    return theta[keep], x[keep], report


def warn_excluded(report: RowReport, stacklevel: int = 3) -> None:
    if report.n_excluded:
        warnings.warn(report.message(), stacklevel=stacklevel)


def bank_arrays(bank) -> tuple[Tensor, Tensor, Tensor | None]:
    """θ, x and the validity mask of a bank, as tensors."""
    try:
        theta, x = bank.theta, bank.x
    except AttributeError as exc:
        raise BankError(f"expected a simulation bank with theta and x, got {type(bank)}") from exc
    valid = getattr(bank, "valid", None)
    as_t = lambda a: a if isinstance(a, Tensor) else torch.as_tensor(a[...])  # noqa: E731
    return as_t(theta), as_t(x), None if valid is None else as_t(valid)


def bank_info(bank) -> dict:
    """Simulator name, names and prior spec stored with a bank (keys missing when absent)."""
    attrs = dict(getattr(bank, "attrs", {}) or {})
    info = {}
    for key in ("simulator", "simulator_name"):
        if isinstance(attrs.get(key), str):
            info["simulator_name"] = attrs[key]
    if isinstance(attrs.get("simulator"), dict):
        info["simulator_name"] = attrs["simulator"].get("name")
    for key in ("parameter_names", "output_names", "prior", "simulator"):
        if key in attrs:
            info[key] = attrs[key]
    return info


def is_bank(obj) -> bool:
    """Whether ``obj`` looks like a simulation bank (checked on the class: reads no data)."""
    return hasattr(type(obj), "iter_chunks") and hasattr(type(obj), "theta")


def bank_nbytes(bank) -> int:
    """Bytes θ and x of a bank take in memory as float32 (0 when unknown)."""
    attrs = dict(getattr(bank, "attrs", {}) or {})
    names = attrs.get("parameter_names"), attrs.get("output_names")
    if not all(isinstance(n, list) for n in names) or not hasattr(bank, "__len__"):
        return 0
    return 4 * len(bank) * (len(names[0]) + len(names[1]))


class BankChunks:
    """A :class:`~sbitk.inference.training.ChunkSource` over a bank's chunks.

    Each chunk is cleaned (invalid rows dropped, counted in :attr:`report`) and mapped to the
    ``(inputs, context)`` pair a role trains on by ``to_pair(theta, x)``.

    Args:
        bank: A bank with ``num_chunks`` and ``iter_chunks(order=[i, ...])`` yielding
            ``(theta, x, valid)`` for the chunks asked for.
        prior: Used to drop θ outside its support.
        to_pair: Maps clean ``(theta, x)`` to ``(inputs, context)``.
    """

    def __init__(self, bank, prior, to_pair: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]):
        self.bank, self.prior, self.to_pair = bank, prior, to_pair
        if not hasattr(bank, "num_chunks"):
            raise BankError(f"cannot stream {type(bank).__name__}: it has no num_chunks")
        self.n_chunks = int(bank.num_chunks)
        self._reports: dict[int, RowReport] = {}

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.n_chunks:
            raise BankError(f"chunk index must be in [0, {self.n_chunks}), got {index}")
        chunk = next(iter(self.bank.iter_chunks(order=[index])), None)
        if chunk is None:  # a chunk with no finished rows
            d = len(getattr(self.bank, "output_names", [])) or 1
            chunk = (torch.zeros(0, self.prior.dim), torch.zeros(0, d), None)
        theta, x, valid = chunk
        theta, x = torch.as_tensor(theta), torch.as_tensor(x)
        valid = None if valid is None else torch.as_tensor(valid)
        theta, x, report = clean_rows(theta.float(), x.float(), valid, self.prior)
        self._reports[index] = report
        return self.to_pair(theta, x)

    @property
    def report(self) -> RowReport:
        """Rows seen so far (every chunk after one epoch)."""
        total = RowReport(0)
        for r in self._reports.values():
            total = total + r
        return total


def memory_limit_bytes() -> int:
    """Half of the physical memory (a bank larger than this is streamed)."""
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


__all__ = [
    "BankChunks",
    "RowReport",
    "as_tensor",
    "bank_arrays",
    "bank_info",
    "bank_nbytes",
    "check_pair",
    "clean_rows",
    "is_bank",
    "LOG_X_SKEWNESS",
    "choose_x_bijection",
    "memory_limit_bytes",
    "non_finite_rows",
    "permute_trials",
    "warn_excluded",
]


def permute_trials(x: Tensor, blocks: Sequence[tuple[int, int, int]]) -> Tensor:
    """``x`` (B, D_x) with the i.i.d. trials of each block put in a random order per row.

    ``blocks`` holds ``(offset, trials, width)`` per output of trials
    (:func:`~sbitk.simulation.simulator.trial_blocks`); draws from torch's global generator.

    Example:
        >>> x = torch.arange(7.0).expand(2, 7)
        >>> y = permute_trials(x, [(1, 3, 2)])
        >>> y[:, 0].tolist(), sorted(y[0, 1:].reshape(3, 2).tolist())
        ([0.0, 0.0], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    """
    x = x.clone()
    for offset, trials, width in blocks:
        part = x[:, offset : offset + trials * width].reshape(-1, trials, width)
        order = torch.rand(part.shape[:2], device=x.device).argsort(-1)
        shuffled = part.gather(1, order[..., None].expand(-1, -1, width))
        x[:, offset : offset + trials * width] = shuffled.reshape(x.shape[0], -1)
    return x


#: ``log_x=None`` (the default) learns on log x for a column that is positive in every training
#: row, right-skewed beyond this skewness, and more symmetric in log (|skewness| smaller):
#: counts and populations with multiplicative noise. Lotka–Volterra's 20 outputs (skewness 2 to
#: 9, except the initial state's 0.3) are such; two_moons, slcp, gaussian_linear, bernoulli_glm
#: and gaussian_mixture have none (none positive, |skewness| ≤ 0.6).
LOG_X_SKEWNESS = 1.0


def _skewness(v: Tensor) -> Tensor:
    """Sample skewness of each column of ``v`` (N, D); 0 for a constant column."""
    z = v - v.mean(0)
    std = z.pow(2).mean(0).sqrt()
    return torch.where(std > 0, z.pow(3).mean(0) / std.clamp_min(1e-300).pow(3), 0.0)


def choose_x_bijection(
    x: Tensor, log_x: bool | None, blocks: Sequence[tuple[int, int, int]] = ()
) -> Bijection:
    """The transform of x's columns that the estimator learns on, chosen from training x.

    Args:
        x: Training x (N, D_x); rows with NaN or Inf are ignored.
        log_x: ``None``: the log of every column that is positive in every row, has skewness
            above :data:`LOG_X_SKEWNESS` and a log of smaller |skewness|; ``True``: the log of
            every column (each must be positive); ``False``: none.
        blocks: i.i.d. trial blocks ``(offset, trials, width)``: a column is decided on the
            values of all trials pooled, so that permuting trials keeps the transform.

    Returns:
        A :func:`~sbitk.simulation.bijections.log_columns` bijection of D_x columns.

    Example:
        >>> from sbitk.simulation.bijections import logged_columns
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.stack([torch.randn(500, generator=g),
        ...                  torch.randn(500, generator=g).exp()], -1)
        >>> logged_columns(choose_x_bijection(x, None))
        [1]
    """
    d = x.shape[1]
    if log_x is False:
        return log_columns([False] * d)
    x = x[torch.isfinite(x).all(-1)].double()
    group = list(range(d))  # the column whose decision each column shares
    for offset, trials, width in blocks:
        if offset + trials * width > d:
            continue  # blocks that do not fit x are refused by the training's trial checks
        for k in range(trials):
            for c in range(width):
                group[offset + k * width + c] = offset + c
    positive = (x > 0).all(0) if len(x) else torch.zeros(d, dtype=torch.bool)
    if log_x is True:
        bad = torch.nonzero(~positive).flatten().tolist()
        if bad:
            raise SbitkError(
                f"log_x=True takes the log of every column of x, but column {bad[0]} is not "
                f"positive in every training row ({len(bad)} such columns); leave log_x unset "
                "to choose per column"
            )
        return log_columns([True] * d)
    decide = {}
    for g in sorted(set(group)):
        cols = [j for j in range(d) if group[j] == g]
        if not bool(positive[cols].all()) or len(x) < 3:
            decide[g] = False
            continue
        v = x[:, cols].reshape(-1, 1)
        before, after = float(_skewness(v)[0]), float(_skewness(v.log())[0])
        decide[g] = before > LOG_X_SKEWNESS and abs(after) < abs(before)
    return log_columns([decide[group[j]] for j in range(d)])


def prepare_fit(estimation, theta, x, stream: bool | None, pair):
    """Resolve what ``NPE.fit`` / ``NLE.fit`` were given: (θ, x) tensors or a bank.

    From a bank, the prior (when the estimation has none) and the parameter, output and simulator
    names are filled in on ``estimation``; the bank is either loaded or, when ``stream`` asks for
    it (``None``: when it would take more than half of the memory), wrapped as chunks mapped by
    ``pair(θ, x) -> (inputs, context)``.

    Returns:
        ``(source, theta, x, valid)``: ``source`` is the chunk stream or None; otherwise the
        tensors and the bank's validity mask (None for tensors).
    """
    from sbitk.errors import SbitkError
    from sbitk.simulation.priors import prior_from_spec

    source, valid = None, None
    if is_bank(theta):
        bank = theta
        if x is not None:
            raise SbitkError("fit(bank) takes no x: the bank holds both theta and x")
        info = bank_info(bank)
        if estimation.prior is None:
            if "prior" not in info:
                raise SbitkError("no prior given and the bank stores no prior spec")
            estimation.prior = prior_from_spec(info["prior"])
        estimation.parameter_names = estimation.parameter_names or info.get("parameter_names")
        estimation.output_names = estimation.output_names or info.get("output_names")
        estimation.simulator_name = estimation.simulator_name or info.get("simulator_name")
        if estimation.trials is None and isinstance(info.get("simulator"), dict):
            estimation.trials = trial_blocks(info["simulator"])
        if stream is None:
            stream = bank_nbytes(bank) > memory_limit_bytes()
        if stream:
            source = BankChunks(bank, estimation.prior, pair)
        else:
            theta, x, valid = bank_arrays(bank)
    elif x is None:
        raise SbitkError("fit(theta, x) needs x, or pass a bank as the only argument")
    if estimation.prior is None:
        name = type(estimation).__name__
        raise SbitkError(f"{name} needs a prior: {name}(prior, ...)")
    return source, theta, x, valid
