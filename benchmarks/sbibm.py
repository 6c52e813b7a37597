"""The sbibm benchmark at the published protocol: sbitk next to the published NPE, NLE, SNPE, SNLE.

Every built-in task whose reference posteriors ship with the sbibm package, at 1,000, 10,000 and
100,000 simulations. A run is one (task, budget, method, estimator): one network is trained on
the budget's simulations and, amortized, serves all the observations (NPE samples it directly,
NLE by MCMC per observation, as sbitk does). Its posterior is compared with the reference
posterior of each of the 10 reference observations exactly as sbibm does: C2ST on 10,000
samples per side, the published classifier (``--classifier sbibm``: an MLP with two hidden
layers of 10·D units, up to 10,000 epochs, 5-fold cross-validation, both sets z-scored by the
reference) and the reference samples of the sbibm package (``pip install --no-deps sbibm``).

Each run records the wall-clock times of simulation, training, sampling (all observations) and
C2ST. Runs go to a CSV file as they finish, and a rerun skips the rows already there (same
run, observations, samples per side, classifier and seed), so an interrupted suite resumes. The
markdown table puts the mean C2ST of every run next to the published means at the same task,
budget and observations (``benchmarks/reference/``; gaussian_mixture from the authors' rerun).

Runs execute in parallel, one process per run with one torch thread each (``--jobs N``), or on
a Dask cluster (``--scheduler ADDRESS``; start its workers with ``--nthreads 1``, in an
environment with sbitk, its simulators and the sbibm package files). ``--with-sbi`` also runs
sbi's NPE (its spline flow, its defaults) on the same simulations for a subset of tasks.

Usage::

    python benchmarks/sbibm.py --quick                   # the subset in docs/benchmarks.md
    python benchmarks/sbibm.py --jobs 2                  # everything: NPE and NLE, 8 tasks
    python benchmarks/sbibm.py --tasks slcp,sir --budgets 10000 --methods npe \\
        --estimators ensemble,flow_matching --with-sbi slcp
    python benchmarks/sbibm.py --tasks lotka_volterra --budgets 10000 --methods npe \\
        --estimators ensemble:member=flow_matching --only-estimators
    python benchmarks/sbibm.py --scheduler tcp://10.0.0.1:8786 --estimators all
    python benchmarks/sbibm.py --dry-run                 # the plan and the table so far

References:
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from _protocol import (
    SBIBM_OBSERVATIONS,
    SBIBM_SAMPLES,
    append_row,
    bank,
    has_sbibm_reference,
    read_rows,
    sbi_prior,
    sbibm_reference,
    timed,
    warm_up_torch,
)
from threadpoolctl import threadpool_limits

import sbitk
from sbitk.diagnostics.c2st import c2st
from sbitk.errors import SbitkError
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.nre import NRE
from sbitk.inference.sequential import fit_rounds
from sbitk.inference.training import TrainConfig
from sbitk.models.registry import available_estimators
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.simulator import trial_blocks

BUDGETS = "1000,10000,100000"
#: The methods, and the one visible table from their names to classes. The sequential ones
#: (truncated SNPE, SNPE by APT's atomic loss, SNLE, SNRE) train for each observation in
#: ``--rounds`` rounds.
METHODS = {"npe": NPE, "nle": NLE, "nre": NRE, "tsnpe": NPE, "snpe": NPE, "snle": NLE,
           "snre": NRE}  # fmt: skip
#: The sequential methods, and sequential NPE's variant for the NPE ones.
SEQUENTIAL = {"tsnpe": "truncated", "snpe": "atomic", "snle": None, "snre": None}
#: The rounds of a sequential run, as in the published SNPE and SNLE.
ROUNDS = 10
#: The published algorithms shown next to sbitk.
PUBLISHED = ("NPE", "NLE", "NRE", "SNPE", "SNLE", "SNRE")
#: Where sbi's NPE runs by default with ``--with-sbi`` (its training is slow at 100,000).
SBI_TASKS = "two_moons,gaussian_linear,slcp"
SBI_BUDGETS = "1000,10000"
#: ``--quick`` (and ``--jobs 2``): what it selects unless the flag is given explicitly. The
#: sbibm classifier takes minutes per comparison in 10 dimensions, hence three observations.
QUICK = {
    "tasks": "two_moons,gaussian_linear",
    "budgets": "1000,10000",
    "methods": "npe",
    "observations": "1,2,3",
}
REFERENCE = Path(__file__).resolve().parent / "reference"
#: The published files: the main paper's runs, and gaussian_mixture's rerun replacing its rows.
PUBLISHED_FILES = ("sbibm_main_paper.csv", "sbibm_gaussian_mixture_rerun.csv")
FIELDS = [
    "library", "task", "budget", "method", "estimator", "observations", "samples",
    "classifier", "seed", "rounds", "c2st", "c2st_each", "simulate_s", "train_s", "sample_s",
    "c2st_s", "epochs", "parallel", "version",
]  # fmt: skip
#: The columns that identify a row: a rerun skips a run whose key is in the CSV.
KEY = FIELDS[:10]


@dataclass(frozen=True)
class Protocol:
    """How every run is scored: the observations, C2ST samples per side, classifier, seed."""

    observations: tuple[int, ...]
    samples: int
    classifier: str
    seed: int
    rounds: int = ROUNDS


@dataclass(frozen=True)
class Run:
    """One network: a library's method with an estimator, trained on ``budget`` simulations."""

    library: str
    task: str
    budget: int
    method: str
    estimator: str

    def key(self, p: Protocol) -> tuple[str, ...]:
        return (
            self.library, self.task, str(self.budget), self.method, self.estimator,
            " ".join(map(str, p.observations)), str(p.samples), p.classifier, str(p.seed),
            str(p.rounds if self.method in SEQUENTIAL else 1),
        )  # fmt: skip

    def label(self) -> str:
        return f"{self.library} {self.method.upper()} {self.estimator} {self.task} {self.budget:,}"


