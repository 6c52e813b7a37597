"""Reading observed data: CSV or Parquet files whose columns are the simulator's outputs.

A file holds one row per observation and one column per simulator output, named exactly as the
simulator names its outputs (:attr:`sbitk.Simulator.output_names`). Column order in the file does
not matter: the returned tensor follows the order of the names given. Every problem with the
file raises :class:`~sbitk.errors.ObservationError` with a one-line message naming it; rows are
counted from 1, the header not included.

Two readings of the rows:

* ``iid=False`` (default): each row is a separate observation :math:`x_o^{(b)}`; a posterior is
  sampled for each of them (NPE amortizes over the rows).
* ``iid=True``: the rows are i.i.d. trials :math:`x_1, \\dots, x_n` of one observation, whose
  likelihood is :math:`\\prod_i p(x_i \\mid \\theta)`; this is what NLE's MCMC posterior takes.

Both return the same ``(rows, D_x)`` tensor; the flag changes how the rows are named in error
messages and must be passed on to the posterior by the caller. :func:`read_observed_data` returns
the tensor together with the flag and names, for callers that carry it further.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "obs.csv"
    >>> _ = path.write_text("x[1],x[0]\\n0.5,-0.25\\n1.0,2.0\\n")
    >>> read_observed(path, ["x[0]", "x[1]"])
    tensor([[-0.2500,  0.5000],
            [ 2.0000,  1.0000]])
"""

from __future__ import annotations

import csv
import math
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sbitk.errors import ObservationError

__all__ = [
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "ObservedData",
    "read_observed",
    "read_observed_data",
]

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Cells that pandas/numpy would silently turn into NaN or Inf; named in the error instead.
_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


@dataclass(frozen=True)
class ObservedData:
    """Observed data read from a file.

    Attributes:
        x: the rows, shape ``(B, D_x)``: B observations, or B i.i.d. trials of one when ``iid``.
        output_names: the column names, in the order of ``x``'s last axis.
        iid: whether the rows are i.i.d. trials of a single observation.
        path: the file read.
    """

    x: Tensor
    output_names: tuple[str, ...]
    iid: bool
    path: Path

    @property
    def n_observations(self) -> int:
        """Number of separate observations: 1 when ``iid``, else the number of rows."""
        return 1 if self.iid else int(self.x.shape[0])


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise ObservationError(
        f"observed data {path}: unknown format {''.join(path.suffixes) or '(no suffix)'!r}; "
        f"expected one of {known}"
    )


def _column_name(name) -> str:
    """A column or output name as it is matched: stripped, Unicode NFC-normalised, so that
    "µ" typed as one code point or "é" as e + combining accent match the simulator's names."""
    return unicodedata.normalize("NFC", str(name).strip())


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _check_columns(path: Path, found: list[str], expected: tuple[str, ...]) -> None:
    duplicates = sorted({c for c in found if found.count(c) > 1})
    if duplicates:
        raise ObservationError(f"observed data {path}: duplicate columns {_names(duplicates)}")
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing columns {_names(missing)}")
    if extra:
        parts.append(f"extra columns {_names(extra)}")
    if len(found) != len(expected):
        parts.append(f"expected {len(expected)} columns ({_names(expected)}), found {len(found)}")
    if missing and all(_is_number(c) for c in found):
        parts.append("the file seems to have no header row")
    separators = [sep for sep in (";", "\t", "|") if any(sep in c for c in found)]
    if missing and separators:
        parts.append(f"the file seems to separate values by {separators[0]!r}; expected ','")
    raise ObservationError(f"observed data {path}: " + "; ".join(parts))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row_label(iid: bool) -> str:
    return "trial" if iid else "row"


