"""Run a simulator in batches into a bank: in-process, over local processes, or on Dask.

Every batch ``b`` draws θ from the prior and simulates x with its own ``torch.Generator``,
seeded from ``(seed, b)`` through :class:`numpy.random.SeedSequence`; the batch size is fixed
by the bank, not by the number of workers. The bank is therefore the same, bit for bit, whatever
runs it: one process, many local processes, or a Dask cluster.

Example:
    >>> import sbitk, torch
    >>> @sbitk.simulator("runner_doc", parameters={"mu": sbitk.Normal(0.0, 1.0)},
    ...                  outputs={"x": (2,)}, register=False)
    ... def pair(theta, generator):
    ...     return theta + torch.randn(theta.shape[0], 2, generator=generator)
    >>> a = simulate(pair, 250, seed=3, workers=1, batch_size=100, progress=False)
    >>> b = simulate(pair, 250, seed=3, workers=1, batch_size=100, progress=False)
    >>> bool((a.x == b.x).all()), a.num_batches
    (True, 3)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver, resource_tracker
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch

from sbitk.errors import BankError, SbitkError, SimulatorError
from sbitk.simulation.bank import STATUS_PENDING, Bank, segment_batches
from sbitk.simulation.registry import get_simulator
from sbitk.simulation.resources import MAX_BATCHES, check_disk, check_memory
from sbitk.simulation.simulator import STATUS_OK, Simulator

#: Bounds of the default batch size, for vectorized and for row-by-row simulators.
BATCH_SIZE_BOUNDS = {True: (1000, 100_000), False: (100, 1000)}
#: A default batch holds at most this many bytes of θ and x (float32), above its lower bound.
BATCH_BYTES = 16 * 2**20


def default_batch_size(n: int, vectorized: bool, width: int = 1) -> int:
    """Rows per batch for a new bank of ``n`` rows when the caller names none.

    About ``n / 8`` (enough batches to keep a few workers busy and resume at a fine grain),
    rounded down to 1, 2 or 5 times a power of ten, within :data:`BATCH_SIZE_BOUNDS`, and for
    rows of ``width`` values (D_θ + D_x) at most :data:`BATCH_BYTES` a batch unless that is
    below the lower bound. Writing a batch costs about a millisecond whatever its size, and a
    vectorized simulator as cheap as two_moons makes 50,000 rows in a few: large batches keep
    the bank's share of the time small. It depends on ``n`` and the simulator only, never on the
    workers, so the bank does not either.

    Example:
        >>> default_batch_size(20_000, True), default_batch_size(10**6, True)
        (2000, 100000)
        >>> default_batch_size(100_000, True), default_batch_size(100_000, False)
        (10000, 1000)
        >>> default_batch_size(10**7, True, width=10_000)  # 40 kB rows: 16 MiB is 419 rows
        1000
    """
    low, high = BATCH_SIZE_BOUNDS[bool(vectorized)]
    high = max(low, min(high, BATCH_BYTES // (4 * max(int(width), 1))))
    target = max(n // 8, 1)
    nice = max(m * 10**k for k in range(7) for m in (1, 2, 5) if m * 10**k <= target)
    return int(min(max(nice, low), high))


def simulator_batch_size(sim: Simulator, n: int) -> int:
    """:func:`default_batch_size` for ``n`` rows of simulator ``sim``."""
    return default_batch_size(n, sim.vectorized, sim.theta_dim + sim.x_dim)


class SimulationFailureWarning(UserWarning):
    """Some simulations raised, returned NaN/Inf or the wrong shape; kept as invalid rows."""


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The random generator of batch ``index`` of a run seeded with ``seed``.

    The 64-bit seed is drawn from ``SeedSequence(seed, spawn_key=(index,))``, the same stream as
    ``SeedSequence(seed).spawn(...)[index]``: independent across batches, fixed for a batch.
    """
    words = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) | (int(words[1]) << 32))


