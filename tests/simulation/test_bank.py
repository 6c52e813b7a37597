"""The Zarr simulation bank: resume after a kill, append, mismatches, streaming, reports."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import zarr

import sbitk
from sbitk.errors import BankError, SimulatorError
from sbitk.simulation.bank import Bank
from sbitk.simulation.runner import simulate, simulate_batch

SLOW_SIMS = textwrap.dedent(
    """
    import os
    import time

    import torch

    import sbitk

    CALLS = [0]


    @sbitk.simulator(
        "bank_walk",
        parameters={"a": sbitk.Normal(0.0, 1.0), "b": sbitk.BoxUniform(0.0, 1.0)},
        outputs={"x": (2,)},
        register=False,
    )
    def walk(theta, generator):
        CALLS[0] += 1
        time.sleep(float(os.environ.get("BANK_WALK_SLEEP", "0")))
        return theta + torch.randn(theta.shape[0], 2, generator=generator)
    """
)


@sbitk.simulator(
    "bank_line",
    parameters={"slope": sbitk.BoxUniform(-2.0, 2.0), "noise": sbitk.LogNormal(-1.0, 0.5)},
    outputs={"y": (4,)},
    register=False,
)
def line(theta, generator):
    t = torch.arange(4.0)
    y = theta[:, :1] * t + theta[:, 1:] * torch.randn(theta.shape[0], 4, generator=generator)
    y[theta[:, 0] > 1.8] = float("nan")  # a small failing region for the reports
    return y


@sbitk.simulator(
    "bank_other",
    parameters={"slope": sbitk.BoxUniform(-2.0, 2.0)},
    outputs={"y": (4,)},
    register=False,
)
def other(theta, generator):
    return theta.repeat(1, 4)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _same(a: Bank, b: Bank) -> None:
    assert len(a) == len(b)
    for name in ("theta", "x", "valid", "status"):
        assert torch.equal(_bits(getattr(a, name)), _bits(getattr(b, name))), name


def _quiet(*args, **kwargs) -> Bank:
    kwargs.setdefault("progress", False)
    with pytest.warns(sbitk.simulation.runner.SimulationFailureWarning):
        return simulate(*args, **kwargs)


def _load_module(path):
    spec = importlib.util.spec_from_file_location("bank_slow_sims", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bank_slow_sims"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    (tmp_path / "bank_slow_sims.py").write_text(SLOW_SIMS)
    path = tmp_path / "walk.zarr"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import bank_slow_sims
        import sbitk

        if __name__ == "__main__":
            sbitk.simulate(bank_slow_sims.walk, 1200, seed=5, workers=2, batch_size=30,
                           bank={str(path)!r}, progress=False)
        """
    )
    env = {**os.environ, "BANK_WALK_SLEEP": "0.1"}
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, start_new_session=True, stderr=subprocess.PIPE
    )
    done_dir = path / "done" / "c"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if done_dir.is_dir() and len(os.listdir(done_dir)) >= 6:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        # The whole process group: the caller, its fork server and its worker processes.
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stderr.close()

    partial = Bank.open(path)
    pending = partial.pending_batches()
    assert 0 < len(pending) < 40, "the kill must land part-way"
    assert len(partial) == 30 * (40 - len(pending)) and partial.planned == 1200
    assert not partial.complete and "incomplete" in partial.summary()
    written, done = partial.theta.clone(), partial.done_batches()

    module = _load_module(tmp_path / "bank_slow_sims.py")
    try:
        resumed = simulate(module.walk, 1200, seed=5, workers=1, bank=path, progress=False)
        # Only the batches not marked done were simulated again.
        assert module.CALLS[0] == len(pending)
        reference = simulate(module.walk, 1200, seed=5, workers=1, batch_size=30, progress=False)
    finally:
        del sys.modules["bank_slow_sims"]
    assert resumed.complete and len(resumed) == 1200
    _same(resumed, reference)
    assert len(torch.unique(resumed.theta[:, 0])) == 1200  # no row twice
    # Rows finished before the kill are exactly those of the uninterrupted run.
    rows = torch.cat([torch.arange(b * 30, b * 30 + 30) for b in np.flatnonzero(done)])
    assert torch.equal(written, reference.theta[rows])


