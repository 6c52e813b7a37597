"""The simulation runner: determinism, parallel back ends, failures and clear errors."""

import math
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import sbitk
from sbitk.errors import BankError, SbitkError, SimulatorError
from sbitk.simulation import runner
from sbitk.simulation.bank import Bank
from sbitk.simulation.runner import SimulationFailureWarning, batch_generator, simulate
from sbitk.simulation.simulator import (
    STATUS_EXCEPTION,
    STATUS_INF,
    STATUS_NAN,
    STATUS_OK,
    STATUS_SHAPE,
)


@sbitk.simulator(
    "runner_gauss",
    parameters={"mu": sbitk.Normal(0.0, 1.0, dim=2), "scale": sbitk.LogNormal(0.0, 0.3)},
    outputs={"x": (3,)},
    register=False,
)
def gauss(theta, generator):
    noise = torch.randn(theta.shape[0], 3, generator=generator)
    return theta[:, :1] + theta[:, 1:2] * noise * theta[:, 2:3]


@sbitk.simulator(
    "runner_scalar",
    parameters={"a": sbitk.BoxUniform(0.0, 2.0), "b": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": (2,)},
    vectorized=False,
    register=False,
)
def scalar(theta, generator):
    # One θ (2,) in, one x (2,) out: plain Python over numbers.
    a, b = float(theta[0]), float(theta[1])
    u = float(torch.rand((), generator=generator))
    return torch.tensor([math.sin(a) + u, a * b])


@sbitk.simulator(
    "runner_faulty",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0), "b": sbitk.BoxUniform(0.0, 1.0)},
    outputs={"y": (2,)},
    register=False,
)
def faulty(theta, generator):
    """Raises for a > 0.6, NaN for a < -0.7, Inf for -0.5 < a < -0.4."""
    a = theta[:, 0]
    if (a > 0.6).any():
        raise ValueError("a is above 0.6")
    x = torch.stack([a, theta[:, 1]], -1) + torch.randn(theta.shape[0], 2, generator=generator)
    x[a < -0.7, 0] = math.nan
    x[(a > -0.5) & (a < -0.4), 1] = math.inf
    return x


@sbitk.simulator(
    "runner_wrong_shape",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": (3,)},
    register=False,
)
def wrong_shape(theta, generator):
    return torch.zeros(theta.shape[0], 4)


def _same(a: sbitk.simulation.bank.Bank, b: sbitk.simulation.bank.Bank) -> None:
    assert len(a) == len(b)
    for name in ("theta", "x", "valid", "status"):
        left, right = getattr(a, name), getattr(b, name)
        # NaN marks invalid rows; compare bit patterns so NaN == NaN.
        assert torch.equal(left.view(torch.uint8), right.view(torch.uint8)), name


def test_same_seed_gives_the_same_bank_and_other_seeds_differ():
    a = simulate(gauss, 700, seed=11, workers=1, batch_size=200, progress=False)
    b = simulate(gauss, 700, seed=11, workers=1, batch_size=200, progress=False)
    c = simulate(gauss, 700, seed=12, workers=1, batch_size=200, progress=False)
    _same(a, b)
    assert a.theta.shape == (700, 3) and a.x.shape == (700, 3)
    assert a.theta.dtype == torch.float32 and a.x.dtype == torch.float32
    assert not torch.equal(a.theta, c.theta)
    # Batches draw from independent streams: no two batches repeat θ.
    assert len(torch.unique(a.theta[:, 0])) == 700


def test_in_process_and_two_worker_processes_give_identical_banks(tmp_path):
    one = simulate(gauss, 900, seed=4, workers=1, batch_size=100, bank=tmp_path / "one.zarr")
    two = simulate(gauss, 900, seed=4, workers=2, batch_size=100, bank=tmp_path / "two.zarr")
    _same(one, two)
    assert one.complete and two.complete and one.num_batches == 9


def test_default_dtype_and_threads_of_the_caller_do_not_change_the_bank():
    a = simulate(gauss, 300, seed=2, workers=1, batch_size=100, progress=False)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    other = 2 if threads != 2 else 1
    try:
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(other)
        b = simulate(gauss, 300, seed=2, workers=1, batch_size=100, progress=False)
        # the caller's settings are theirs again afterwards
        assert torch.get_default_dtype() == torch.float64
        assert torch.get_num_threads() == other
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    _same(a, b)