@contextlib.contextmanager
def _simulation_context():
    """float32 and one torch thread while simulating, so every back end computes alike."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        if threads != 1:
            torch.set_num_threads(threads)


def simulate_batch(
    sim: Simulator, seed: int, index: int, rows: int, theta: np.ndarray | None = None
) -> dict[str, Any]:
    """Simulate batch ``index`` of a run: θ from the prior (or the ``rows`` θ given), then x,
    with the batch's generator.

    Returns:
        A dict with ``index``, ``theta`` (rows, D_θ) and ``x`` (rows, D_x) float32 arrays,
        ``status`` (rows,) int8 and ``errors`` (row → exception message).
    """
    generator = batch_generator(seed, index)
    with _simulation_context():
        if theta is None:
            theta = sim.prior.sample(rows, generator).to(torch.float32)
        else:
            theta = torch.as_tensor(theta, dtype=torch.float32)
        result = sim.run_batch(theta, generator)
    return {
        "index": index,
        "theta": theta.numpy(),
        "x": result.x.to(torch.float32).numpy(),
        "status": result.status.numpy().astype(np.int8, copy=False),
        "errors": dict(result.errors),
    }


# ---- shipping the simulator ------------------------------------------------------------------
@functools.cache
def _installed_packages() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _is_installed(module_name: str) -> bool:
    """Whether a module belongs to an installed distribution (workers then import it by name)."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module is None or file is None:
        return module is not None
    parts = Path(file).resolve().parts
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return module_name.partition(".")[0] in _installed_packages()  # editable installs too


def dumps_simulator(sim: Simulator) -> bytes:
    """Serialise a simulator with cloudpickle for worker processes or Dask workers.

    Functions from ``__main__`` travel by value anyway; so do those of modules that are not
    installed packages (a user's ``my_sims.py``, a test file), which a worker could not import.
    """
    modules = {
        getattr(f, "__module__", None) for f in (sim.fn, sim.reference_posterior) if f is not None
    }
    by_value = [
        sys.modules[m]
        for m in modules
        if m and m != "__main__" and m in sys.modules and not _is_installed(m)
    ]
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(sim)
    except Exception as exc:
        raise SimulatorError(
            f"simulator {sim.name!r} cannot be sent to worker processes ({exc}); "
            "run it with workers=1"
        ) from exc
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)


# ---- local worker processes ------------------------------------------------------------------
#: A worker's simulators by payload hash, and the bank it writes into: (run token, Bank).
_WORKER_SIMULATORS: dict[str, Simulator] = {}
_WORKER_BANK: dict[str, Any] = {}
#: How long a worker waits for the caller to make a new bank (it takes milliseconds; the caller
#: stops the workers when making it fails).
BANK_WAIT_SECONDS = 60