def test_rerunning_a_complete_bank_simulates_nothing(tmp_path):
    path = tmp_path / "line.zarr"
    first = _quiet(line, 400, seed=1, workers=1, batch_size=100, bank=path)
    stamp = {p: p.stat().st_mtime_ns for p in (path / "theta" / "c").rglob("*")}
    again = simulate(line, 400, seed=1, workers=1, bank=path, progress=False)
    _same(first, again)
    assert stamp == {p: p.stat().st_mtime_ns for p in (path / "theta" / "c").rglob("*")}


def test_append_continues_batch_numbering_so_seeds_never_repeat(tmp_path):
    path = tmp_path / "line.zarr"
    first = _quiet(line, 500, seed=2, workers=1, batch_size=200, bank=path)
    assert first.num_batches == 3  # 200 + 200 + 100
    grown = _quiet(line, 300, seed=2, workers=2, bank=path, append=True)
    assert len(grown) == 800 and grown.planned == 800 and grown.num_batches == 5
    assert torch.equal(_bits(grown.theta[:500]), _bits(first.theta))
    assert torch.equal(_bits(grown.x[:500]), _bits(first.x))
    assert [b[1:] for b in grown.batches()] == [
        (0, 200), (200, 200), (400, 100), (500, 200), (700, 100)
    ]  # fmt: skip
    # The new rows are batches 3 and 4 of the same seed: fresh random streams.
    batch3 = simulate_batch(line, 2, 3, 200)
    assert torch.equal(grown.theta[500:700], torch.from_numpy(batch3["theta"]))
    assert len(torch.unique(grown.theta[:, 0])) == 800
    # Appending to a missing bank creates it.
    fresh = _quiet(line, 300, seed=2, workers=1, bank=tmp_path / "new.zarr", append=True)
    assert len(fresh) == 300


def test_workers_write_their_own_batches_except_those_sharing_a_chunk(tmp_path):
    from sbitk.simulation.runner import _exclusive

    path = tmp_path / "line.zarr"
    _quiet(line, 500, seed=3, workers=1, batch_size=200, bank=path)
    store = Bank._open(path, mode="r+")
    store._extend(900)  # rows 500-1400: batches at 500, 700, 900, 1100, 1300
    new = [b for b in store.batches() if b[0] >= 3]
    assert [b[1:] for b in new] == [(500, 200), (700, 200), (900, 200), (1100, 200), (1300, 100)]
    # Chunks hold 200 rows: the batches at 500 and 700 share chunk 3 (rows 600-800), and so on:
    # each new batch straddles two chunks, so none is a worker's alone.
    assert _exclusive(store, new) == set()
    aligned = [(0, 0, 200), (1, 200, 200), (2, 400, 100)]
    assert _exclusive(store, aligned) == {0, 1, 2}
    assert _exclusive(store, [*aligned, (3, 500, 200)]) == {0, 1}
    # The same appended rows, written by two workers and by one process, are the same bank.
    for workers, name in ((2, "two.zarr"), (1, "one.zarr")):
        _quiet(line, 1000, seed=3, workers=workers, batch_size=200, bank=tmp_path / name)
        _quiet(line, 500, seed=3, workers=workers, bank=tmp_path / name, append=True)
    two = Bank.open(tmp_path / "two.zarr")
    _same(Bank.open(tmp_path / "one.zarr"), two)
    assert two.complete and len(two) == 1500