def test_batch_generators_are_fixed_per_batch_and_distinct_across_batches():
    draws = [torch.rand(4, generator=batch_generator(7, b)) for b in range(3)]
    again = torch.rand(4, generator=batch_generator(7, 1))
    assert torch.equal(draws[1], again)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[0], torch.rand(4, generator=batch_generator(8, 0)))


def test_non_vectorized_function_runs_row_by_row_in_parallel(tmp_path):
    par = simulate(scalar, 400, seed=1, workers=2, batch_size=50, bank=tmp_path / "par.zarr")
    seq = simulate(scalar, 400, seed=1, workers=1, batch_size=50, progress=False)
    _same(par, seq)
    theta, x = par.theta.double(), par.x.double()
    assert par.valid.all()
    # The deterministic output column is a * b, row by row.
    assert torch.allclose(x[:, 1], theta[:, 0] * theta[:, 1], atol=1e-6)
    u = x[:, 0] - torch.sin(theta[:, 0])
    assert ((u > -1e-6) & (u < 1 + 1e-6)).all() and u.std() > 0.2


def test_bad_simulations_are_counted_marked_invalid_and_located(tmp_path):
    with pytest.warns(SimulationFailureWarning) as record:
        bank = simulate(faulty, 2000, seed=0, workers=2, batch_size=250, bank=tmp_path / "f.zarr")
    a = bank.theta[:, 0]
    status = bank.status
    expect_exc = a > 0.6
    expect_nan = a < -0.7
    expect_inf = (a > -0.5) & (a < -0.4)
    assert torch.equal(status == STATUS_EXCEPTION, expect_exc)
    assert torch.equal(status == STATUS_NAN, expect_nan)
    assert torch.equal(status == STATUS_INF, expect_inf)
    ok = ~(expect_exc | expect_nan | expect_inf)
    assert torch.equal(bank.valid, ok) and torch.equal(status == STATUS_OK, ok)
    assert len(bank) == 2000  # never dropped
    assert torch.isnan(bank.x[~ok]).all()
    assert torch.isfinite(bank.x[ok]).all()

    # Valid rows are untouched by their neighbours' failures: a batch that raised is rerun row
    # by row, yet the valid rows keep their exact simulated values x = (a, b) + noise.
    resid = bank.x[ok] - bank.theta[ok]
    assert abs(float(resid.mean())) < 0.1 and 0.9 < float(resid.std()) < 1.1

    report = bank.failures()
    assert report.counts == {
        "exception": int(expect_exc.sum()),
        "nan": int(expect_nan.sum()),
        "inf": int(expect_inf.sum()),
        "shape": 0,
    }
    assert report.failed == int((~ok).sum()) and report.rows == 2000
    by_kind = {k.kind: k for k in report.kinds}
    exc_a = by_kind["exception"].parameters[0]
    assert exc_a.name == "a" and exc_a.min > 0.6 and exc_a.max <= 1.0
    assert by_kind["nan"].parameters[0].max < -0.7
    inf_a = by_kind["inf"].parameters[0]
    assert -0.5 < inf_a.min and inf_a.max < -0.4
    assert "a is above 0.6" in by_kind["exception"].example
    text = str(record[0].message)
    assert "exception" in text and "a is above 0.6" in text and "[0.6" in text
    assert bank.attrs["failure_counts"] == report.counts
    assert set(bank.errors().values()) == {"ValueError: a is above 0.6"}
    assert sorted(bank.errors()) == torch.nonzero(expect_exc).flatten().tolist()


@pytest.mark.parametrize("workers", [1, 2])
def test_wrong_shape_is_a_clear_error_naming_simulator_and_shapes(workers):
    with pytest.raises(SimulatorError) as info:
        simulate(wrong_shape, 400, workers=workers, batch_size=100, progress=False)
    message = str(info.value)
    assert "runner_wrong_shape" in message and "(100, 4)" in message and "(100, 3)" in message
    if workers == 2:
        # Raised in a worker process, surfaced without the remote traceback chained on.
        assert info.value.__cause__ is None


@sbitk.simulator(
    "runner_some_shapes",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": (2,)},
    register=False,
)
def some_shapes(theta, generator):
    """Drops the rows with a > 0.8 from its output: the wrong shape for those θ only."""
    keep = theta[:, 0] <= 0.8
    return theta[keep].repeat(1, 2) + torch.randn(int(keep.sum()), 2, generator=generator)


@sbitk.simulator(
    "runner_some_shapes_rows",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": (2,)},
    vectorized=False,
    register=False,
)
def some_shapes_rows(theta, generator):
    """One row at a time: three values instead of two for a < -0.8."""
    width = 3 if float(theta[0]) < -0.8 else 2
    return theta.repeat(width) + torch.randn(width, generator=generator)