def _watch_parent(pid: int) -> None:
    # Pool workers are children of the fork server, not of the caller: if the caller is killed
    # they would wait for work forever. Exit as soon as it is gone.
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C and stops us
    torch.set_num_threads(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _worker_simulator(job: tuple[str, bytes]) -> Simulator:
    key, payload = job
    sim = _WORKER_SIMULATORS.get(key)
    if sim is None:
        _WORKER_SIMULATORS.clear()  # a pool serves one run at a time: keep its simulator only
        sim = _WORKER_SIMULATORS[key] = cloudpickle.loads(payload)
    return sim


def _worker_bank(where: tuple[str, str]) -> Bank:
    """The run's bank, once the caller has made it: a new bank is made while the first batches
    are simulated, and its group's ``zarr.json`` is written last, whole."""
    path, token = where  # the token names the run: a bank made anew at the same path is another
    if _WORKER_BANK.get("token") != token:
        deadline = time.monotonic() + BANK_WAIT_SECONDS
        while not (Path(path) / "zarr.json").is_file():
            if time.monotonic() > deadline:
                raise BankError(f"the bank at {path} was not made within {BANK_WAIT_SECONDS} s")
            time.sleep(0.0002)
        _WORKER_BANK.update(token=token, store=Bank._open_for_writes(Path(path)))
    return _WORKER_BANK["store"]


def _run_in_worker(
    job: tuple[str, bytes], seed: int, index: int, rows: int, theta: np.ndarray | None,
    write: tuple[str, str, int] | None,
) -> dict[str, Any]:  # fmt: skip
    """Simulate batch ``index`` (at the ``theta`` given, if any); with ``write`` = (bank path,
    run token, first row), write its rows into the bank here, mark it done, and return only its
    index and the rows of each status code (:func:`_written`): the caller, which shares the
    machine's cores with us, then does next to nothing a batch."""
    result = simulate_batch(_worker_simulator(job), seed, index, rows, theta)
    if write is None:
        return result
    path, token, start = write
    store = _worker_bank((path, token))
    store._write_batch(index, start, result["theta"], result["x"], result["status"],
                       result["errors"])  # fmt: skip
    return _written(result)


def _tally(status: np.ndarray) -> dict[int, int]:
    """Rows of each status code in ``status``."""
    if status.size and not np.count_nonzero(status != status[0]):  # one code (all ok): fast
        return {int(status[0]): int(status.size)}
    counts = np.bincount(status.astype(np.intp) - STATUS_PENDING)
    return {int(code) + STATUS_PENDING: int(counts[code]) for code in np.flatnonzero(counts)}


def _written(result: dict[str, Any]) -> dict[str, Any]:
    """A batch result whose rows are in the bank and marked done: its index and tally."""
    return {"index": result["index"], "written": _tally(result["status"])}


def _exclusive(store: Bank, batches: Sequence[tuple[int, int, int]]) -> set[int]:
    """The batches whose chunks no other of ``batches`` touches: a worker may write those
    itself. (A batch shares a chunk with another only across segments added by ``append``.)"""
    owners: dict[int, int] = {}
    for _, start, rows in batches:
        for k in store._chunk_range(start, rows):
            owners[k] = owners.get(k, 0) + 1
    return {
        index
        for index, start, rows in batches
        if all(owners[k] == 1 for k in store._chunk_range(start, rows))
    }


def _mp_context():
    # fork is unsafe once torch or Dask have started threads; spawn re-imports torch in every
    # worker. The fork server imports sbitk once and forks ready workers from it.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sbitk.simulation.runner"])
        return ctx
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _sigint_held(inherited: bool):
    """Keep a Ctrl-C from reaching processes while they start, then act on it.

    A Ctrl-C reaches every process of the terminal's process group. The fork server, the
    resource tracker and the pool's workers ignore it once they run, but not while they import
    torch and sbitk: interrupted there, each printed a traceback, and a worker forked after this
    process had given up printed a ``FileNotFoundError`` for the pool's semaphores.

    A Ctrl-C in the block is held back and delivered again when it ends, to the handler that was
    in place: ``KeyboardInterrupt`` by default, nothing where SIGINT was ignored (a process
    started in the background by a shell). ``inherited``: processes started
    inside the block also hold it back from their first instruction, as SIGINT stays blocked in
    the signal mask they inherit across fork and exec, until they ignore it themselves (a
    signal pending then is discarded); where there are no signal masks they inherit SIGINT
    ignored instead, and a Ctrl-C in the block is lost. Otherwise (while the first workers are
    forked from the fork server, which ignores SIGINT already) only this process holds it back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers, and only it gets KeyboardInterrupt
        return
    caught: list[int] = []
    mask = hasattr(signal, "pthread_sigmask") and inherited
    handler = signal.SIG_IGN if inherited and not mask else (lambda s, frame: caught.append(s))
    old = signal.signal(signal.SIGINT, handler)
    if mask:
        # Another thread may take the signal meanwhile: the handler above records it anyway.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending one is recorded
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if caught:
        signal.raise_signal(signal.SIGINT)


def _start_helpers(spawn: bool) -> None:
    """Start the resource tracker and, unless ``spawn``, the fork server (the workers are its
    children), each holding SIGINT back from its first instruction. Each in a block of its own:
    starting the tracker unblocks SIGINT on its way out."""
    with _sigint_held(inherited=True):
        resource_tracker.ensure_running()
    if not spawn:
        with _sigint_held(inherited=True):
            forkserver.ensure_running()


#: Seconds a pool of worker processes outlives the run that started it: the next run with as
#: many workers (a round, a benchmark, a notebook cell) then starts without forking any: that
#: was a third of a run of 10^6 two_moons simulations on 2 workers. Idle workers use no CPU.
POOL_IDLE_SECONDS = 60.0
#: The kept pool: ``executor``, ``workers``, ``pid`` (of the process that made it), ``busy``
#: (a run uses it) and ``timer`` (its retirement, while idle).
_POOL: dict[str, Any] = {}
_POOL_LOCK = threading.Lock()


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers: the batches they run are lost anyway, so waiting for them
    would keep a Ctrl-C waiting for a whole batch of a slow simulator."""
    processes = getattr(executor, "_processes", None) or {}  # no public API before 3.14
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _new_pool(workers: int, context) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(os.getpid(),),
    )  # fmt: skip


