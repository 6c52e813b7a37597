"""Simulation throughput of sbitk, and the cost of writing the bank, next to sbi.

For two_moons and slcp, prints simulations per second for:

* sbitk with 1 worker (in-process), 2 local worker processes, and a 2-worker Dask LocalCluster,
  each writing a Zarr bank on disk (sbitk's default batch size for n, unless given);
* sbi 0.27's ``simulate_for_sbi`` with the same simulator, the same batch size, 1 and 2 workers:
  as it is (θ and x in memory, nothing written), and followed by ``torch.save`` of θ and x, so
  that both sides end with the simulations in a file;

each library's fastest way next to the other's, and what the bank costs: the time to write
every batch into a bank one after another, and the wall-clock time the 1-worker run spends
beyond simulating (the runner writes each batch on a thread while it simulates the next), both
as fractions of the time to simulate the batches in one process without a bank. Each figure is
the best of ``--repeats`` runs, and within each repeat every library and runner takes its turn,
so that the machine's load hits them alike. Both libraries keep their worker processes between
runs and are warmed up first; the Dask cluster is started only for its own rows, after the
local ones.

Usage: ``python benchmarks/simulate.py [-n 1000000] [--batch-size B]``. Wall-clock times on a
shared machine vary by some 10-20 % between runs.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import sbitk
from sbitk.simulation.bank import Bank
from sbitk.simulation.runner import simulate, simulate_batch, simulator_batch_size

#: Each rate is the best of this many runs (``--repeats``): a run of 10^6 cheap simulations
#: lasts a tenth of a second, where a shared machine's noise is large.
REPEATS = [5]
#: The local worker counts measured.
W = (1, 2)


def interleaved(runs: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best seconds of each run over ``REPEATS`` rounds. Within a round the runs take turns,
    so that a change in the machine's load hits every library and runner alike (timed one
    after another, the ratio of the two libraries moved by a third between otherwise identical
    invocations of this script)."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(REPEATS[0]):
        for label, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def sbitk_run(sim, n: int, batch_size: int, workdir: Path, **kwargs) -> Callable[[], Bank]:
    """One run of ``simulate`` into a new bank in ``workdir``."""

    def one() -> Bank:
        path = workdir / f"{sim.name}-{len(list(workdir.iterdir()))}.zarr"
        bank = simulate(sim, n, seed=0, batch_size=batch_size, bank=path, progress=False, **kwargs)
        assert len(bank) == n
        return bank

    return one


def sbi_run(sim, n: int, batch_size: int, workers: int, save: Path | None = None):
    """One run of sbi's ``simulate_for_sbi``; with ``save``, θ and x are then written to that
    file by ``torch.save``, so that both sides end with the simulations on disk."""
    from sbi.inference import simulate_for_sbi
    from sbi.utils import BoxUniform

    prior = sim.prior
    box = BoxUniform(prior.low.float(), prior.high.float())  # both tasks have box priors

    def simulator(theta):
        return sim(torch.as_tensor(theta, dtype=torch.float32))

    def one():
        theta, x = simulate_for_sbi(
            simulator, box, n, num_workers=workers, simulation_batch_size=batch_size, seed=0,
            show_progress_bar=False,
        )  # fmt: skip
        if save is not None:
            torch.save({"theta": theta, "x": x}, save)

    return one


def bank_runs(sim, n: int, batch_size: int, workdir: Path) -> dict[str, Callable[[], object]]:
    """Simulating all batches in one process without a bank, and writing them to a bank (the
    same batches each time, into a bank made once)."""
    batches = range(-(-n // batch_size))
    results = []

    def simulate_all():
        results[:] = [simulate_batch(sim, 0, b, batch_size) for b in batches]

    simulate_all()
    bank = Bank._create(
        workdir / f"{sim.name}-write.zarr",
        simulator=sim.describe(),
        seed=0,
        batch_size=batch_size,
        sbitk_version=sbitk.__version__,
    )
    bank._extend(len(results) * batch_size)

    def write():
        for r in results:
            start = r["index"] * batch_size
            bank._write_batch(r["index"], start, r["theta"], r["x"], r["status"], r["errors"])

    return {"simulate": simulate_all, "write": write}


def dask_rates(tasks, batches: dict[str, int], n: int, workdir: Path, rows: list) -> None:
    """sbitk on a 2-worker Dask LocalCluster, next to sbi's 2 local workers (measured before)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        for name in tasks:
            sim = sbitk.get_simulator(name)
            batch = batches[name]
            sbitk_run(sim, 2 * batch, batch, workdir, client=client)()  # the workers' imports
            rate = (
                n / interleaved({"dask": sbitk_run(sim, n, batch, workdir, client=client)})["dask"]
            )
            peer = next(r[3] for r in rows if r[0] == name and r[1] == "2 workers")
            at = max(i for i, r in enumerate(rows) if r[0] == name and r[1] == "2 workers")
            rows.insert(at + 1, (name, "Dask, 2 workers", rate, peer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="simulations per measurement")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    parser.add_argument("--repeats", type=int, default=REPEATS[0], help="best of this many runs")
    args = parser.parse_args()
    REPEATS[0] = args.repeats
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    rows = []
    batches: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.tasks:
            sim = sbitk.get_simulator(name)
            batches[name] = batch = args.batch_size or simulator_batch_size(sim, args.n)
            # Warm up: the fork server and sbitk's pool of workers, sbi's imports and joblib's
            # pool; both libraries keep their pool of worker processes between runs.
            sbitk_run(sim, 2 * batch, batch, workdir, workers=2)()
            sbi_run(sim, 2 * batch, batch, 1)()
            sbi_run(sim, 2 * batch, batch, 2)()
            saved = workdir / f"{name}.pt"
            runs = {
                **{f"sbi {w}": sbi_run(sim, args.n, batch, w) for w in W},
                **{f"sbi+save {w}": sbi_run(sim, args.n, batch, w, saved) for w in W},
                **{
                    f"sbitk {w}": sbitk_run(sim, args.n, batch, workdir, workers=w) for w in (1, 2)
                },
                **bank_runs(sim, args.n, batch, workdir),
            }
            s = interleaved(runs)
            for label, w in (("1 worker", 1), ("2 workers", 2)):
                peer = (args.n / s[f"sbi {w}"], args.n / s[f"sbi+save {w}"])
                rows.append((name, label, args.n / s[f"sbitk {w}"], peer))
            beyond = s["sbitk 1"] - s["simulate"]  # the 1-worker run's time beyond simulating
            rows.append((name, "bank writing", s["simulate"], (s["write"], beyond)))
        # The Dask rows last: an idle cluster's processes slow a run of 50 ms on 2 cores by a
        # third, so none runs while the local rows are measured.
        dask_rates(args.tasks, batches, args.n, workdir, rows)

    sizes = ", ".join(f"{k} {v}" for k, v in batches.items())
    print(f"\nsimulations per second, n = {args.n}, batch size: {sizes} (sbi: the same)")
    print("sbi in memory, and sbi then torch.save of θ and x (both sides end on disk)")
    print(f"{'task':<10}  {'sbitk runner':<16}  {'sbitk sims/s':>12}  {'sbi sims/s':>10}  ratio"
          f"  {'sbi+save':>10}  ratio")  # fmt: skip
    for name, label, a, (b, c) in (r for r in rows if r[1] != "bank writing"):
        print(f"{name:<10}  {label:<16}  {a:>12,.0f}  {b:>10,.0f}  {a / b:5.2f}"
              f"  {c:>10,.0f}  {a / c:5.2f}")  # fmt: skip
    print("\neach library's fastest way on this machine (sbi in memory)")
    for name in batches:
        ours = [r for r in rows if r[0] == name and r[1] != "bank writing"]
        best = max(ours, key=lambda r: r[2])
        sbi1, sbi2 = (next(r[3][0] for r in ours if r[1] == w) for w in ("1 worker", "2 workers"))
        peer, how = max((sbi1, "1 worker"), (sbi2, "2 workers"))
        print(f"{name:<10}  sbitk {best[2]:>12,.0f} ({best[1]})  sbi {peer:>12,.0f} ({how})"
              f"  ratio {best[2] / peer:5.2f}")  # fmt: skip
    print("\nwhat the bank costs, as a fraction of simulating the batches in one process")
    print(f"{'task':<10}  {'simulate s':>10}  {'write s':>8}  {'write/sim':>9}  {'ms/batch':>8}"
          f"  {'1-worker run beyond simulating / sim':>36}")  # fmt: skip
    for name, _, t_sim, (t_write, beyond) in (r for r in rows if r[1] == "bank writing"):
        per_batch = 1e3 * t_write / (-(-args.n // batches[name]))
        print(
            f"{name:<10}  {t_sim:>10.3f}  {t_write:>8.3f}  {t_write / t_sim:>9.2f}  "
            f"{per_batch:>8.2f}  {beyond / t_sim:>36.2f}"
        )


if __name__ == "__main__":
    main()