@pytest.mark.parametrize(
    ("sim", "bad", "found", "expected"),
    [
        (some_shapes, lambda a: a > 0.8, "(0, 2)", "(1, 2)"),
        (some_shapes_rows, lambda a: a < -0.8, "(3,)", "(2,)"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_wrong_shape_for_some_theta_marks_those_rows_and_keeps_the_rest(
    tmp_path, sim, bad, found, expected, workers
):
    path = tmp_path / "shapes.zarr"
    with pytest.warns(SimulationFailureWarning) as record:
        bank = simulate(sim, 600, seed=5, workers=workers, batch_size=100, bank=path)
    assert bank.complete and len(bank) == 600  # every batch kept
    a = bank.theta[:, 0]
    wrong = bad(a)
    assert 0 < int(wrong.sum()) < 100
    assert torch.equal(bank.status == STATUS_SHAPE, wrong)
    assert torch.equal(bank.valid, ~wrong) and torch.isnan(bank.x[wrong]).all()
    # The other rows of the failing batches keep the values of their own θ.
    resid = bank.x[~wrong] - a[~wrong, None]
    assert torch.isfinite(resid).all() and 0.8 < float(resid.std()) < 1.2
    errors = bank.errors()
    assert sorted(errors) == torch.nonzero(wrong).flatten().tolist()
    message = f"returned shape {found}, expected {expected}"
    assert all(sim.name in m and message in m for m in errors.values()), errors
    report = bank.failures()
    assert report.counts["shape"] == int(wrong.sum()) and bank.attrs["failure_counts"]["shape"]
    assert "shape" in str(record[0].message) and message in str(record[0].message)
    # A rerun finds nothing left to do instead of failing the same way, and appending works.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = simulate(sim, 600, seed=5, workers=workers, bank=path, progress=False)
    _same(bank, again)
    with pytest.warns(SimulationFailureWarning):
        more = simulate(sim, 200, seed=5, workers=workers, bank=path, append=True)
    assert len(more) == 800 and torch.equal(more.status == STATUS_SHAPE, bad(more.theta[:, 0]))


def test_a_short_tail_batch_wrong_in_every_row_is_kept_as_invalid_rows(tmp_path):
    """A 1-row tail whose θ gives the wrong shape is one bad row, not a mis-declared simulator."""
    tail_theta = [some_shapes.prior.sample(1, batch_generator(s, 2))[0, 0] for s in range(64)]
    seed = next(s for s, a in enumerate(tail_theta) if a > 0.8)  # its tail row is at fault
    with pytest.warns(SimulationFailureWarning, match="shape"):
        bank = simulate(some_shapes, 201, seed=seed, workers=1, batch_size=100, progress=False)
    assert bank.complete and len(bank) == 201
    assert int(bank.status[200]) == STATUS_SHAPE and not bool(bank.valid[200])
    assert torch.equal(bank.status == STATUS_SHAPE, bank.theta[:, 0] > 0.8)


def test_wrong_shape_for_every_row_names_the_theta_and_keeps_earlier_batches(tmp_path):
    path = tmp_path / "late.zarr"

    @sbitk.simulator(
        "runner_late_wrong", parameters={"a": sbitk.BoxUniform(0.0, 1.0)}, outputs={"y": ()},
        register=False,
    )  # fmt: skip
    def late_wrong(theta, generator):
        return theta if len(theta) == 100 else theta.repeat(1, 2)  # right for full batches

    with pytest.raises(SimulatorError, match=r"returned shape \(50, 2\), expected \(50, 1\)") as e:
        simulate(late_wrong, 250, workers=1, batch_size=100, bank=path, progress=False)
    assert "every row of a batch of 50" in str(e.value) and "θ = [" in str(e.value)
    assert len(Bank.open(path)) == 200  # the batches before it are kept


def test_simulate_by_registered_name():
    sim = sbitk.simulator(
        "runner_registered",
        parameters={"p": sbitk.BoxUniform(0.0, 1.0)},
        outputs={"x": ()},
    )(lambda theta, generator: theta * 2)
    try:
        bank = sbitk.simulate("runner_registered", 10, workers=1, progress=False)
        assert torch.allclose(bank.x, 2 * bank.theta)
        assert bank.simulator_name == "runner_registered"
    finally:
        sbitk.simulation.unregister(sim.name)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n": 0}, "n must be an integer >= 1, got 0"),
        ({"n": 2.5}, "got 2.5"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"workers": 0}, "workers must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"append": True, "overwrite": True}, "exclude each other"),
    ],
)
def test_bad_arguments_raise_package_errors(kwargs, fragment):
    args = {"n": 10, "workers": 1, **kwargs}
    with pytest.raises(SbitkError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        simulate(gauss, progress=False, **args)


def test_unknown_simulator_lists_the_available_names():
    with pytest.raises(SbitkError, match="unknown simulator 'no_such_sim'; available"):
        simulate("no_such_sim", 10)


def test_in_memory_bank_has_the_metadata_of_the_simulator():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no failures, so no warning
        bank = simulate(gauss, 50, seed=3, workers=1, progress=False)
    assert bank.path is None
    assert bank.simulator_name == "runner_gauss" and bank.seed == 3
    assert bank.parameter_names == ["mu[0]", "mu[1]", "scale"]
    assert bank.output_names == ["x[0]", "x[1]", "x[2]"]
    assert bank.prior == gauss.prior
    assert bank.attrs["sbitk_version"] == sbitk.__version__
    assert bank.attrs["failure_counts"] == {"exception": 0, "nan": 0, "inf": 0, "shape": 0}
    assert "runner_gauss" in bank.summary() and "failures: none" in bank.summary()
    assert np.isfinite(bank.x.numpy()).all()


def test_bank_error_is_raised_for_a_file_in_the_way(tmp_path):
    path = tmp_path / "file.zarr"
    path.write_text("not a bank")
    with pytest.raises(BankError, match="the path exists"):
        simulate(gauss, 10, workers=1, bank=path, progress=False)
    with pytest.raises(BankError, match="refusing to overwrite"):
        simulate(gauss, 10, workers=1, bank=path, overwrite=True, progress=False)
    assert path.read_text() == "not a bank"


@sbitk.simulator(
    "runner_crash",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": ()},
    register=False,
)
def crash(theta, generator):
    os._exit(3)  # a crash that no try/except catches, like a segfault in native code


def test_a_worker_that_dies_is_a_clear_error(tmp_path):
    path = tmp_path / "crash.zarr"
    with pytest.raises(SimulatorError, match=r"worker process died .* 'runner_crash' on batch"):
        simulate(crash, 400, workers=2, batch_size=100, bank=path, progress=False)
    assert len(Bank.open(path)) == 0 and Bank.open(path).planned == 400  # resumable


@sbitk.simulator(
    "runner_pid",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"pid": ()},
    register=False,
)
def pid(theta, generator):
    return torch.full((theta.shape[0],), float(os.getpid()))


def _pids(bank: Bank) -> set[int]:
    return {int(p) for p in bank.x[:, 0].tolist()}


def test_worker_processes_serve_the_next_run_and_retire_when_idle(tmp_path, monkeypatch):
    from sbitk.simulation import runner

    monkeypatch.setattr(runner, "POOL_IDLE_SECONDS", 0.5)
    first = _pids(simulate(pid, 400, workers=2, batch_size=50, progress=False))
    pool = set(runner._POOL["executor"]._processes)  # on a busy machine one may run every batch
    assert len(pool) == 2 and first <= pool and os.getpid() not in first
    # The next run with as many workers starts none: the same processes run it.
    assert _pids(simulate(pid, 400, seed=1, workers=2, batch_size=50, progress=False)) <= pool
    assert set(runner._POOL["executor"]._processes) == pool
    time.sleep(1.5)  # idle past POOL_IDLE_SECONDS: the pool is shut down
    assert not runner._POOL
    for p in pool:
        with pytest.raises(ProcessLookupError):
            for _ in range(50):  # shutdown(wait=False): the processes exit shortly after
                os.kill(p, 0)
                time.sleep(0.1)
    assert _pids(simulate(pid, 400, workers=2, batch_size=50, progress=False)).isdisjoint(pool)


def test_a_kept_worker_writes_a_bank_made_anew_at_the_same_path(tmp_path):
    path = tmp_path / "again.zarr"
    simulate(gauss, 600, seed=5, workers=2, batch_size=100, bank=path, progress=False)
    # The same path, overwritten with another plan: the kept workers must not write with the
    # first bank's chunk layout.
    again = simulate(gauss, 600, seed=6, workers=2, batch_size=150, bank=path, overwrite=True)
    _same(again, simulate(gauss, 600, seed=6, workers=1, batch_size=150, progress=False))
    assert again.batch_size == 150 and again.complete


def test_a_pool_whose_worker_died_is_replaced(tmp_path):
    with pytest.raises(SimulatorError, match="worker process died"):
        simulate(crash, 400, workers=2, batch_size=100, progress=False)
    bank = simulate(gauss, 400, seed=2, workers=2, batch_size=100, progress=False)
    _same(bank, simulate(gauss, 400, seed=2, workers=1, batch_size=100, progress=False))


def test_a_pool_that_breaks_between_submissions_is_a_clear_error(monkeypatch):
    """A warm worker can die of its first batch before the next one is even submitted: then
    ``submit`` itself raises, and that too is the one clear error, the pool dropped."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from sbitk.simulation import runner

    real, calls = ProcessPoolExecutor.submit, []

    def submit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise BrokenProcessPool("A child process terminated abruptly")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    with pytest.raises(SimulatorError, match=r"worker process died .* on batch 2:"):
        simulate(gauss, 800, workers=2, batch_size=100, progress=False)
    monkeypatch.undo()
    assert not runner._POOL
    bank = simulate(gauss, 400, seed=2, workers=2, batch_size=100, progress=False)
    _same(bank, simulate(gauss, 400, seed=2, workers=1, batch_size=100, progress=False))


def test_a_batch_tally_counts_each_status_whether_one_or_several():
    from sbitk.simulation.runner import _tally

    ok = np.full(5, STATUS_OK, dtype=np.int8)
    assert _tally(ok) == {STATUS_OK: 5}
    mixed = np.array([STATUS_OK, STATUS_NAN, STATUS_OK, STATUS_EXCEPTION], dtype=np.int8)
    assert _tally(mixed) == {STATUS_OK: 2, STATUS_NAN: 1, STATUS_EXCEPTION: 1}
    assert _tally(np.full(3, STATUS_NAN, dtype=np.int8)) == {STATUS_NAN: 3}
    assert _tally(np.zeros(0, dtype=np.int8)) == {}


@pytest.fixture
def sigint_handler():
    """Set SIGINT's handler for a test, whatever this process started with (a shell starts
    background jobs with SIGINT ignored), and put the old one back after."""
    old = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_processes_start_is_held_from_them_and_raised_after(sigint_handler):
    # The pool's helpers start inside the block: a Ctrl-C then must neither reach them while
    # they import nor be lost here (it was, when the block ignored SIGINT outright).
    sigint_handler(signal.default_int_handler)
    child_code = "import time; time.sleep(0.5); print('alive')"
    with pytest.raises(KeyboardInterrupt):
        with runner._sigint_held(inherited=True):
            child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    os.kill(child.pid, signal.SIGINT)  # it still holds SIGINT back, from its first instruction
    assert child.communicate(timeout=30)[0] == b"alive\n" and child.returncode == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


@pytest.mark.parametrize("inherited", [True, False])
def test_a_ctrl_c_held_back_goes_to_the_handler_that_was_in_place(sigint_handler, inherited):
    # Where SIGINT was ignored (a job a shell started in the background), a Ctrl-C held back
    # in the block stays ignored; a handler of the caller's own gets it, once.
    sigint_handler(signal.SIG_IGN)
    with runner._sigint_held(inherited=inherited):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    got = []
    sigint_handler(lambda signum, frame: got.append(signum))
    with runner._sigint_held(inherited=inherited):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert got == []
    assert got == [signal.SIGINT]


#: In a fresh interpreter: start the pool's helper processes as a run does, and print the fork
#: server's mask of blocked signals (it never unblocks SIGINT, and soon ignores it as well).
FORK_SERVER_MASK = """
import re
from multiprocessing import forkserver
from sbitk.simulation import runner
runner._mp_context()
runner._start_helpers(spawn=False)
pid = forkserver._forkserver._forkserver_pid
status = open(f"/proc/{pid}/status").read()
print(int(re.search(r"SigBlk:\\s*([0-9a-f]+)", status).group(1), 16))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc")
def test_the_fork_server_starts_with_ctrl_c_held_back_while_it_imports():
    # The fork server imports torch and sbitk (about a second) before it ignores SIGINT; it
    # must not get a Ctrl-C meanwhile. Starting the resource tracker unblocks SIGINT in the
    # caller: a fork server started in the same block imported with SIGINT open.
    out = subprocess.run(
        [sys.executable, "-c", FORK_SERVER_MASK], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) & 1 << (signal.SIGINT - 1), out.stdout