def _read_csv(
    path: Path, expected: tuple[str, ...], iid: bool, absent: frozenset[int]
) -> np.ndarray:
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            skip_blank_lines=True,
            encoding="utf-8-sig",  # spreadsheets often start UTF-8 files with a byte-order mark
        )
    except pd.errors.EmptyDataError:
        raise ObservationError(f"observed data {path}: the file is empty") from None
    except pd.errors.ParserError as err:
        # pandas names the offending line: "Expected 2 fields in line 3, saw 3"
        detail = str(err).strip().splitlines()[-1].removeprefix("Error tokenizing data. C error: ")
        raise ObservationError(
            f"observed data {path}: wrong number of values in a row ({detail}); "
            f"expected {len(expected)} per row ({_names(expected)})"
        ) from None
    except UnicodeDecodeError as err:
        raise ObservationError(
            f"observed data {path}: unreadable, not UTF-8 text ({err.reason})"
        ) from None
    except (OSError, ValueError) as err:
        raise ObservationError(f"observed data {path}: unreadable ({err})") from None
    if not isinstance(frame.index, pd.RangeIndex):
        # Every row one value longer than the header: pandas would silently take the first
        # column as an index and shift the values by one column.
        raise ObservationError(
            f"observed data {path}: wrong number of values in a row (row 1 has "
            f"{frame.shape[1] + 1} values, the header {frame.shape[1]} columns); "
            f"expected {len(expected)} per row ({_names(expected)})"
        )
    header = _csv_header(path)
    _check_columns(path, header, expected)
    frame.columns = header
    if len(frame) == 0:
        raise ObservationError(f"observed data {path}: no rows, only a header")
    out = np.empty((len(frame), len(expected)), dtype=np.float64)
    label = _row_label(iid)
    for j, name in enumerate(expected):
        for i, cell in enumerate(frame[name].tolist()):
            text = "" if cell is None else str(cell).strip()
            where = f"{label} {i + 1}, column {name!r}"
            if text == "" and j in absent:
                out[i, j] = math.nan  # an absent trial's value
                continue
            if text == "":
                raise ObservationError(f"observed data {path}: empty value at {where}")
            if text.lower() in _NON_FINITE:
                raise ObservationError(
                    f"observed data {path}: non-finite value {text} at {where}; "
                    "observations must be finite numbers"
                )
            try:
                value = float(text)
            except ValueError:
                raise ObservationError(
                    f"observed data {path}: non-numeric value {text!r} at {where}"
                ) from None
            if not math.isfinite(value):  # overflow such as 1e999
                raise ObservationError(
                    f"observed data {path}: non-finite value {text} at {where}; "
                    "observations must be finite numbers"
                )
            out[i, j] = value
    return out


def _csv_header(path: Path) -> list[str]:
    # pandas renames duplicate columns ("x", "x.1"); the raw header shows them as they are.
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if any(cell.strip() for cell in row):
                return [_column_name(cell) for cell in row]
    return []