def _take_pool(workers: int, context) -> tuple[ProcessPoolExecutor, bool]:
    """A pool of ``workers`` processes for one run: the kept one when it is idle and the same
    size, else a new one. Returns it and whether it is the kept pool."""
    with _POOL_LOCK:
        if _POOL.get("busy"):  # another thread's run: give this one a pool of its own
            return _new_pool(workers, context), False
        if "timer" in _POOL:
            _POOL.pop("timer").cancel()
        executor = _POOL.get("executor")
        if executor is not None and (
            _POOL["workers"] != workers or _POOL["pid"] != os.getpid() or _broken(executor)
        ):
            if _POOL["pid"] == os.getpid():
                executor.shutdown(wait=False, cancel_futures=True)
            _POOL.clear()
            executor = None
        if executor is None:
            executor = _new_pool(workers, context)
            _POOL.update(executor=executor, workers=workers, pid=os.getpid())
        _POOL["busy"] = True
        return executor, True


def _broken(executor: ProcessPoolExecutor) -> bool:
    return bool(getattr(executor, "_broken", False))  # a worker died; no public flag


def _give_back(executor: ProcessPoolExecutor, kept: bool, clean: bool) -> None:
    """End a run's use of its pool. After a clean run the kept pool waits
    :data:`POOL_IDLE_SECONDS` for the next; after an early stop its workers are terminated."""
    if not clean:
        _stop_workers(executor)
    if not (kept and clean):
        with _POOL_LOCK:
            if kept:
                _POOL.clear()
        executor.shutdown(wait=True, cancel_futures=True)
        return
    with _POOL_LOCK:
        _POOL["busy"] = False
        timer = threading.Timer(POOL_IDLE_SECONDS, _retire, args=(executor,))
        timer.daemon = True
        _POOL["timer"] = timer
        timer.start()


def _retire(executor: ProcessPoolExecutor) -> None:
    """Shut the kept pool down once it has been idle for :data:`POOL_IDLE_SECONDS`."""
    with _POOL_LOCK:
        if _POOL.get("executor") is not executor or _POOL.get("busy"):
            return
        _POOL.clear()
    executor.shutdown(wait=False)


def _reraise(exc: BaseException):
    if isinstance(exc, SbitkError):
        raise exc.with_traceback(None) from None
    raise exc


