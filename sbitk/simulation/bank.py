"""The simulation bank: rows of (θ, x, valid) in a chunked Zarr (v3) store on disk.

Layout of a bank directory::

    bank.zarr/
      zarr.json   attrs: format, simulator description (name, version, names, prior spec), seed,
                  batch size, the plan of batches, failure counts, sbitk version
      theta       (N, D_θ) float32, chunked along rows (one chunk per batch)
      x           (N, D_x) float32, NaN in every row that is not valid
      valid       (N,)     bool
      status      (N,)     int8: 0 ok, 1 exception, 2 NaN, 3 Inf, 4 wrong output shape or type,
                           -1 not simulated yet
      error       (N,)     str: the message of rows that raised or had the wrong shape, else ""
      done        (B,)     bool, one element per batch

Batch ``b`` holds rows ``[start_b, start_b + size_b)``. Its data arrays are written first and
``done[b]`` last; every chunk file is written atomically (a temporary file renamed into place),
so a batch that is marked done is complete, and an interrupted run redoes exactly the batches
not marked done. Appending adds a new segment of batches whose indices continue the old ones, so
the per-batch random seeds never repeat.

Example:
    >>> import sbitk, torch
    >>> @sbitk.simulator("bank_doc", parameters={"mu": sbitk.BoxUniform(-1.0, 1.0)},
    ...                  outputs={"x": ()}, register=False)
    ... def noisy(theta, generator):
    ...     return theta + 0.1 * torch.randn(theta.shape, generator=generator)
    >>> bank = sbitk.simulate(noisy, 300, seed=1, workers=1, batch_size=100, progress=False)
    >>> len(bank), bank.theta.shape, bank.x.shape, int(bank.valid.sum())
    (300, torch.Size([300, 1]), torch.Size([300, 1]), 300)
    >>> [tuple(t.shape) for t, x, v in bank.iter_chunks()]
    [(100, 1), (100, 1), (100, 1)]
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import Tensor
from zarr.core.sync import sync

from sbitk.errors import BankError
from sbitk.simulation.priors import Prior, prior_from_spec
from sbitk.simulation.resources import MAX_BATCHES
from sbitk.simulation.simulator import STATUS_NAMES, STATUS_OK

FORMAT = "sbitk.bank"
FORMAT_VERSION = 1
#: Status of a row whose batch has not been simulated yet.
STATUS_PENDING = -1
_DATA_ARRAYS = ("theta", "x", "valid", "status", "error")


@dataclass(frozen=True)
class ParameterRange:
    """Range and mean of one parameter over a set of rows."""

    name: str
    min: float
    max: float
    mean: float


@dataclass(frozen=True)
class FailureKind:
    """Failures of one kind (exception, NaN, Inf, shape) and where they lie in parameter space.

    Attributes:
        kind: ``"exception"``, ``"nan"``, ``"inf"`` or ``"shape"`` (the wrong output shape).
        count: Number of rows.
        parameters: Range and mean of each parameter over the failing rows.
        example: One message, naming the exception or the expected and found shape (``None``
            for NaN and Inf).
        rows: Indices of the first few failing rows.
    """

    kind: str
    count: int
    parameters: tuple[ParameterRange, ...]
    example: str | None
    rows: tuple[int, ...]


@dataclass(frozen=True)
class FailureReport:
    """How many simulations failed, of which kind, and where in parameter space.

    Attributes:
        rows: Rows simulated so far.
        failed: Rows that are not valid.
        counts: Failing rows per kind (every kind listed, zeros included).
        parameters: Range and mean of each parameter over all simulated rows, for comparison.
        kinds: One entry per kind that occurred.
    """

    rows: int
    failed: int
    counts: dict[str, int]
    parameters: tuple[ParameterRange, ...]
    kinds: tuple[FailureKind, ...]

    def __str__(self) -> str:
        if self.failed == 0:
            return f"failures: none ({self.rows} rows simulated)"
        share = 100.0 * self.failed / max(self.rows, 1)
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        lines = [f"failures: {self.failed} of {self.rows} rows ({share:.2f}%): {counts}"]
        width = max(9, *(len(p.name) for p in self.parameters))
        for kind in self.kinds:
            lines.append(f"  {kind.kind}: {kind.count} rows, first at rows {list(kind.rows)}")
            if kind.example:
                lines.append(f"    example: {kind.example}")
            lines.append(f"    {'parameter':<{width}}  {'failing rows':<34}  all rows")
            for fail, every in zip(kind.parameters, self.parameters):
                lines.append(
                    f"    {fail.name:<{width}}  {_range_text(fail):<34}  {_range_text(every)}"
                )
        return "\n".join(lines)


def _range_text(r: ParameterRange) -> str:
    return f"[{r.min:.4g}, {r.max:.4g}] mean {r.mean:.4g}"


@dataclass
class _Stats:
    """Running min, max and sum of each column of θ over some rows."""

    dim: int

    def __post_init__(self):
        self.n = 0
        self.min = np.full(self.dim, np.inf)
        self.max = np.full(self.dim, -np.inf)
        self.sum = np.zeros(self.dim)

    def add(self, theta: np.ndarray) -> None:
        if len(theta) == 0:
            return
        theta = theta.astype(np.float64)
        self.n += len(theta)
        self.min = np.minimum(self.min, theta.min(0))
        self.max = np.maximum(self.max, theta.max(0))
        self.sum += theta.sum(0)

    def ranges(self, names: Sequence[str]) -> tuple[ParameterRange, ...]:
        mean = self.sum / max(self.n, 1)
        return tuple(
            ParameterRange(name, float(lo), float(hi), float(m))
            for name, lo, hi, m in zip(names, self.min, self.max, mean)
        )


def segment_batches(first: int, start: int, rows: int, size: int) -> list[tuple[int, int, int]]:
    """The batches ``(index, first row, rows)`` of a segment of ``rows`` rows planned from row
    ``start`` on, numbered from ``first``, ``size`` rows a batch (the last may have fewer).

    Example:
        >>> segment_batches(0, 0, 250, 100)
        [(0, 0, 100), (1, 100, 100), (2, 200, 50)]
    """
    return [
        (first + k, start + offset, min(size, rows - offset))
        for k, offset in enumerate(range(0, rows, size))
    ]


class Bank:
    """A simulation bank on disk (or in memory): θ, x and validity of every simulated row.

    Open one with :meth:`Bank.open`; :func:`sbitk.simulate` creates, resumes and appends them.
    Arrays are read when first asked for. Only rows of finished batches are visible: in a bank
    whose run was interrupted, ``len(bank)`` counts the rows simulated so far and ``planned``
    the rows the run asked for.
    """

    def __init__(self, group: zarr.Group | None, path: Path | None, attrs: dict | None = None):
        self._zarr_group = group  # None: opened when first needed (see _open_for_writes)
        self.path = path
        attrs = dict(group.attrs) if attrs is None else attrs
        if attrs.get("format") != FORMAT:
            where = path if path is not None else "the store"
            raise BankError(
                f"{where} is not an sbitk simulation bank: expected attribute "
                f"format={FORMAT!r}, found {attrs.get('format')!r}"
            )
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise BankError(
                f"bank {path} has format version {attrs['format_version']}, this sbitk reads "
                f"up to {FORMAT_VERSION}; upgrade sbitk"
            )
        self.attrs: dict = attrs
        self._arrays: dict[str, zarr.Array] = {}
        self._layouts: dict[str, _RawChunks | None] = {}
        self._check_plan()

    def _check_plan(self) -> None:
        """Refuse a plan no run of this sbitk makes (a run cut short before its size check
        existed): listing its batches would exhaust memory."""
        try:
            batches, planned = self.num_batches, self.planned
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise BankError(f"bank {self.path} has a damaged plan of batches: {exc}") from None
        if batches > MAX_BATCHES:
            raise BankError(
                f"bank {self.path} plans {planned} rows in {batches} batches, more than the "
                f"{MAX_BATCHES} a bank may have (a run cut short that asked for too much); "
                "delete it, or simulate again with --force and fewer rows"
            )

    @property
    def _group(self) -> zarr.Group:
        if self._zarr_group is None:
            self._zarr_group = zarr.open_group(str(self.path), mode="r+")
        return self._zarr_group

    def _array(self, name: str) -> zarr.Array:
        # Opening an array reads its metadata from the store: do it once, not per access.
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    # ---- opening and creating ----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Bank:
        """Open an existing bank read-only.

        Raises:
            BankError: when ``path`` does not exist or is not an sbitk bank.
        """
        return cls._open(path, mode="r")

    @classmethod
    def _open(cls, path: str | os.PathLike, mode: str) -> Bank:
        path = Path(path)
        if not (path / "zarr.json").is_file():
            what = "does not exist" if not path.exists() else "holds no Zarr store"
            raise BankError(f"no simulation bank at {path}: the path {what}")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for a damaged store
            raise BankError(f"cannot open the bank at {path}: {exc}") from exc
        if not isinstance(group, zarr.Group):
            raise BankError(f"{path} is a Zarr array, not a simulation bank")
        return cls(group, path)

    @classmethod
    def _open_for_writes(cls, path: Path) -> Bank:
        """Open the bank at ``path`` to write rows into: its attributes read from the group's
        ``zarr.json`` as plain JSON, the Zarr group opened only by a write that needs it. A
        worker that writes whole chunks as files never does: opening the group cost a
        millisecond of each worker's first batch of a run."""
        try:
            attrs = json.loads((path / "zarr.json").read_bytes())["attributes"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BankError(f"cannot open the bank at {path}: {exc!r}") from exc
        if not isinstance(attrs, dict):
            raise BankError(f"{path} is not an sbitk simulation bank: no map of attributes")
        return cls(None, path, attrs=attrs)

    @classmethod
    def _create(
        cls,
        path: str | os.PathLike | None,
        *,
        simulator: dict,
        seed: int,
        batch_size: int,
        sbitk_version: str,
        rows: int = 0,
        attrs: dict | None = None,
    ) -> Bank:
        """Create a bank planning ``rows`` rows as its first segment (more are planned with
        ``_extend``), with ``attrs`` added to its attributes."""
        where = None if path is None else Path(path)
        if where is not None:
            cls._check_new(where)
        segments = [{"first_batch": 0, "start": 0, "rows": rows}] if rows else []
        attributes = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sbitk_version": sbitk_version,
            "simulator": simulator,
            "simulator_name": simulator["name"],
            "simulator_version": simulator["version"],
            "parameter_names": simulator["parameter_names"],
            "output_names": simulator["output_names"],
            "prior": simulator["prior"],
            "seed": int(seed),
            "batch_size": int(batch_size),
            "segments": segments,
            "planned_rows": rows,
            "failure_counts": {k: 0 for k in _FAILURE_KINDS},
            **(attrs or {}),
        }
        widths = len(simulator["parameter_names"]), len(simulator["output_names"])
        if where is None:
            group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
            for name, spec in _arrays(*widths, batch_size, rows).items():
                group.create_array(name, **spec)
            # The format marker goes last: a creation cut short leaves a store that is not a bank.
            group.update_attributes(attributes)
            bank = cls(group, where)
        else:
            files = _metadata_files(*widths, batch_size, rows, attributes)
            _write_out(where, files)
            # The attributes as Zarr reads them back; the group is opened when first needed.
            bank = cls(None, where, attrs=json.loads(files["zarr.json"])["attributes"])
        # Nothing is done yet: a run on a new bank need not read the marks nor look for files.
        bank.__dict__["_marked_done"] = np.zeros(bank.num_batches, dtype=bool)
        bank.__dict__["_damaged"] = {}
        return bank

    @staticmethod
    def _check_new(where: Path) -> None:
        """Refuse to create a bank at ``where`` when the path exists, or cannot be created."""
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise BankError(f"cannot create a bank at {where}: the path exists")
        _make_parent(where)

    @staticmethod
    def _remove(path: str | os.PathLike) -> None:
        """Delete a bank directory, refusing anything that does not look like a Zarr store."""
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir() and not any(path.iterdir()):
            return
        if not (path.is_dir() and (path / "zarr.json").is_file()):
            raise BankError(
                f"refusing to overwrite {path}: it exists and is not a Zarr store "
                "(expected a directory holding zarr.json)"
            )
        shutil.rmtree(path)

    # ---- metadata ----------------------------------------------------------------------------
    @property
    def simulator(self) -> dict:
        """The simulator's description (:meth:`Simulator.describe`) at simulation time."""
        return self.attrs["simulator"]

    @property
    def simulator_name(self) -> str:
        return self.attrs["simulator_name"]

    @property
    def simulator_version(self) -> str:
        return self.attrs["simulator_version"]

    @property
    def parameter_names(self) -> list[str]:
        return list(self.attrs["parameter_names"])

    @property
    def output_names(self) -> list[str]:
        return list(self.attrs["output_names"])

    @property
    def prior(self) -> Prior:
        """The prior θ was drawn from, rebuilt from its spec."""
        return prior_from_spec(self.attrs["prior"])

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])

    @property
    def batch_size(self) -> int:
        return int(self.attrs["batch_size"])

    @property
    def planned(self) -> int:
        """Rows the runs so far asked for (simulated or not)."""
        return int(self.attrs["planned_rows"])

    def batches(self) -> list[tuple[int, int, int]]:
        """Every planned batch as ``(index, first row, rows)``."""
        size = self.batch_size
        return [
            b
            for seg in self.attrs["segments"]
            for b in segment_batches(seg["first_batch"], seg["start"], seg["rows"], size)
        ]

    @property
    def num_batches(self) -> int:
        return sum(math.ceil(s["rows"] / self.batch_size) for s in self.attrs["segments"])

    def done_batches(self) -> np.ndarray:
        """Mask (num_batches,) of the batches whose rows are written and still on disk.

        A batch marked done whose chunk files have gone missing since (see :meth:`damaged`)
        counts as not done: its rows are not read, and a resumed run simulates it again.
        """
        done = self._marked_done.copy()
        for b in self.damaged():
            done[b] = False
        return done

    @cached_property
    def _marked_done(self) -> np.ndarray:
        done = self._array("done")
        n = self.num_batches
        return np.asarray(done[:n], dtype=bool) if n else np.zeros(0, dtype=bool)

    def damaged(self) -> dict[int, tuple[str, ...]]:
        """Batches marked done whose chunk files are missing: batch index → the arrays.

        Zarr reads a missing chunk as its fill value, so a deleted chunk of ``x`` would
        otherwise read as NaN rows still flagged valid. Zarr stores no chunk that holds only the
        fill value, so ``theta`` and ``status`` must have a chunk for every written row, and
        ``x`` and ``valid`` one each where the chunk has a valid row. Only banks on disk are
        checked.
        """
        if "_damaged" not in self.__dict__:
            self.__dict__["_damaged"] = self._find_damaged() if self.path is not None else {}
        return self.__dict__["_damaged"]

    def _find_damaged(self) -> dict[int, tuple[str, ...]]:
        done = self._marked_done
        chunks: dict[int, list[int]] = {}
        for b, start, rows in self.batches():
            if done[b]:
                for k in self._chunk_range(start, rows):
                    chunks.setdefault(k, []).append(b)
        out: dict[int, set[str]] = {}
        for k, owners in chunks.items():
            missing = self._missing_in_chunk(k)
            for b in owners if missing else ():
                out.setdefault(b, set()).update(missing)
        return {b: tuple(sorted(names)) for b, names in sorted(out.items())}

    def _missing_in_chunk(self, k: int) -> list[str]:
        present = {}
        for name in ("theta", "status", "x", "valid"):
            arr = self._array(name)
            coords = (k,) + (0,) * (len(arr.shape) - 1)
            key = arr.metadata.chunk_key_encoding.encode_chunk_key(coords)
            present[name] = (self.path / name / key).is_file()
        missing = [n for n in ("theta", "status") if not present[n]]
        if present["x"] != present["valid"]:
            missing.append("valid" if present["x"] else "x")
        elif not present["x"] and present["status"]:
            step = self._array("status").chunks[0]
            status = self._array("status")[k * step : (k + 1) * step]
            if (status == STATUS_OK).any():
                missing += ["x", "valid"]
        return missing

    def pending_batches(self) -> list[tuple[int, int, int]]:
        """Planned batches not yet written, as ``(index, first row, rows)``."""
        done = self.done_batches()
        return [b for b in self.batches() if not done[b[0]]]

    @property
    def complete(self) -> bool:
        """Whether every planned row is simulated."""
        return bool(self.done_batches().all())

    @cached_property
    def _rows_done(self) -> np.ndarray:
        mask = np.zeros(self.planned, dtype=bool)
        done = self.done_batches()
        for b, start, rows in self.batches():
            if done[b]:
                mask[start : start + rows] = True
        return mask

    def __len__(self) -> int:
        return int(self._rows_done.sum())

    def __repr__(self) -> str:
        where = self.path if self.path is not None else "memory"
        return (
            f"Bank({str(where)!r}, simulator={self.simulator_name!r}, rows={len(self)}, "
            f"planned={self.planned})"
        )

    # ---- data --------------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        data = self._array(name)[: self.planned]
        mask = self._rows_done
        return data if mask.all() else data[mask]

    @cached_property
    def theta(self) -> Tensor:
        """Parameters (N, D_θ), float32, of every simulated row (valid or not)."""
        return torch.from_numpy(np.ascontiguousarray(self._read("theta")))

    @cached_property
    def x(self) -> Tensor:
        """Outputs (N, D_x), float32; NaN in the rows that are not valid."""
        return torch.from_numpy(np.ascontiguousarray(self._read("x")))

    @cached_property
    def valid(self) -> Tensor:
        """Validity mask (N,), bool: the simulation returned finite values without raising."""
        return torch.from_numpy(np.ascontiguousarray(self._read("valid")))

    @cached_property
    def status(self) -> Tensor:
        """Status code (N,), int8: 0 ok, 1 exception, 2 NaN, 3 Inf."""
        return torch.from_numpy(np.ascontiguousarray(self._read("status")))

    def errors(self) -> dict[int, str]:
        """Exception messages by row index (rows counted among the simulated rows)."""
        messages = self._read("error")
        return {int(i): str(messages[i]) for i in np.flatnonzero(messages != "")}

    @property
    def num_chunks(self) -> int:
        """Number of row chunks :meth:`iter_chunks` can yield (some may hold no finished rows)."""
        return math.ceil(self.planned / self._array("theta").chunks[0])

    def iter_chunks(
        self, order: Iterable[int] | None = None, *, valid_only: bool = False
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Stream ``(θ, x, valid)`` chunk by chunk, for data larger than memory.

        Args:
            order: Chunk indices to read, in this order (e.g. a permutation of
                ``range(num_chunks)`` to shuffle); all chunks in row order when omitted.
            valid_only: Drop invalid rows (``valid`` is then all True).

        Returns:
            An iterator over tuples θ (n, D_θ), x (n, D_x), valid (n,); chunks with no finished
            rows are skipped.
        """
        step = self._array("theta").chunks[0]
        mask = self._rows_done
        for k in range(self.num_chunks) if order is None else order:
            if not 0 <= k < self.num_chunks:
                raise BankError(f"chunk index {k} out of range: the bank has {self.num_chunks}")
            lo, hi = k * step, min((k + 1) * step, self.planned)
            keep = mask[lo:hi]
            if not keep.any():
                continue
            theta = self._array("theta")[lo:hi]
            x = self._array("x")[lo:hi]
            valid = self._array("valid")[lo:hi]
            if valid_only:
                keep = keep & valid
            if not keep.all():
                theta, x, valid = theta[keep], x[keep], valid[keep]
            if len(theta):
                yield torch.from_numpy(theta), torch.from_numpy(x), torch.from_numpy(valid)

    # ---- reports -----------------------------------------------------------------------------
    def failures(self) -> FailureReport:
        """Count failed simulations by kind and locate them in parameter space."""
        names = self.parameter_names
        every = _Stats(len(names))
        per_kind = {k: _Stats(len(names)) for k in _FAILURE_KINDS}
        first_rows: dict[str, list[int]] = {k: [] for k in _FAILURE_KINDS}
        example: dict[str, str] = {}
        step = self._array("theta").chunks[0]
        mask = self._rows_done
        seen = 0  # index among simulated rows, as in self.theta
        for lo in range(0, self.planned, step):
            hi = min(lo + step, self.planned)
            keep = mask[lo:hi]
            if not keep.any():
                continue
            theta = self._array("theta")[lo:hi][keep]
            status = self._array("status")[lo:hi][keep]
            every.add(theta)
            if (status != STATUS_OK).any():
                messages = self._array("error")[lo:hi][keep]
                for code, kind in STATUS_NAMES.items():
                    if code == STATUS_OK:
                        continue
                    rows = np.flatnonzero(status == code)
                    if len(rows) == 0:
                        continue
                    per_kind[kind].add(theta[rows])
                    first_rows[kind].extend(
                        int(seen + r) for r in rows[: max(0, 5 - len(first_rows[kind]))]
                    )
                    if kind not in example and messages[rows[0]]:
                        example[kind] = str(messages[rows[0]])
            seen += len(theta)
        kinds = tuple(
            FailureKind(
                kind=k,
                count=s.n,
                parameters=s.ranges(names),
                example=example.get(k),
                rows=tuple(first_rows[k][:5]),
            )
            for k, s in per_kind.items()
            if s.n
        )
        counts = {k: per_kind[k].n for k in _FAILURE_KINDS}
        return FailureReport(
            rows=every.n,
            failed=sum(counts.values()),
            counts=counts,
            parameters=every.ranges(names),
            kinds=kinds,
        )

    def summary(self) -> str:
        """A text summary: simulator, rows, valid/invalid counts, parameter ranges, failures."""
        report = self.failures()
        where = self.path if self.path is not None else "(in memory)"
        n = report.rows
        valid = n - report.failed
        pct = 100.0 * valid / n if n else 0.0
        done = self.done_batches()
        lines = [
            f"simulation bank {where}",
            f"  simulator   {self.simulator_name} (version {self.simulator_version})",
            f"  seed        {self.seed}, batch size {self.batch_size}, "
            f"{int(done.sum())} of {len(done)} batches done",
            f"  rows        {n} of {self.planned} planned"
            + ("" if n == self.planned else " (incomplete: rerun the same command to resume)"),
            *self._damage_lines(),
            f"  valid       {valid} ({pct:.2f}%), invalid {report.failed}",
            f"  sbitk       {self.attrs.get('sbitk_version', '?')}",
        ]
        width = max(len(p) for p in [*self.parameter_names, "parameter"])
        lines.append(f"  {'parameter':<{width}}  {'min':>10}  {'max':>10}  {'mean':>10}")
        for r in report.parameters:
            if report.rows:
                lines.append(
                    f"  {r.name:<{width}}  {r.min:>10.4g}  {r.max:>10.4g}  {r.mean:>10.4g}"
                )
            else:
                lines.append(f"  {r.name:<{width}}  {'-':>10}  {'-':>10}  {'-':>10}")
        outs = self.output_names
        shown = ", ".join(outs[:8]) + (f", … ({len(outs)} in all)" if len(outs) > 8 else "")
        lines.append(f"  outputs     {shown}")
        lines.append("  " + str(report).replace("\n", "\n  "))
        return "\n".join(lines)

    def _damage_lines(self) -> list[str]:
        damaged = self.damaged()
        if not damaged:
            return []
        names = sorted({n for v in damaged.values() for n in v})
        first = list(damaged)[:5]
        return [
            f"  damaged     {len(damaged)} batch(es) marked done have lost chunk files of "
            f"{', '.join(names)} (batches {first}{', …' if len(damaged) > 5 else ''}); "
            "their rows are left out; rerun the same command to simulate them again"
        ]

    # ---- writing (used by the runner) --------------------------------------------------------
    def _extend(self, rows: int) -> None:
        """Plan ``rows`` more rows as a new segment of batches (:meth:`pending_batches` lists
        them; the plan is not enumerated here, which a mistaken huge one would make slow)."""
        rows = int(rows)
        start = self.planned
        first = self.num_batches
        n_new = math.ceil(rows / self.batch_size)
        total = start + rows
        for name in _DATA_ARRAYS:
            arr = self._array(name)
            arr.resize((total, *arr.shape[1:]))
        self._array("done").resize((first + n_new,))
        self._arrays.clear()
        # The plan is recorded after the arrays have grown: an interruption in between leaves
        # arrays longer than the plan, which is harmless.
        segments = [*self.attrs["segments"], {"first_batch": first, "start": start, "rows": rows}]
        self._set_attrs(segments=segments, planned_rows=total)

    def _write_batch(
        self, index: int, start: int, theta: np.ndarray, x: np.ndarray, status: np.ndarray,
        errors: dict[int, str],
    ) -> None:  # fmt: skip
        """Write one batch's rows, then mark it done."""
        self._write_rows(start, theta, x, status, errors)
        self._mark_done(index)

    def _write_rows(
        self, start: int, theta: np.ndarray, x: np.ndarray, status: np.ndarray,
        errors: dict[int, str],
    ) -> None:  # fmt: skip
        """Write rows from ``start`` on, without marking their batch done. Safe to run in
        several processes at once only for rows whose chunks no other writer touches."""
        stop = start + len(theta)
        writes = [
            ("theta", theta),
            ("x", x),
            ("valid", status == STATUS_OK),
            ("status", status),
        ]
        if errors:  # rows without an error keep the fill value ""
            messages = np.full(len(theta), "", dtype=object)
            for row, message in errors.items():
                messages[row] = message
            writes.append(("error", messages))
        slow = [(name, v) for name, v in writes if not self._put_chunk(name, start, v)]
        if slow:
            _write_concurrently([(self._array(n), slice(start, stop), v) for n, v in slow])

    def _mark_done(self, index: int) -> None:
        """Mark batch ``index`` done, once its rows are written (one file per batch)."""
        if not self._put_chunk("done", index, np.ones(1, dtype=bool)):
            self._array("done")[index] = True

    def _put_chunk(self, name: str, start: int, values: np.ndarray) -> bool:
        """Write ``values`` as the one whole chunk of array ``name`` that starts at row
        ``start``, as a file, when the array stores raw bytes; returns whether it did.

        This is the file Zarr itself writes for such a chunk: the values in C order and the
        array's byte order, at the chunk's key, renamed into place from a temporary sibling. It
        costs a fifth of Zarr's write of the same chunk (``benchmarks/simulate.py``), which is
        most of the bank's time for cheap simulators. Anything else (a bank in memory, part of a
        chunk, an encoded array, the messages) is left to Zarr;
        ``tests/simulation/test_bank.py`` checks the files against Zarr's own, byte for byte.
        """
        layout = self._raw_layout(name) if self.path is not None else None
        if layout is None:
            return False
        step = layout.chunks[0]
        if start % step or len(values) != step:
            return False
        data = np.ascontiguousarray(values, dtype=layout.dtype)
        if data.shape != layout.chunks:
            return False
        coords = (start // step,) + (0,) * (len(layout.chunks) - 1)
        _put_file(self.path / name / layout.key(coords), data)
        return True

    def _raw_layout(self, name: str) -> _RawChunks | None:
        """How array ``name`` keeps raw chunk files, read once from its ``zarr.json`` as plain
        JSON: opening the array through Zarr costs about a millisecond, which a worker's first
        batch of a run paid for each of the five arrays it writes."""
        layouts = self._layouts
        if name not in layouts:
            try:
                document = json.loads((self.path / name / "zarr.json").read_bytes())
            except (OSError, ValueError):
                document = None
            layouts[name] = None if document is None else _RawChunks.parse(document)
        return layouts[name]

    def _chunk_range(self, start: int, rows: int) -> range:
        """The row chunks that rows ``start`` to ``start + rows`` touch."""
        step = self._array("theta").chunks[0]
        return range(start // step, (start + rows - 1) // step + 1)

    def _set_attrs(self, **values) -> None:
        """Update the group's attributes. On disk, its ``zarr.json`` is rewritten here, as Zarr
        writes it (``tests/simulation/test_bank.py`` compares the bytes), in a fifth of the time
        of Zarr's update; the group object is then not read again."""
        self.attrs.update(values)
        if self.path is None:
            self._group.update_attributes(values)
        else:
            document = {**_group_template(), "attributes": self.attrs}
            _put_file(self.path / "zarr.json", _encode(document))
        for key in ("_rows_done", "_marked_done", "_damaged"):
            self.__dict__.pop(key, None)

    def _record_failure_counts(self, counts: dict[int, int] | None = None) -> None:
        """Store how many rows failed in each way: from ``counts`` (status code → rows) when
        the caller counted every planned row, else by reading the status column back."""
        if counts is None:
            status = self._array("status")[: self.planned]
            counts = {code: int((status == code).sum()) for code in STATUS_NAMES}
        failures = {kind: int(counts.get(code, 0)) for code, kind in STATUS_NAMES.items()}
        failures.pop(STATUS_NAMES[STATUS_OK])
        self._set_attrs(failure_counts=failures)


def _make_parent(path: Path) -> None:
    """Create the parent directories of a new bank, or say in one line why they cannot be."""
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise BankError(
            f"cannot create a bank at {path}: {exc.filename} is a file, not a directory"
        ) from None
    except OSError as exc:
        raise BankError(f"cannot create a bank at {path}: {exc.strerror} ({parent})") from None
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        raise BankError(f"cannot create a bank at {path}: directory {parent} is not writable")


def _arrays(d_theta: int, d_x: int, batch_size: int, rows: int) -> dict[str, dict]:
    """The arrays of a bank planning ``rows`` rows: name → arguments of Zarr's ``create_array``.

    θ, x and the flags are stored uncompressed: simulator output compressed by 7-10 % (two_moons,
    slcp, bernoulli_glm) at 2-6 times the cost of writing it (benchmarks/simulate.py), and raw
    chunks are written as plain files (``_put_chunk``). ``done`` has one element per chunk:
    marking a batch done rewrites only its own tiny file.
    """
    raw = {"compressors": None}
    rows_of = {"shape": (rows,), "chunks": (batch_size,)}
    return {
        "theta": {"shape": (rows, d_theta), "chunks": (batch_size, d_theta), "dtype": "float32",
                  "fill_value": np.nan, **raw},
        "x": {"shape": (rows, d_x), "chunks": (batch_size, d_x), "dtype": "float32",
              "fill_value": np.nan, **raw},
        "valid": {**rows_of, "dtype": "bool", "fill_value": False, **raw},
        "status": {**rows_of, "dtype": "int8", "fill_value": STATUS_PENDING, **raw},
        "error": {**rows_of, "dtype": str},
        "done": {"shape": (math.ceil(rows / batch_size),), "chunks": (1,), "dtype": "bool",
                 "fill_value": False, **raw},
    }  # fmt: skip


@functools.lru_cache(maxsize=32)
def _templates(d_theta: int, d_x: int, batch_size: int) -> dict[str, dict]:
    """The metadata documents (key → parsed ``zarr.json``) of a bank of no rows and no
    attributes, as Zarr makes them: a bank of the same widths and batch size differs from them
    in its shapes and the group's attributes alone."""
    contents: dict = {}
    group = zarr.open_group(zarr.storage.MemoryStore(contents), mode="w")
    for name, spec in _arrays(d_theta, d_x, batch_size, 0).items():
        group.create_array(name, **spec)
    return {key: json.loads(buffer.to_bytes()) for key, buffer in contents.items()}


@functools.cache
def _group_template() -> dict:
    """The ``zarr.json`` document of a group, as Zarr makes it (its attributes to be set)."""
    contents: dict = {}
    zarr.open_group(zarr.storage.MemoryStore(contents), mode="w")
    return json.loads(contents["zarr.json"].to_bytes())


def _metadata_files(
    d_theta: int, d_x: int, batch_size: int, rows: int, attributes: dict
) -> dict[str, bytes]:
    """The ``zarr.json`` files of a new bank, byte for byte what Zarr writes for it
    (``tests/simulation/test_bank.py`` compares them), from templates with the shapes and the
    attributes set and encoded as Zarr encodes them: creating a bank took 40-70 % of the time it
    took with Zarr making them (six arrays at about 1 ms each, and 0.6 ms a call into its event
    loop; docs/benchmarks.md)."""
    shapes = {
        name: list(spec["shape"]) for name, spec in _arrays(d_theta, d_x, batch_size, rows).items()
    }
    files = {}
    for key, document in _templates(d_theta, d_x, batch_size).items():
        name = key.split("/")[0]
        document = (
            {**document, "shape": shapes[name]}
            if name in shapes
            else {**document, "attributes": attributes}
        )
        files[key] = _encode(document)
    return files


def _encode(document: dict) -> bytes:
    """A ``zarr.json`` document encoded as Zarr encodes it."""
    return json.dumps(document, indent=zarr.config.get("json_indent"), allow_nan=True).encode()


def _write_out(where: Path, contents: dict[str, bytes]) -> None:
    """Write the files of a store (``contents``: key → bytes) under ``where``. The group's own
    metadata, which holds the format marker, goes last, and whole (a worker waiting for the
    bank reads it as soon as it is there)."""
    keys = sorted(contents, key=lambda key: key == "zarr.json")
    try:
        for key in keys:
            target = where / key
            if key == "zarr.json":
                _put_file(target, contents[key])
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(contents[key])
    except OSError as exc:
        raise BankError(f"cannot create a bank at {where}: {exc.strerror or exc}") from None


def _read_only(directory: Path) -> bool:
    """Whether files cannot be created in ``directory`` (a read-only mount, or permissions
    that ``os.access`` does not see, as for root)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=directory):
            return False
    except OSError:
        return True


@dataclass(frozen=True)
class _RawChunks:
    """Where an array that Zarr stores as raw bytes keeps its chunk files, and their type."""

    chunks: tuple[int, ...]
    dtype: np.dtype  # with the files' byte order
    prefix: str  # of every chunk key: "c" and the separator (Zarr's default encoding), or ""
    separator: str

    def key(self, coords: Sequence[int]) -> str:
        """The chunk's key below the array, as Zarr encodes it."""
        return self.prefix + self.separator.join(str(int(c)) for c in coords)

    @classmethod
    def parse(cls, document: dict) -> _RawChunks | None:
        """The layout of an array from its parsed ``zarr.json``; ``None`` unless Zarr stores its
        chunks as raw bytes (format 3, a regular grid, the ``bytes`` codec alone, a boolean or
        numeric type) under a key encoding known here."""
        try:
            grid, encoding = document["chunk_grid"], document["chunk_key_encoding"]
            codecs, kind = document["codecs"], document["data_type"]
            if (
                document.get("zarr_format") != 3
                or document.get("storage_transformers")
                or grid["name"] != "regular"
                or len(codecs) != 1
                or codecs[0]["name"] != "bytes"
                or not isinstance(kind, str)
            ):
                return None
            dtype = np.dtype(kind)
            endian = codecs[0].get("configuration", {}).get("endian")
            separator = encoding.get("configuration", {}).get("separator")
            chunks = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if dtype.kind not in "biuf" or (dtype.itemsize > 1 and endian not in ("little", "big")):
            return None
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        if encoding["name"] == "default":
            separator = separator or "/"
            return cls(chunks, dtype, "c" + separator, separator)
        if encoding["name"] == "v2":
            return cls(chunks, dtype, "", separator or ".")
        return None


def _put_file(path: Path, data: np.ndarray | bytes) -> None:
    """Write ``data``'s bytes (C-contiguous) to ``path`` through a temporary sibling renamed
    into place, as Zarr's local store does: a reader sees the whole old file or the whole new
    one. Plain system calls, and the parent made only when missing: a batch's five files are
    written on a thread beside the simulation, which waits for the interpreter while this holds
    it."""
    tmp = f"{path}.{os.urandom(8).hex()}.partial"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_concurrently(writes: list[tuple[zarr.Array, slice, np.ndarray]]) -> None:
    """Write several array regions at once on Zarr's event loop, rather than one after another."""

    async def put_all():
        await asyncio.gather(*(arr.async_array.setitem(sel, value) for arr, sel, value in writes))

    sync(put_all())


_FAILURE_KINDS = tuple(k for c, k in STATUS_NAMES.items() if c != STATUS_OK)

__all__ = ["STATUS_PENDING", "Bank", "FailureKind", "FailureReport", "ParameterRange"]