def default_estimator(method: str) -> str:
    """The estimator a method uses when none is named.

    Its constructor's default, or the registry's default for its role where the constructor
    leaves the choice to the registry.
    """
    cls = METHODS[method]
    default = inspect.signature(cls).parameters["estimator"].default
    if default is None:
        from sbitk.models import registry

        return registry.default_estimator(cls.default_key)
    return default


def estimator_spec(text: str) -> tuple[str, dict]:
    """An estimator of ``--estimators``: ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE...]``, its
    registered name and its options, read as the command line's ``-O`` reads them (e.g.
    ``ensemble:member=flow_matching:members=5``)."""
    import click

    from sbitk.cli import _parse_options

    name, *items = text.split(":")
    try:
        return name, _parse_options(tuple(items), "--estimators")
    except click.BadParameter as exc:
        raise SystemExit(f"--estimators {text!r}: {exc.message}") from None


def build(run: Run, sim, seed: int):
    """The sbitk method of ``run`` with its defaults, or the options its estimator names
    (raises SbitkError if it cannot take it), told the simulator's i.i.d. trials as fitting
    from its bank would be."""
    config = TrainConfig(progress=False, seed=seed)
    cls, trials = METHODS[run.method], trial_blocks(sim.describe())
    name, options = estimator_spec(run.estimator)
    if cls is NPE:
        return NPE(sim.prior, name, config=config, trials=trials, **options)
    return cls(sim.prior, name, config=config, mcmc=MCMCConfig(progress=False),
               invalid="exclude", trials=trials, **options)  # fmt: skip


def train_sbitk(run: Run, sim, theta, x, seed: int):
    method = build(run, sim, seed)
    posterior, train_s = timed(lambda: method.fit(theta, x))

    def sample(x_o, k, n):
        return posterior.sample(n, x=x_o, seed=seed + k)

    return sample, train_s, method.history.epochs