def _files(root) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_whole_chunks_are_written_as_the_very_files_zarr_writes(tmp_path, monkeypatch):
    put = Bank._put_chunk
    written = []

    def recording(self, name, start, values):
        done = put(self, name, start, values)
        written.append((name, start)) if done else None
        return done

    monkeypatch.setattr(Bank, "_put_chunk", recording)
    fast = _quiet(line, 500, seed=3, workers=1, batch_size=200, bank=tmp_path / "fast.zarr")
    # Rows 0-400 are two whole chunks, written as files; the last 100 rows are part of a chunk.
    assert {("theta", 0), ("x", 200), ("valid", 0), ("status", 200), ("done", 1)} < set(written)
    assert ("theta", 400) not in written and ("done", 2) in written
    monkeypatch.setattr(Bank, "_put_chunk", lambda self, name, start, values: False)
    slow = _quiet(line, 500, seed=3, workers=1, batch_size=200, bank=tmp_path / "zarr.zarr")
    _same(fast, slow)
    assert not fast.valid.all() and fast.valid.any()  # both kinds of row are in the chunks
    assert _files(tmp_path / "fast.zarr") == _files(tmp_path / "zarr.zarr")


@pytest.mark.parametrize(("rows", "batch_size"), [(500, 200), (0, 7), (10**9, 100_000)])
def test_a_new_bank_is_the_very_files_zarr_makes(tmp_path, rows, batch_size):
    from sbitk.simulation.bank import _arrays

    describe = line.describe()
    made = Bank._create(
        tmp_path / "made.zarr", simulator=describe, seed=3, batch_size=batch_size,
        sbitk_version="v", rows=rows, attrs={"größe θ": [0.1, None, "µ", {"k": 1e300}]},
    )  # fmt: skip
    group = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="w")
    widths = len(describe["parameter_names"]), len(describe["output_names"])
    for name, spec in _arrays(*widths, batch_size, rows).items():
        group.create_array(name, **spec)
    group.update_attributes(dict(made.attrs))
    assert _files(tmp_path / "made.zarr") == _files(tmp_path / "zarr.zarr")
    assert made.planned == rows and made.batch_size == batch_size


def test_attributes_are_updated_as_zarr_updates_them(tmp_path):
    made = Bank._create(
        tmp_path / "made.zarr", simulator=line.describe(), seed=3, batch_size=100,
        sbitk_version="v", rows=250, attrs={"größe θ": [0.1, None, "µ", {"k": 1e300}]},
    )  # fmt: skip
    before = (tmp_path / "made.zarr" / "zarr.json").read_bytes()
    made._extend(130)  # a second segment: batches 3 and 4
    made._record_failure_counts({0: 370, 2: 10})
    assert made.attrs["planned_rows"] == 380 and made.num_batches == 5
    assert made.attrs["failure_counts"]["nan"] == 10
    group = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="w")
    group.update_attributes(dict(made.attrs))
    after = (tmp_path / "made.zarr" / "zarr.json").read_bytes()
    assert after != before and after == (tmp_path / "zarr.zarr" / "zarr.json").read_bytes()
    assert dict(Bank.open(tmp_path / "made.zarr").attrs) == dict(made.attrs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"simulator": other}, "holds simulator 'bank_line', not 'bank_other'"),
        ({"seed": 9}, "simulated with seed 1, asked for seed 9"),
        ({"batch_size": 50}, "has batch size 100, asked for 50"),
        ({"n": 500}, "holds a run of 400 rows, asked for 500; pass append=True"),
    ],
)
def test_opening_a_bank_for_another_run_is_a_clear_error(tmp_path, kwargs, fragment):
    path = tmp_path / "line.zarr"
    _quiet(line, 400, seed=1, workers=1, batch_size=100, bank=path)
    args = {"simulator": line, "n": 400, "seed": 1, "workers": 1, "bank": path, **kwargs}
    with pytest.raises(BankError) as info:
        simulate(progress=False, **args)
    assert fragment in str(info.value)
    assert len(Bank.open(path)) == 400  # untouched


def test_overwrite_starts_over(tmp_path):
    path = tmp_path / "line.zarr"
    _quiet(line, 400, seed=1, workers=1, batch_size=100, bank=path)
    bank = simulate(other, 50, seed=3, workers=1, bank=path, overwrite=True, progress=False)
    assert bank.simulator_name == "bank_other" and len(bank) == 50 and bank.seed == 3
    assert bank.batch_size == 1000