def _read_parquet(
    path: Path, expected: tuple[str, ...], iid: bool, absent: frozenset[int]
) -> np.ndarray:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ObservationError(
            f"reading the Parquet file {path} needs pyarrow: pip install 'sbitk[parquet]', or "
            "give the data as CSV"
        ) from None

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ObservationError(
            f"observed data {path}: unreadable, not a valid Parquet file ({err})"
        ) from None
    found = [_column_name(c) for c in table.column_names]
    if not found:
        raise ObservationError(f"observed data {path}: the file is empty (no columns)")
    _check_columns(path, found, expected)
    if table.num_rows == 0:
        raise ObservationError(f"observed data {path}: no rows")
    label = _row_label(iid)
    out = np.empty((table.num_rows, len(expected)), dtype=np.float64)
    for j, name in enumerate(expected):
        column = table.column(found.index(name))
        kind = column.type
        if (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        ):
            lengths = [len(v) if v is not None else 0 for v in column.to_pylist()]
            raise ObservationError(
                f"observed data {path}: wrong dimensionality, column {name!r} holds arrays "
                f"(length {lengths[0]} in {label} 1); expected one number per cell"
            )
        values = column.to_pylist()
        for i, value in enumerate(values):
            where = f"{label} {i + 1}, column {name!r}"
            if j in absent and (value is None or (isinstance(value, float) and value != value)):
                out[i, j] = math.nan  # an absent trial's value: a null or a NaN
                continue
            if value is None:
                raise ObservationError(f"observed data {path}: empty value at {where}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if isinstance(value, str) and _is_number(value.strip()):
                    value = float(value)
                else:
                    raise ObservationError(
                        f"observed data {path}: non-numeric value {value!r} at {where}"
                    )
            if not math.isfinite(value):
                raise ObservationError(
                    f"observed data {path}: non-finite value {value} at {where}; "
                    "observations must be finite numbers"
                )
            out[i, j] = value
    return out


def read_observed_data(
    path: str | os.PathLike,
    output_names: Sequence[str],
    *,
    iid: bool = False,
    dtype: torch.dtype | None = None,
    absent: Sequence[int] = (),
) -> ObservedData:
    """Read observed data and keep how its rows are to be read.

    Args:
        path: a ``.csv`` (optionally ``.csv.gz``) or ``.parquet`` file.
        output_names: the simulator's output names; the columns must be exactly these.
        iid: the rows are i.i.d. trials of one observation rather than separate observations.
        dtype: dtype of the tensor (default: torch's default dtype).
        absent: indices of the columns whose cells may be left empty (a CSV's empty cell, a
            Parquet null): the values of absent trials, read as NaN (a posterior's
            ``absent_columns``, which then checks that whole trials are left out).

    Returns:
        An :class:`ObservedData`.

    Raises:
        ObservationError: the file is missing, unreadable, of unknown format, empty; has missing,
            extra or duplicate columns, rows of the wrong length, or non-numeric, empty or
            non-finite values.
    """
    path = Path(path)
    expected = tuple(_column_name(n) for n in output_names)
    if not expected:
        raise ObservationError("observed data: the simulator declares no output names")
    fmt = _format_of(path)
    if not path.exists():
        raise ObservationError(f"observed data {path}: file not found")
    if path.is_dir():
        raise ObservationError(f"observed data {path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ObservationError(f"observed data {path}: the file is empty")
    try:
        reader = _read_csv if fmt == "csv" else _read_parquet
        values = reader(path, expected, iid, frozenset(absent))
    except PermissionError:
        raise ObservationError(f"observed data {path}: unreadable, permission denied") from None
    except UnicodeDecodeError as err:
        raise ObservationError(
            f"observed data {path}: unreadable, not UTF-8 text ({err.reason})"
        ) from None
    except OSError as err:  # e.g. a truncated .gz
        raise ObservationError(f"observed data {path}: unreadable ({err})") from None
    x = torch.as_tensor(values, dtype=dtype or torch.get_default_dtype())
    if torch.isinf(x).any():  # finite in float64 but overflowing the target dtype
        i, j = (int(v) for v in torch.nonzero(torch.isinf(x))[0])
        raise ObservationError(
            f"observed data {path}: value {values[i, j]} at {_row_label(iid)} {i + 1}, column "
            f"{expected[j]!r} overflows {x.dtype}"
        )
    return ObservedData(x=x, output_names=expected, iid=iid, path=path)


def read_observed(
    path: str | os.PathLike,
    output_names: Sequence[str],
    *,
    iid: bool = False,
    dtype: torch.dtype | None = None,
    absent: Sequence[int] = (),
) -> Tensor:
    """Read observed data into a ``(B, D_x)`` tensor, columns in the order of ``output_names``.

    Args:
        path: a ``.csv`` (optionally ``.csv.gz``) or ``.parquet`` file, one row per observation
            (or per trial when ``iid``), one column per simulator output.
        output_names: the simulator's output names; the columns must be exactly these.
        iid: the rows are i.i.d. trials of one observation; the result is then ``(n_trials, D_x)``
            and is to be passed whole to a posterior that accepts i.i.d. trials (NLE).
        dtype: dtype of the tensor (default: torch's default dtype).
        absent: columns whose empty cells are absent trials' values (NaN); see
            :func:`read_observed_data`.

    Returns:
        The observations, shape ``(B, D_x)``.

    Raises:
        ObservationError: see :func:`read_observed_data`.
    """
    return read_observed_data(path, output_names, iid=iid, dtype=dtype, absent=absent).x