def _run_local(
    sim: Simulator, seed: int, batches: Sequence[tuple[int, int, int]], workers: int,
    path: Path | None, direct: set[int], given: Callable[[int, int], np.ndarray | None],
    new: _NewBank | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Run ``batches`` on ``workers`` local processes. The ``direct`` batches are written into
    the bank at ``path`` by the workers themselves, and marked done: only a tally of the status
    codes comes back, not θ and x. A ``new`` bank is made here, once the first batches are
    running when the pool's workers run already (they wait for it); its error stops the run."""
    payload = dumps_simulator(sim)
    job = (hashlib.sha256(payload).hexdigest(), payload)
    token = os.urandom(8).hex()
    context = _mp_context()
    queue = list(batches)[::-1]
    running: dict = {}

    def fill() -> None:
        # A bounded window of submitted batches keeps memory flat on long runs.
        while queue and len(running) < 2 * workers:
            index, start, rows = queue[-1]
            write = (str(path), token, start) if index in direct else None
            task = (job, seed, index, rows, given(start, rows), write)
            try:
                future = executor.submit(_run_in_worker, *task)
            except BrokenProcessPool:
                return  # a worker died: the batches running say which, below
            queue.pop()
            running[future] = index

    def died(index: int) -> SimulatorError:
        return SimulatorError(
            f"a worker process died while running simulator {sim.name!r} on batch {index}: "
            "killed, out of memory, a crash in native code, or a script that calls simulate() "
            "without an `if __name__ == '__main__':` guard"
        )

    spawn = context.get_start_method() != "forkserver"
    with contextlib.ExitStack() as stack:
        if new is not None:
            stack.callback(new.abandon)  # a run stopped first: nobody waits for its bank
        _start_helpers(spawn)
        executor, kept = _take_pool(workers, context)
        stack.enter_context(_given_back(executor, kept, lambda: not (queue or running)))
        started = bool(getattr(executor, "_processes", None))  # no public API before 3.14
        if new is not None and not started:
            new.make()  # before the workers, which take longer to start than the bank to make
        with _sigint_held(inherited=spawn):
            fill()  # a new pool starts its workers on the first submissions
        if new is not None and started:
            new.make()  # while the workers simulate their first batches
        while queue or running:
            fill()
            if not running:  # the pool broke before any batch of ours was running
                raise died(queue[-1][0])
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool as exc:
                    raise died(index) from exc
                except Exception as exc:
                    _reraise(exc)


@contextlib.contextmanager
def _given_back(executor: ProcessPoolExecutor, kept: bool, finished: Callable[[], bool]):
    """Give the pool back at the end of a run. Stopped early (a Ctrl-C, an error, or the caller
    closed the run), or with a worker dead, the pool goes too."""
    try:
        yield
    finally:
        _give_back(executor, kept, clean=finished() and not _broken(executor))


class _NewBank:
    """A new bank that the caller makes in :func:`_run_local` (before the first submissions when
    the pool must start its workers, after them when they run already), and that other threads
    wait for. Made on a thread instead, it held the interpreter lock while the caller submitted
    the first batches: they started 5-10 ms into a two_moons run of about 60 at 2 workers."""

    def __init__(self, create: Callable[[], Bank]):
        self.create, self.future = create, Future()

    def make(self) -> None:
        try:
            self.future.set_result(self.create())
        except BaseException as exc:
            self.future.set_exception(exc)
            raise

    def abandon(self) -> None:
        """Stop the waiting of a run that ended before making its bank."""
        self.future.cancel()

    def result(self) -> Bank:
        return self.future.result()


def _write_behind(
    store: Bank | Callable[[], Bank], results: Iterator[dict[str, Any]], starts: dict, bar
) -> tuple[Bank, dict[int, int]]:
    """Write each batch into the bank on a thread while the next one is simulated.

    At most one write is in flight, so memory holds two batches; writes keep their order, and a
    batch is marked done only once its rows are written (a batch a worker wrote and marked
    itself is only counted). ``store`` may be the function that creates a new bank: it then
    runs on the thread too, while the first batch is simulated (3-5 ms of a 10^6-row two_moons
    run of about 90 ms). Returns the bank and the rows of each status code.
    """
    from concurrent.futures import ThreadPoolExecutor

    counts: dict[int, int] = {}
    writing, rows = None, 0

    def finish() -> None:  # the write in flight, then its rows on the progress bar
        if writing is not None:
            writing.result()
            bar.update(rows)

    def write(r: dict[str, Any]) -> None:
        opened.result()._write_batch(
            r["index"], starts[r["index"]], r["theta"], r["x"], r["status"], r["errors"]
        )

    with ThreadPoolExecutor(1, thread_name_prefix="sbitk-bank") as writer:
        opened = writer.submit(lambda: store if isinstance(store, Bank) else store())
        try:
            for r in results:
                finish()
                if "written" in r:  # a worker wrote and marked it: only its rows to count
                    tally, writing = r["written"], None
                    bar.update(sum(tally.values()))
                else:
                    tally, writing = _tally(r["status"]), writer.submit(write, r)
                rows = sum(tally.values())
                for code, k in tally.items():
                    counts[code] = counts.get(code, 0) + k
            finish()
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
    return opened.result(), counts


# ---- Dask ------------------------------------------------------------------------------------
_DASK_CACHE: dict[str, Simulator] = {}


def _run_on_dask(
    payload: bytes, key: str, seed: int, index: int, rows: int, theta: np.ndarray | None
) -> dict[str, Any]:
    sim = _DASK_CACHE.get(key)
    if sim is None:
        if len(_DASK_CACHE) >= 4:
            _DASK_CACHE.clear()
        sim = _DASK_CACHE[key] = cloudpickle.loads(payload)
    torch.set_num_threads(1)
    return simulate_batch(sim, seed, index, rows, theta)


def _run_dask(
    sim: Simulator, seed: int, batches: Sequence[tuple[int, int, int]], client,
    given: Callable[[int, int], np.ndarray | None],
) -> Iterator[dict[str, Any]]:  # fmt: skip
    from distributed import as_completed

    payload = dumps_simulator(sim)
    key = hashlib.sha256(payload).hexdigest()
    # A key of its own (hash=False): under the content's hash, a run right after another of
    # the same simulator scattered the key the first run was releasing, and its batches were
    # cancelled for "lost dependencies" (or waited for the key for ever).
    shipped = client.scatter(payload, broadcast=True, hash=False)
    threads = max(sum(client.nthreads().values()), 1)
    queue = list(batches)[::-1]

    def submit(index: int, start: int, rows: int):
        theta = given(start, rows)
        return client.submit(_run_on_dask, shipped, key, seed, index, rows, theta, pure=False)

    window = as_completed()
    running = []
    while queue and len(running) < 2 * threads:
        index, start, rows = queue.pop()
        future = submit(index, start, rows)
        running.append(future)
        window.add(future)
    try:
        for future in window:
            try:
                result = future.result()
            except Exception as exc:
                _reraise(exc)
            running.remove(future)
            future.release()
            if queue:
                index, start, rows = queue.pop()
                nxt = submit(index, start, rows)
                running.append(nxt)
                window.add(nxt)
            yield result
    finally:
        for future in running:
            future.cancel()
        shipped.release()


# ---- the entry point -------------------------------------------------------------------------
def _caller_level() -> int:
    """``stacklevel`` that points a warning at the first caller outside sbitk."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("sbitk"):
        frame, level = frame.f_back, level + 1
    return level


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SbitkError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _given_theta(sim: Simulator, theta, n: int, append: bool) -> np.ndarray:
    """θ given to :func:`simulate`, checked: (n, D_θ), finite, inside the prior's support."""
    if append:
        raise SbitkError("simulating at given theta cannot append to a bank; use a new bank")
    t = torch.as_tensor(theta).detach().cpu().to(torch.float32)
    if t.dim() != 2 or t.shape != (n, sim.theta_dim):
        raise SbitkError(
            f"theta must have shape (n, D_θ) = ({n}, {sim.theta_dim}), found {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise SbitkError("theta holds NaN or Inf")
    outside = ~sim.prior.support_contains(t.double())
    if outside.any():
        row = int(torch.nonzero(outside)[0])
        raise SbitkError(
            f"{int(outside.sum())} rows of theta lie outside the prior's support (first: row "
            f"{row}, {t[row].tolist()})"
        )
    return t.numpy()


def _sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _check_matches(
    bank: Bank, sim: Simulator, seed: int, batch_size: int | None, given: np.ndarray | None
) -> None:
    where = bank.path
    recorded = bank.attrs.get("given_theta_sha256")
    if recorded != (None if given is None else _sha256(given)):
        held = "prior draws" if recorded is None else "given theta"
        asked = "prior draws" if given is None else "given theta"
        what = "other given theta" if held == asked else f"{held}, asked for {asked}"
        raise BankError(
            f"bank {where} holds simulations at {what}; overwrite it (overwrite=True, --force)"
        )
    desc = sim.describe()
    if bank.simulator_name != sim.name:
        raise BankError(
            f"bank {where} holds simulator {bank.simulator_name!r}, not {sim.name!r}; "
            "choose another path, or overwrite it (overwrite=True, --force)"
        )
    if str(bank.simulator_version) != str(sim.version):
        raise BankError(
            f"bank {where} holds version {bank.simulator_version!r} of simulator {sim.name!r}, "
            f"this one is version {sim.version!r}; overwrite it (overwrite=True, --force)"
        )
    if (
        bank.parameter_names != desc["parameter_names"]
        or bank.output_names != desc["output_names"]
    ):
        raise BankError(
            f"bank {where}: simulator {sim.name!r} now has parameters {desc['parameter_names']} "
            f"and outputs {desc['output_names']}, the bank has {bank.parameter_names} and "
            f"{bank.output_names}"
        )
    if bank.seed != seed:
        raise BankError(
            f"bank {where} was simulated with seed {bank.seed}, asked for seed {seed}; "
            "use the same seed to resume or append, or overwrite it (overwrite=True, --force)"
        )
    if batch_size is not None and batch_size != bank.batch_size:
        raise BankError(
            f"bank {where} has batch size {bank.batch_size}, asked for {batch_size}; "
            "the batch size of a bank cannot change (leave it out to use the bank's)"
        )


#: Bytes of one batch row held in memory while it is simulated and written, per float32 value
#: of θ and x: the simulator's result, its float32 copy, the NumPy array and the chunk buffer.
BATCH_BYTES_PER_VALUE = 4 * 4


def check_sizes(
    sim: Simulator, n: int, batch_size: int, path: Path | None, *, new_rows: bool = True
) -> None:
    """Refuse, before anything is written, a run that cannot be stored or held.

    ``n`` new rows of θ and x (float32) plus their flags must fit on the bank's disk (in memory
    for an in-memory bank), one batch must fit in memory, and the plan may have at most
    :data:`~sbitk.simulation.resources.MAX_BATCHES` batches.
    """
    width = sim.theta_dim + sim.x_dim
    what = f"simulating {n} rows of {sim.name!r}"
    rows_bytes = n * (4 * width + 2)
    if path is None:
        check_memory(rows_bytes, what + " in memory", "simulate fewer rows (-n)")
    elif new_rows:
        check_disk(rows_bytes, path, what + " into a bank", "simulate fewer rows (-n)")
    batch = min(batch_size, n) if path is None else batch_size
    check_memory(
        batch * width * BATCH_BYTES_PER_VALUE,
        f"a batch of {batch_size} rows of {sim.name!r}",
        "choose a smaller batch size (--batch-size)",
    )
    batches = math.ceil(n / batch_size)
    if batches > MAX_BATCHES:
        raise SbitkError(
            f"{n} rows in batches of {batch_size} make {batches} batches, more than the "
            f"{MAX_BATCHES} a bank may have; simulate fewer rows (-n) or larger batches"
        )


def existing_batch_size(path: Path) -> int | None:
    """The batch size of the bank at ``path``, or ``None`` when there is none."""
    if not (path / "zarr.json").is_file():
        return None
    try:
        return Bank.open(path).batch_size
    except (BankError, KeyError, TypeError, ValueError):
        return None


def simulate(
    simulator: Simulator | str,
    n: int,
    *,
    seed: int = 0,
    workers: int | None = None,
    client=None,
    bank: str | os.PathLike | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    append: bool = False,
    overwrite: bool = False,
    theta=None,
) -> Bank:
    """Simulate ``n`` rows (θ, x) into a bank, in batches, locally or on a Dask cluster.

    Batch ``b`` draws θ ~ p(θ) and then x ~ p(x | θ) with a generator seeded from ``(seed, b)``
    (:func:`batch_generator`), so the bank depends on the seed and the batch size only: not on
    ``workers``, nor on whether Dask ran it. Failed simulations (an exception, NaN, Inf, or an
    output of the wrong shape for some θ) are kept as invalid rows with their status and message,
    counted, and reported at the end with a :class:`SimulationFailureWarning`.

    With ``bank`` a path, rerunning the same call resumes an interrupted run: only batches not
    yet marked done are simulated. ``append=True`` adds ``n`` more rows to an existing bank;
    the new batches continue the batch numbering, so their seeds never repeat.

    With a Dask ``client``, workers return each batch to this process, which writes it: the
    cluster needs no shared filesystem, only sbitk installed on its workers (the simulator itself
    is sent with cloudpickle). Batches are streamed as they finish, with a bounded number in
    flight, so memory stays flat. Dask is imported only when a client is given.

    Args:
        simulator: A :class:`Simulator` or a registered name.
        n: Rows to simulate (to add, with ``append``).
        seed: Non-negative integer seed of the whole run.
        workers: Local processes; the available cores when omitted. ``1`` runs in this process.
            Ignored when ``client`` is given.
        client: A ``distributed.Client``; the batches then run on its cluster.
        bank: Directory of the Zarr store; an in-memory bank when omitted.
        batch_size: Rows per batch and per chunk. For a new bank, :func:`default_batch_size`
            when omitted; an existing bank keeps its own.
        progress: Show a progress bar (on a terminal; ``TQDM_DISABLE=1`` hides it).
        append: Add ``n`` rows to an existing bank (created when missing).
        overwrite: Delete an existing bank at ``bank`` and start over.
        theta: θ to simulate at, (n, D_θ) inside the prior's support, instead of prior draws
            (a sequential round's proposal). The bank records their hash: a rerun resumes only
            with the same θ. Not with ``append``.

    Returns:
        The bank, opened read-only.

    Raises:
        BankError: when ``bank`` holds another simulator, seed or batch size, or a run with a
            different number of rows (pass ``append`` or ``overwrite``).
        SimulatorError: when the simulator returns the wrong shape or dtype for every row of a
            batch (it is mis-declared); the batches written before are kept.
    """
    from tqdm.auto import tqdm

    import sbitk

    sim = get_simulator(simulator)
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", 1)
    if workers is not None:
        workers = _check_int(workers, "workers", 1)
    if append and overwrite:
        raise SbitkError("append and overwrite exclude each other; pass one of them")
    given = None if theta is None else _given_theta(sim, theta, n, append)

    path = None if bank is None else Path(bank)
    existing = None if overwrite or path is None else existing_batch_size(path)
    size = existing or batch_size or simulator_batch_size(sim, n)
    check_sizes(sim, n, size, path, new_rows=append or existing is None)
    if path is not None and overwrite:
        Bank._remove(path)
    if path is not None and (path / "zarr.json").is_file():
        store = Bank._open(path, mode="r+")
        _check_matches(store, sim, seed, batch_size, given)
        if append:
            store._extend(n)
        elif store.planned == 0:
            store._extend(n)  # created, then interrupted before planning
        elif store.planned != n:
            raise BankError(
                f"bank {path} holds a run of {store.planned} rows, asked for {n}; pass "
                "append=True (--append) to add rows or overwrite=True (--force) to start over"
            )
    else:
        if path is not None:
            Bank._check_new(path)  # now, not after the first batch
        store = functools.partial(
            Bank._create,
            path,
            simulator=sim.describe(),
            seed=seed,
            batch_size=size,
            sbitk_version=sbitk.__version__,
            rows=n,
            attrs=None if given is None else {"given_theta_sha256": _sha256(given)},
        )  # made while the first batch is simulated, when this process writes

    pending = segment_batches(0, 0, n, size) if callable(store) else store.pending_batches()
    starts = {index: start for index, start, _ in pending}

    def rows_of(start: int, rows: int) -> np.ndarray | None:
        return None if given is None else given[start : start + rows]

    workers = 1 if client is not None else min(workers or _default_workers(), len(pending))
    if client is not None:
        results = _run_dask(sim, seed, pending, client, rows_of)
    elif workers <= 1:
        results = (simulate_batch(sim, seed, i, r, rows_of(s, r)) for i, s, r in pending)
    else:  # the workers write the bank: they start while it is made, and wait for it
        new = None
        if callable(store):
            new = _NewBank(store)
            store = new.result
            direct = {index for index, _, _ in pending} if path is not None else set()
        else:
            direct = _exclusive(store, pending) if path is not None else set()
        results = _run_local(sim, seed, pending, workers, path, direct, rows_of, new)

    total = sum(rows for _, _, rows in pending)
    desc = f"simulate {sim.name}"
    with tqdm(total=total, desc=desc, unit="sim", disable=None if progress else True) as bar:
        store, counts = _write_behind(store, results, starts, bar)
    every_row = len(pending) == store.num_batches  # else earlier runs wrote some rows
    store._record_failure_counts(counts if every_row else None)
    failed = sum(k for code, k in counts.items() if code != STATUS_OK)

    out = Bank.open(path) if path is not None else Bank(store._group, None)
    if failed:
        warnings.warn(
            f"{failed} of {total} simulations of {sim.name!r} failed and are marked invalid\n"
            f"{out.failures()}",
            SimulationFailureWarning,
            stacklevel=_caller_level(),
        )
    return out


__all__ = [
    "BATCH_SIZE_BOUNDS",
    "SimulationFailureWarning",
    "batch_generator",
    "default_batch_size",
    "simulator_batch_size",
    "dumps_simulator",
    "simulate",
    "simulate_batch",
]
