"""Observed data: CSV and Parquet read by column name, and one clear error per kind of bad file."""

import gzip
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sbitk
from sbitk.errors import ObservationError
from sbitk.io.observed import ObservedData, read_observed, read_observed_data

NAMES = ["x[0]", "x[1]", "x[2]"]


def _csv(tmp_path, text, name="obs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path, names=NAMES, **kwargs) -> str:
    with pytest.raises(ObservationError) as info:
        read_observed(path, names, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_csv_columns_follow_the_given_order(tmp_path):
    path = _csv(tmp_path, "x[2],x[0],x[1]\n3,1,2\n-6.5, 4e-3 ,5\n")
    x = read_observed(path, NAMES, dtype=torch.float64)
    assert x.dtype == torch.float64
    assert torch.equal(x, torch.tensor([[1.0, 2.0, 3.0], [4e-3, 5.0, -6.5]], dtype=torch.float64))
    assert read_observed(path, NAMES).dtype == torch.get_default_dtype()


def test_parquet_and_gzip_csv_match_csv(tmp_path):
    frame = pd.DataFrame({"x[1]": [2.0, 5.0], "x[2]": [3, 6], "x[0]": [1.0, 4.0]})
    frame.to_parquet(tmp_path / "obs.parquet")
    with gzip.open(tmp_path / "obs.csv.gz", "wt") as f:
        frame.to_csv(f, index=False)
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.equal(read_observed(tmp_path / "obs.parquet", NAMES), expected)
    assert torch.equal(read_observed(tmp_path / "obs.csv.gz", NAMES), expected)


def test_iid_rows_are_trials_of_one_observation(tmp_path):
    path = _csv(tmp_path, "x[0],x[1],x[2]\n1,2,3\n4,5,6\n7,8,9\n")
    data = read_observed_data(path, NAMES, iid=True)
    assert isinstance(data, ObservedData)
    assert data.x.shape == (3, 3) and data.iid and data.n_observations == 1
    assert data.output_names == tuple(NAMES)
    assert read_observed_data(path, NAMES).n_observations == 3
    bad = _csv(tmp_path, "x[0],x[1],x[2]\n1,2,3\n4,nan,6\n", "bad.csv")
    assert "trial 2, column 'x[1]'" in _error(bad, iid=True)


def test_example_file_is_sbibm_observation_one_of_two_moons():
    from sbitk_simulators.observations import load_observation

    names = sbitk.get_simulator("two_moons").output_names
    path = Path(__file__).resolve().parents[2] / "examples" / "two_moons_observed.csv"
    x = read_observed(path, names, dtype=torch.float64)
    expected = torch.as_tensor(load_observation("two_moons", 1), dtype=torch.float64).reshape(
        1, -1
    )
    assert x.shape == (1, len(names))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)


def test_missing_and_extra_columns_are_listed(tmp_path):
    msg = _error(_csv(tmp_path, "x[0],x[1]\n1,2\n"))
    assert "missing columns 'x[2]'" in msg and "expected 3 columns" in msg and "found 2" in msg
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2],y,z\n1,2,3,4,5\n"))
    assert "extra columns 'y', 'z'" in msg and "missing columns" not in msg
    msg = _error(_csv(tmp_path, "x[0],x[1],y\n1,2,3\n"))
    assert "missing columns 'x[2]'" in msg and "extra columns 'y'" in msg
    msg = _error(_csv(tmp_path, "x[0],x[0],x[1],x[2]\n1,1,2,3\n"))
    assert "duplicate columns 'x[0]'" in msg


def test_spreadsheet_exports(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("x[0],x[1],x[2]\r\n1,2,3\r\n".encode("utf-8-sig"))
    assert torch.equal(read_observed(bom, NAMES), torch.tensor([[1.0, 2.0, 3.0]]))
    msg = _error(_csv(tmp_path, "x[0];x[1];x[2]\n1;2;3\n"))
    assert "separate values by ';'" in msg and "extra columns 'x[0];x[1];x[2]'" in msg


def test_headerless_file_is_recognised(tmp_path):
    msg = _error(_csv(tmp_path, "1,2,3\n4,5,6\n"))
    assert "no header row" in msg and "missing columns 'x[0]', 'x[1]', 'x[2]'" in msg


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-Infinity", "1e999"])
def test_non_finite_values_name_row_and_column(tmp_path, cell):
    msg = _error(_csv(tmp_path, f"x[0],x[1],x[2]\n1,2,3\n4,5,{cell}\n"))
    assert "non-finite" in msg and "row 2, column 'x[2]'" in msg


def test_non_numeric_and_empty_values(tmp_path):
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2]\n1,abc,3\n"))
    assert "non-numeric value 'abc' at row 1, column 'x[1]'" in msg
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2]\n1,2,3\n4,,6\n"))
    assert "empty value at row 2, column 'x[1]'" in msg


def test_wrong_dimensionality_of_a_row(tmp_path):
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2]\n1,2,3\n4,5,6,7\n"))
    assert "wrong number of values" in msg and "line 3" in msg and "expected 3 per row" in msg