def train_sequential(run: Run, sim, rounds: int, seed: int):
    """A sampler that trains for each observation in ``rounds`` rounds, then draws; the
    training (with the rounds' simulations) and simulation times add up over observations."""
    totals = {"train_s": 0.0, "simulate_s": 0.0, "epochs": []}

    def sample(x_o, k, n):
        method = build(run, sim, seed)
        start = time.perf_counter()
        posterior = fit_rounds(method, sim, x_o, run.budget, rounds=rounds, seed=seed + 1000 * k,
                               workers=1, sequential_npe=SEQUENTIAL[run.method])  # fmt: skip
        simulated = sum(r["simulate_s"] for r in method.history.rounds)
        totals["train_s"] += time.perf_counter() - start - simulated
        totals["simulate_s"] += simulated
        totals["epochs"].append(sum(r["epochs"] for r in method.history.rounds))
        return posterior.sample(n, x=x_o, seed=seed + k)

    return sample, totals


def train_sbi(run: Run, sim, theta, x, seed: int):
    from sbi.inference import SNPE

    torch.manual_seed(seed)
    inference = SNPE(
        prior=sbi_prior(sim.prior.spec()), density_estimator=run.estimator,
        show_progress_bars=False,
    )  # fmt: skip
    _, train_s = timed(lambda: inference.append_simulations(theta, x).train())
    posterior = inference.build_posterior()

    def sample(x_o, k, n):
        torch.manual_seed(seed + k)
        return posterior.sample((n,), x=x_o, show_progress_bars=False)

    return sample, train_s, inference._summary["epochs_trained"][-1]


def execute(run: Run, p: Protocol, parallel: int) -> dict:
    """Simulate, train once, then sample and score every observation: the run's CSV row.

    Failures come back as ``{"error": ...}`` so that one run cannot stop the others.
    """
    from sbitk_simulators.observations import load_observation

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        with threadpool_limits(1):
            warm_up_torch()
            if run.method in SEQUENTIAL:
                sim, simulate_s, train_s = sbitk.get_simulator(run.task), 0.0, 0.0
                sample, totals = train_sequential(run, sim, p.rounds, p.seed)
            else:
                (sim, theta, x), simulate_s = timed(lambda: bank(run.task, run.budget, p.seed))
                train = train_sbi if run.library == "sbi" else train_sbitk
                sample, train_s, epochs = train(run, sim, theta, x, p.seed)
            scores, sample_s, c2st_s = [], 0.0, 0.0
            for k in p.observations:
                x_o = load_observation(run.task, k).reshape(-1)
                start = time.perf_counter()
                draws = sample(x_o, k, p.samples)
                sample_s += time.perf_counter() - start
                if run.method in SEQUENTIAL:  # the rounds' training is not sampling
                    sample_s -= totals["train_s"] + totals["simulate_s"] - train_s - simulate_s
                    train_s, simulate_s = totals["train_s"], totals["simulate_s"]
                    epochs = "+".join(map(str, totals["epochs"]))
                reference = sbibm_reference(run.task, k)[: p.samples]
                start = time.perf_counter()
                scores.append(c2st(reference, draws, seed=0, classifier=p.classifier).accuracy)
                c2st_s += time.perf_counter() - start
                print(f"    {run.label()} observation {k}: C2ST {scores[-1]:.3f}", flush=True)
    except (Exception, SystemExit) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    if run.library == "sbi":
        import sbi

        version = f"sbi {sbi.__version__}"
    else:
        version = f"sbitk {sbitk.__version__}"
    return dict(
        zip(KEY, run.key(p)),
        c2st=f"{sum(scores) / len(scores):.4f}", c2st_each=" ".join(f"{s:.4f}" for s in scores),
        simulate_s=f"{simulate_s:.2f}", train_s=f"{train_s:.2f}", sample_s=f"{sample_s:.2f}",
        c2st_s=f"{c2st_s:.1f}", epochs=epochs, parallel=parallel, version=version,
    )  # fmt: skip