def test_opening_what_is_not_a_bank_is_a_clear_error(tmp_path):
    with pytest.raises(BankError, match=r"no simulation bank at .*does not exist"):
        Bank.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs["hello"] = 1
    with pytest.raises(BankError, match="not an sbitk simulation bank"):
        Bank.open(tmp_path / "plain.zarr")


def test_iter_chunks_streams_exactly_the_rows_of_the_bank(tmp_path):
    bank = _quiet(line, 1050, seed=4, workers=1, batch_size=200, bank=tmp_path / "l.zarr")
    assert bank.num_chunks == 6
    chunks = list(bank.iter_chunks())
    assert [len(t) for t, _, _ in chunks] == [200] * 5 + [50]
    for got, full in zip(zip(*chunks), (bank.theta, bank.x, bank.valid)):
        assert torch.equal(_bits(torch.cat(got)), _bits(full))
    order = [5, 0, 3]
    picked = torch.cat([t for t, _, _ in bank.iter_chunks(order)])
    rows = torch.cat([torch.arange(k * 200, min(k * 200 + 200, 1050)) for k in order])
    assert torch.equal(picked, bank.theta[rows])
    valid_rows = [(t, x, v) for t, x, v in bank.iter_chunks(valid_only=True)]
    assert all(v.all() and torch.isfinite(x).all() for _, x, v in valid_rows)
    assert sum(len(t) for t, _, _ in valid_rows) == int(bank.valid.sum()) < 1050
    with pytest.raises(BankError, match="chunk index 6 out of range"):
        list(bank.iter_chunks([6]))


def test_metadata_and_summary_describe_the_bank(tmp_path):
    path = tmp_path / "line.zarr"
    bank = _quiet(line, 600, seed=7, workers=1, batch_size=150, bank=path)
    assert Bank.open(path).attrs == bank.attrs
    assert bank.simulator == line.describe()
    assert bank.prior == line.prior and bank.planned == 600 and bank.complete
    nan_rows = int((bank.theta[:, 0] > 1.8).sum())
    assert 0 < nan_rows < 60
    assert bank.attrs["failure_counts"] == {"exception": 0, "nan": nan_rows, "inf": 0, "shape": 0}
    text = bank.summary()
    for fragment in (
        "bank_line (version 1)",
        "seed        7, batch size 150, 4 of 4 batches done",
        "rows        600 of 600 planned",
        f"invalid {nan_rows}",
        "slope",
        "noise",
        "y[0], y[1], y[2], y[3]",
        f"nan: {nan_rows} rows",
    ):
        assert fragment in text, fragment
    lo = bank.failures().kinds[0].parameters[0].min
    assert lo > 1.8 and f"[{lo:.4g}" in text
    assert "Bank(" in repr(bank) and "rows=600" in repr(bank)


@pytest.mark.parametrize(
    ("encoding", "dtype"),
    [
        ({"name": "default", "separator": "/"}, "<f4"),
        ({"name": "default", "separator": "."}, ">i2"),
        ({"name": "v2", "separator": "."}, "bool"),
        ({"name": "v2", "separator": "/"}, ">f8"),
    ],
)
def test_the_raw_chunk_layout_read_from_json_names_zarrs_own_files(tmp_path, encoding, dtype):
    from sbitk.simulation.bank import _RawChunks

    endian = "big" if dtype.startswith(">") else "little"
    arr = zarr.create_array(
        str(tmp_path / "a"), shape=(6, 2), chunks=(3, 2), dtype=np.dtype(dtype),
        chunk_key_encoding=encoding, compressors=None, fill_value=0,
        serializer=zarr.codecs.BytesCodec(endian=endian),
    )  # fmt: skip
    values = (np.arange(12).reshape(6, 2) % 2).astype(dtype)
    arr[:] = values
    layout = _RawChunks.parse(json.loads((tmp_path / "a" / "zarr.json").read_bytes()))
    assert layout.chunks == (3, 2) and layout.dtype == np.dtype(dtype)
    chunk = (tmp_path / "a" / layout.key((1, 0))).read_bytes()
    assert chunk == np.ascontiguousarray(values[3:], dtype=layout.dtype).tobytes()
    # An encoded array (compressed) has no raw layout: its chunks are left to Zarr.
    packed = zarr.create_array(str(tmp_path / "b"), shape=(4,), chunks=(2,), dtype="f4")
    assert _RawChunks.parse(json.loads((tmp_path / "b" / "zarr.json").read_bytes())) is None
    assert packed.shape == (4,)