def test_float32_overflow_is_named(tmp_path):
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2]\n1,2,1e300\n"))
    assert "overflows torch.float32" in msg and "row 1, column 'x[2]'" in msg
    x = read_observed(tmp_path / "obs.csv", NAMES, dtype=torch.float64)
    assert x[0, 2] == 1e300


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "the file is empty"), ("\n\n", "the file is empty"), ("x[0],x[1],x[2]\n", "no rows")],
)
def test_empty_csv(tmp_path, text, expected):
    assert expected in _error(_csv(tmp_path, text))


def test_file_not_found_and_directory(tmp_path):
    assert "file not found" in _error(tmp_path / "absent.csv")
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in _error(tmp_path / "dir.csv")


def test_unknown_format_lists_the_known_ones(tmp_path):
    msg = _error(_csv(tmp_path, "x[0],x[1],x[2]\n1,2,3\n", "obs.xlsx"))
    assert "unknown format '.xlsx'" in msg and ".csv" in msg and ".parquet" in msg


def test_unreadable_files(tmp_path):
    binary = tmp_path / "obs.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage\n")
    assert "unreadable" in _error(binary)
    fake = tmp_path / "obs.parquet"
    fake.write_text("x[0],x[1],x[2]\n1,2,3\n")
    assert "not a valid Parquet file" in _error(fake)
    truncated = tmp_path / "t.parquet"
    pd.DataFrame({n: [1.0] for n in NAMES}).to_parquet(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    assert "not a valid Parquet file" in _error(truncated)


def test_parquet_errors(tmp_path):
    path = tmp_path / "obs.parquet"
    pd.DataFrame({"x[0]": [1.0], "x[1]": ["abc"], "x[2]": [3.0]}).to_parquet(path)
    assert "non-numeric value 'abc' at row 1, column 'x[1]'" in _error(path)
    pd.DataFrame({"x[0]": [1.0, float("nan")], "x[1]": [2.0, 2.0], "x[2]": [3.0, 3.0]}).to_parquet(
        path
    )
    assert "row 2, column 'x[0]'" in _error(path)
    pd.DataFrame({"x[0]": [True], "x[1]": [2.0], "x[2]": [3.0]}).to_parquet(path)
    assert "non-numeric value True" in _error(path)
    pd.DataFrame({n: pd.Series([], dtype=float) for n in NAMES}).to_parquet(path)
    assert "no rows" in _error(path)
    pd.DataFrame({"x[0]": [1.0], "x[1]": [2.0]}).to_parquet(path)
    assert "missing columns 'x[2]'" in _error(path)
    table = pa.table({"x[0]": [[1.0, 2.0]], "x[1]": [2.0], "x[2]": [3.0]})
    pq.write_table(table, path)
    assert "wrong dimensionality, column 'x[0]' holds arrays (length 2" in _error(path)


def test_no_output_names_is_an_error(tmp_path):
    with pytest.raises(ObservationError, match="no output names"):
        read_observed(_csv(tmp_path, "a\n1\n"), [])


@pytest.mark.parametrize(
    ("in_file", "declared"), [("e\u0301", "\u00e9"), ("\u00e9", "e\u0301"), ("\u03bc", "\u00b5")]
)
def test_unicode_column_names_match_in_any_normal_form(tmp_path, in_file, declared):
    """A name typed as e + combining accent in the file matches the simulator's precomposed é
    (and the reverse): both are NFC-normalised before matching. The micro sign and the Greek mu
    are different letters under NFC and stay different."""
    path = _csv(tmp_path, f"{in_file},x\n1.5,2.0\n")
    if declared == "\u00b5":
        with pytest.raises(ObservationError, match="missing columns"):
            read_observed(path, [declared, "x"])
        return
    assert read_observed(path, [declared, "x"]).tolist() == [[1.5, 2.0]]
    frame = pd.DataFrame({in_file: [1.5], "x": [2.0]})
    frame.to_parquet(tmp_path / "obs.parquet")
    assert read_observed(tmp_path / "obs.parquet", [declared, "x"]).tolist() == [[1.5, 2.0]]


def test_absent_trials_read_as_nan_in_the_columns_that_may_leave_them_out(tmp_path):
    nan = float("nan")
    expected = torch.tensor([[1.0, nan, nan], [4.0, 5.0, 6.0]])
    path = _csv(tmp_path, "x[0],x[1],x[2]\n1,,\n4,5,6\n")
    assert torch.equal(read_observed_data(path, NAMES, absent=(1, 2)).x.isnan(), expected.isnan())
    assert torch.equal(read_observed_data(path, NAMES, absent=(1, 2)).x[1], expected[1])
    assert "empty value at row 1, column 'x[1]'" in _error(path)
    assert "empty value at row 1, column 'x[2]'" in _error(path, absent=(1,))
    frame = pd.DataFrame({"x[0]": [1.0, 4.0], "x[1]": [None, 5.0], "x[2]": [nan, 6.0]})
    frame.to_parquet(tmp_path / "obs.parquet")
    x = read_observed_data(tmp_path / "obs.parquet", NAMES, absent=(1, 2)).x
    assert torch.equal(x.isnan(), expected.isnan()) and torch.equal(x[1], expected[1])
    assert "row 1, column 'x[1]'" in _error(tmp_path / "obs.parquet")
    for cell in ("nan", "inf"):  # written out, a non-finite value is refused in any column
        bad = _csv(tmp_path, f"x[0],x[1],x[2]\n1,{cell},3\n", "bad.csv")
        assert "non-finite" in _error(bad, absent=(1, 2))