def split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def reference_tasks() -> list[str]:
    """The built-in tasks whose reference posterior samples ship with the sbibm package."""
    return [t for t in sbitk.available() if has_sbibm_reference(t)]


def plan(args) -> tuple[list[Run], list[str]]:
    """Every run the flags select, and a line for each (method, estimator) that cannot be run."""
    runs, refused = [], []
    estimators = available_estimators() if args.estimators == "all" else split(args.estimators)
    pairs, sim = [], sbitk.get_simulator(args.tasks[0])
    for method in args.methods:
        defaults = [] if args.only_estimators and estimators else [default_estimator(method)]
        for name in dict.fromkeys([*defaults, *estimators]):
            try:
                build(Run("sbitk", args.tasks[0], 0, method, name), sim, 0)
            except SbitkError as exc:
                refused.append(f"{method.upper()} {name}: {exc}")
                continue
            pairs.append((method, name))
    for budget in args.budgets:
        for task in args.tasks:
            runs += [Run("sbitk", task, budget, m, e) for m, e in pairs]
            if task in args.sbi_tasks and budget in args.sbi_budgets:
                runs.append(Run("sbi", task, budget, "npe", "nsf"))
    return runs, refused


def run_all(todo: list[Run], p: Protocol, args, path: Path, done: dict) -> list[str]:
    """Execute the runs (in process, in a process pool or on a Dask cluster), appending rows."""
    failures = []
    if args.scheduler or args.jobs > 1:  # the largest budgets first, so the last to end are short
        todo = sorted(todo, key=lambda run: -run.budget)

    def record(run: Run, row: dict) -> None:
        if "error" in row:
            failures.append(f"{run.label()}: {row['error']}")
            print(f"FAILED {run.label()}: {row['error']}\n{row['trace']}", flush=True)
            return
        append_row(path, FIELDS, row)
        done[run.key(p)] = row
        print(
            f"{run.label()}: C2ST {row['c2st']}  simulate {row['simulate_s']} s  train "
            f"{row['train_s']} s  sample {row['sample_s']} s  C2ST {row['c2st_s']} s",
            flush=True,
        )

    if args.scheduler:
        from distributed import Client, as_completed

        client = Client(args.scheduler)
        client.upload_file(str(Path(__file__).with_name("_protocol.py")))
        parallel = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        futures = {
            client.submit(execute, run, p, parallel, pure=False): run for run in todo
        }  # fmt: skip
        for future in as_completed(futures):
            record(futures[future], future.result())
        client.close()
    elif args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        # A fresh process per run: no run inherits another's memory or thread pools.
        with ProcessPoolExecutor(args.jobs, get_context("spawn"), max_tasks_per_child=1) as pool:
            futures = {pool.submit(execute, run, p, args.jobs): run for run in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    else:
        for run in todo:
            record(run, execute(run, p, 1))
    return failures


def load_published() -> dict[tuple[str, int, str], dict[int, float]]:
    """(task, budget, algorithm) → {observation: C2ST} from ``benchmarks/reference/``."""
    published: dict[tuple[str, int, str], dict[int, float]] = {}
    main, rerun = (read_rows(REFERENCE / name) for name in PUBLISHED_FILES)
    replaced = {r["task"] for r in rerun}
    for r in [r for r in main if r["task"] not in replaced] + rerun:
        budget = 10 ** "⁰¹²³⁴⁵⁶⁷⁸⁹".index(r["num_simulations"][-1])
        cell = published.setdefault((r["task"], budget, r["algorithm"]), {})
        cell[int(r["num_observation"])] = float(r["C2ST"])
    return published


def describe(p: Protocol, parallel: int, refused: list[str]) -> str:
    """What the tables measure, saying plainly where it departs from the published protocol."""
    n = len(p.observations)
    obs = ", ".join(map(str, p.observations))
    lines, every = [], tuple(p.observations) == SBIBM_OBSERVATIONS
    if not every:
        lines.append(
            f"**Fewer observations than published: C2ST is the mean over {n} of the 10 "
            f"reference observations ({obs}), not all 10; the published columns are the means "
            "over the same observations.**"
        )
    if p.samples != SBIBM_SAMPLES or p.classifier != "sbibm":
        lines.append(
            f"**Not the published C2ST: {p.samples:,} samples per side, classifier "
            f"{p.classifier!r} (published: 10,000, 'sbibm'); not comparable with the published "
            "columns.**"
        )
    lines.append(
        "C2ST (0.5: indistinguishable from the reference posterior): mean over "
        f"{'all 10 reference observations' if every else 'observations ' + obs}, "
        f"{p.samples:,} samples per side, classifier {p.classifier!r}, reference samples "
        "of the sbibm package. sbitk: one amortized network per task, budget, method and "
        f"estimator, seed {p.seed}; NLE and NRE sample by MCMC; TSNPE, SNPE (APT), SNLE and "
        f"SNRE train for each observation in {p.rounds} rounds (their times add up over the "
        "observations). "
        "Published (Lueckmann et al. 2021): NPE, NLE and NRE trained one network per "
        "observation, SNPE, SNLE and SNRE ran 10 sequential rounds for the one observation; "
        "gaussian_mixture is the authors' rerun. Times are "
        f"wall-clock seconds on one torch thread per run, up to {parallel} run(s) at a time; "
        "sampling and C2ST are totals over the observations."
    )
    lines += [f"Not run (the method refuses the estimator): {r}" for r in refused]
    return "\n\n".join(lines) + "\n"


def tables(runs: list[Run], p: Protocol, done: dict, published: dict) -> str:
    """Markdown: mean C2ST per task and budget next to the published; then every run's times."""
    columns = list(dict.fromkeys((r.library, r.method, r.estimator) for r in runs))
    tasks = list(dict.fromkeys(r.task for r in runs))
    cells = sorted({(r.task, r.budget) for r in runs}, key=lambda c: (tasks.index(c[0]), c[1]))
    head = ["task", "simulations"]
    head += [f"{lib} {m.upper()} {e}" for lib, m, e in columns]
    head += [f"published {a}" for a in PUBLISHED]
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * (len(head) - 2) + "|"]
    for task, budget in cells:
        row = [task, f"{budget:,}"]
        for lib, m, e in columns:
            r = done.get(Run(lib, task, budget, m, e).key(p))
            row.append(f"{float(r['c2st']):.3f}" if r else "–")
        for algorithm in PUBLISHED:
            each = published.get((task, budget, algorithm), {})
            have = [each[k] for k in p.observations if k in each]
            row.append(f"{sum(have) / len(have):.3f}" if len(have) == len(p.observations) else "–")
        lines.append("| " + " | ".join(row) + " |")
    times = [
        "| task | simulations | library | method | estimator | C2ST | simulation s | "
        "training s | sampling s | C2ST s | epochs |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = done.get(run.key(p))
        if r:
            times.append(
                f"| {run.task} | {run.budget:,} | {run.library} | {run.method.upper()} | "
                f"{run.estimator} | {float(r['c2st']):.3f} | {float(r['simulate_s']):.2f} | "
                f"{float(r['train_s']):.1f} | {float(r['sample_s']):.1f} | "
                f"{float(r['c2st_s']):.0f} | {r['epochs']} |"
            )
    missing = sum(run.key(p) not in done for run in runs)
    status = f"\n{missing} of {len(runs)} runs not (yet) done.\n" if missing else ""
    return "\n".join(lines) + "\n\n" + "\n".join(times) + "\n" + status


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tasks", help="comma-separated (default: every built-in task with sbibm references)")
    add("--budgets", help=f"simulation budgets (default: {BUDGETS})")
    add("--methods", help=f"comma-separated, of {', '.join(METHODS)} (default: all)")
    add("--estimators", default="", help="besides each method's default: NAME[:K=V...]; 'all'")
    add(
        "--only-estimators",
        action="store_true",
        help="run the --estimators alone, not each method's default besides them",
    )
    add("--observations", help="comma-separated, 1 to 10 (default: all 10)")
    add("--samples", type=int, default=SBIBM_SAMPLES, help="per side in C2ST (sbibm: 10,000)")
    add("--classifier", default="sbibm", choices=["sbibm", "mlp", "rf"])
    add("--seed", type=int, default=0)
    add("--rounds", type=int, default=ROUNDS, help="rounds of the sequential methods")
    add("--jobs", type=int, help="runs at a time, one process each (default 1; --quick: 2)")
    add("--scheduler", help="address of a Dask scheduler to run on instead")
    add("--quick", action="store_true", help="a subset that takes under 30 minutes on 2 cores")
    add("--with-sbi", nargs="?", const=SBI_TASKS, default="", metavar="TASKS",
        help=f"also run sbi's NPE on these tasks (default: {SBI_TASKS})")  # fmt: skip
    add("--sbi-budgets", default=SBI_BUDGETS, help="budgets at which sbi runs")
    add("--csv", default="runs/sbibm.csv")
    add("--markdown", default="runs/sbibm.md", help="write the tables to this file")
    add("--dry-run", action="store_true", help="print the plan and the tables so far; run nothing")
    args = parser.parse_args(argv)
    defaults = {
        "tasks": ",".join(reference_tasks()),
        "budgets": BUDGETS,
        "methods": ",".join(METHODS),
        "observations": ",".join(map(str, SBIBM_OBSERVATIONS)),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else value)
    if args.jobs is None:
        args.jobs = 2 if args.quick else 1
    args.tasks, args.methods = split(args.tasks), split(args.methods)
    args.budgets = [int(b) for b in split(args.budgets)]
    args.observations = tuple(int(k) for k in split(args.observations))
    args.sbi_tasks, args.sbi_budgets = (
        split(args.with_sbi),
        [int(b) for b in split(args.sbi_budgets)],
    )
    unknown = [t for t in args.tasks if not has_sbibm_reference(t)]
    if unknown:
        parser.error(f"no sbibm reference samples for {unknown}; have: {reference_tasks()}")
    if bad := [m for m in args.methods if m not in METHODS]:
        parser.error(f"unknown methods {bad}; known: {list(METHODS)}")
    if bad := [k for k in args.observations if k not in SBIBM_OBSERVATIONS]:
        parser.error(f"observations are numbered 1 to 10, got {bad}")
    if not 1 <= args.samples <= SBIBM_SAMPLES:
        parser.error(f"--samples must be in 1..{SBIBM_SAMPLES}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    p = Protocol(args.observations, args.samples, args.classifier, args.seed, args.rounds)
    runs, refused = plan(args)
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {tuple(r[k] for k in KEY): r for r in read_rows(path)}
    todo = [run for run in runs if run.key(p) not in done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {path}, {len(todo)} to do")
    for line in refused:
        print(f"not run: {line}")
    failures = []
    if args.dry_run:
        print("\n".join(f"  {run.label()}" for run in todo))
    elif todo:
        failures = run_all(todo, p, args, path, done)
    rows = [done[run.key(p)] for run in runs if run.key(p) in done]
    parallel = max([int(r["parallel"]) for r in rows] or [args.jobs])
    text = describe(p, parallel, refused) + "\n" + tables(runs, p, done, load_published())
    print()
    print(text)
    if args.markdown and not args.dry_run:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if failures:
        print("Failed (not in the CSV; a rerun tries them again):", *failures, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