def test_a_bank_that_cannot_be_made_fails_the_run_with_its_own_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise BankError("no space left for the bank")

    monkeypatch.setattr(Bank, "_create", refuse)
    for workers in (1, 2):
        with pytest.raises(BankError, match="no space left"):
            simulate(line, 400, workers=workers, batch_size=100, bank=tmp_path / "b.zarr",
                     progress=False)  # fmt: skip
    # A path that cannot hold a bank is refused before anything is simulated.
    (tmp_path / "file").write_text("")
    calls = []
    monkeypatch.setattr("sbitk.simulation.runner.simulate_batch", lambda *a: calls.append(a))
    with pytest.raises(BankError, match="is a file"):
        simulate(line, 400, workers=1, bank=tmp_path / "file" / "b.zarr", progress=False)
    assert calls == []


@pytest.mark.timeout(60)
def test_a_run_that_stops_before_making_its_bank_ends_with_its_error(tmp_path, monkeypatch):
    # With workers, the caller makes a new bank once they have their first batches, and a
    # thread waits for it: a run stopped before that point must release the thread, not hang.
    from sbitk.simulation import runner

    def no_pool(*args):
        raise SimulatorError("no pool today")

    monkeypatch.setattr(runner, "_take_pool", no_pool)
    with pytest.raises(SimulatorError, match="no pool today"):
        simulate(line, 400, workers=2, batch_size=100, bank=tmp_path / "b.zarr", progress=False)
    assert not (tmp_path / "b.zarr").exists()


def test_a_bank_opened_for_writes_opens_zarr_only_for_a_write_that_needs_it(tmp_path):
    path = tmp_path / "w.zarr"
    Bank._create(path, simulator=line.describe(), seed=0, batch_size=100, sbitk_version="v",
                 rows=250)  # fmt: skip
    results = [simulate_batch(line, 0, b, rows) for b, rows in enumerate((100, 100, 50))]
    results[1]["errors"] = {3: "raised ValueError: boom"}  # the messages go through Zarr
    store = Bank._open_for_writes(path)
    assert store.planned == 250 and store._zarr_group is None
    r = results[0]
    store._write_batch(0, 0, r["theta"], r["x"], r["status"], r["errors"])
    assert store._zarr_group is None  # whole chunks of raw bytes are files
    for k, start in ((1, 100), (2, 200)):  # messages, and part of a chunk: through Zarr
        r = results[k]
        store._write_batch(k, start, r["theta"], r["x"], r["status"], r["errors"])
    assert store._zarr_group is not None
    bank = Bank.open(path)
    assert len(bank) == 250 and bank.errors() == {103: "raised ValueError: boom"}
    assert torch.equal(bank.theta, torch.as_tensor(np.concatenate([r["theta"] for r in results])))
    (tmp_path / "array.zarr").mkdir()
    (tmp_path / "array.zarr" / "zarr.json").write_text('{"attributes": [1]}')
    with pytest.raises(BankError, match="not an sbitk simulation bank"):
        Bank._open_for_writes(tmp_path / "array.zarr")


def test_a_worker_waits_for_a_new_bank_and_gives_up_in_one_line(tmp_path, monkeypatch):
    from sbitk.simulation import runner

    monkeypatch.setattr(runner, "BANK_WAIT_SECONDS", 0.05)
    with pytest.raises(BankError, match=r"was not made within 0.05 s"):
        runner._worker_bank((str(tmp_path / "late.zarr"), "run-1"))
    _quiet(line, 200, seed=1, workers=1, batch_size=100, bank=tmp_path / "late.zarr")
    store = runner._worker_bank((str(tmp_path / "late.zarr"), "run-1"))
    assert store.planned == 200
