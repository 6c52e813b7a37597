"""SMC-ABC of sbitk against pyabc's ABCSMC on two_moons, at equal simulation budgets.

For each budget and each sbibm reference observation, both run once, from the prior, with
1,000 particles per population, the tolerance of each round the weighted median of the
previous population's distances, and a hard cap at the budget. Their final populations are
compared with the reference posterior by C2ST, sbibm protocol: 10,000 reference draws and the
classifier of the sbibm paper. An ABC population holds only 1,000 distinct weighted particles,
so it is resampled with replacement, by weight, to 10,000 draws, as sbibm did for its ABC
baselines. The wall-clock time is that of the inference alone (pyabc's includes writing its
database), both on one CPU thread.

What each uses:

* **sbitk** ``smc_abc``: Euclidean distance on the data scaled by its median absolute deviation
  (MAD) under the prior predictive, fitted once on the first population; a Gaussian
  perturbation with the population's weighted covariance; simulations in batches through the
  torch simulator.
* **pyabc** ``ABCSMC`` (method ``pyabc``): the same distance, ``AdaptivePNormDistance(p=2,
  scale_function=mad)`` fitted once on its calibration sample from the prior
  (``fit_scale_ixs={0}``); its default ``MedianEpsilon`` and ``MultivariateNormalTransition``;
  ``SingleCoreSampler``; a temporary sqlite database; the same two_moons model in numpy, one
  simulation per call, as pyabc calls models.
* **pyabc-adaptive**: as ``pyabc``, but the MAD scale is refitted every generation
  (Prangle 2017), pyabc's recommended adaptive distance.
* **sbitk-silverman**: as ``sbitk``, with pyabc's kernel width: ``kernel_scale`` Silverman's
  factor squared (0.10 for 1,000 particles in 2-D; pyabc puts the effective sample size for
  the particle count) instead of sbitk's default 1.

pyabc checks its simulation budget only between generations, so it would overshoot it. Here
its sampler stops when the budget is spent; a generation it cuts short is dropped (pyabc's
"sample not ok"), its simulations counted, and the last complete one is the result.

Each finished (method, budget, observation) row is appended to a CSV file, and a rerun skips
the rows already there, so an interrupted run resumes.

Usage (pyabc is in the ``abc-compare`` extra)::

    OMP_NUM_THREADS=1 python benchmarks/abc_vs_pyabc.py --budgets 10000 --csv runs/abc.csv
    python benchmarks/abc_vs_pyabc.py --budgets 10000,100000 --observations 1,2 \\
        --methods sbitk,pyabc,pyabc-adaptive --markdown runs/abc.md
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from _protocol import append_row, publish, read_rows
from threadpoolctl import threadpool_limits

import sbitk
from sbitk.diagnostics.c2st import c2st
from sbitk.inference.abc import smc_abc

TASK = "two_moons"
METHODS = ("sbitk", "pyabc", "pyabc-adaptive", "sbitk-silverman")
FIELDS = [
    "method", "task", "budget", "observation", "c2st", "time_s", "simulations",
    "populations", "tolerance", "ess", "distance",
]  # fmt: skip
DISTANCE = {
    "sbitk": "Euclidean / MAD (prior predictive, fixed)",
    "pyabc": "Euclidean / MAD (prior predictive, fixed)",
    "pyabc-adaptive": "Euclidean / MAD (refitted every generation)",
    "sbitk-silverman": "Euclidean / MAD (prior predictive, fixed)",
}


def silverman_scale(particles: int, dim: int) -> float:
    """Silverman's factor squared, (n (d + 2) / 4)^(-2 / (d + 4)): pyabc's kernel covariance
    over the population's (its ``MultivariateNormalTransition`` default)."""
    return (particles * (dim + 2) / 4) ** (-2 / (dim + 4))


def run_sbitk(
    x_o: np.ndarray, budget: int, particles: int, seed: int, kernel_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """sbitk's SMC-ABC; returns the weighted particles and what the run recorded."""
    task = sbitk.get_simulator(TASK)
    start = time.perf_counter()
    result = smc_abc(
        task,
        torch.as_tensor(x_o),
        num_simulations=budget,
        num_particles=particles,
        kernel_scale=kernel_scale,
        seed=seed,
    )
    elapsed = time.perf_counter() - start
    info = {
        "time_s": elapsed,
        "simulations": result.num_simulations,
        "populations": len(result.tolerances),  # the first, from the prior, included
        "tolerance": result.tolerance,
        "ess": result.effective_sample_size,
    }
    return result.samples.numpy(), result.weights.numpy(), info


def two_moons_numpy(theta1: float, theta2: float, rng: np.random.Generator) -> np.ndarray:
    """sbitk's two_moons simulator (``sbitk_simulators.two_moons``) for one θ, in numpy."""
    from sbitk_simulators.two_moons import A_HIGH, A_LOW, BASE_OFFSET, R_LOC, R_SCALE

    a = rng.uniform(A_LOW, A_HIGH)
    r = rng.normal(R_LOC, R_SCALE)
    half = math.sqrt(0.5)
    return np.array(
        [
            r * math.cos(a) + BASE_OFFSET - abs(half * (theta1 + theta2)),
            r * math.sin(a) + half * (theta2 - theta1),
        ]
    )


def run_pyabc(
    x_o: np.ndarray, budget: int, particles: int, seed: int, adaptive: bool
) -> tuple[np.ndarray, np.ndarray, dict]:
    """pyabc's ABCSMC on one core, with its sampler capped at ``budget`` simulations."""
    import pyabc
    from pyabc.distance import AdaptivePNormDistance, mad
    from pyabc.sampler import SingleCoreSampler

    class BudgetSampler(SingleCoreSampler):
        """One core; refuses to simulate past the budget over all generations."""

        def __init__(self, budget: int):
            super().__init__(check_max_eval=True)
            self.budget, self.used = budget, 0

        def sample_until_n_accepted(self, n, simulate_one, t, *, max_eval=np.inf, **kwargs):
            left = self.budget - self.used
            sample = super().sample_until_n_accepted(
                n, simulate_one, t, max_eval=min(max_eval, left), **kwargs
            )
            self.used += self.nr_evaluations_
            return sample

    rng = np.random.default_rng(seed)

    def model(parameter):
        x = two_moons_numpy(parameter["theta1"], parameter["theta2"], rng)
        return {"x1": x[0], "x2": x[1]}

    prior = pyabc.Distribution(
        theta1=pyabc.RV("uniform", -1.0, 2.0), theta2=pyabc.RV("uniform", -1.0, 2.0)
    )
    distance = AdaptivePNormDistance(
        p=2, scale_function=mad, fit_scale_ixs=np.inf if adaptive else {0}
    )
    sampler = BudgetSampler(budget)
    np.random.seed(seed)  # noqa: NPY002 (pyabc draws its priors and kernels from np.random)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        abc = pyabc.ABCSMC(model, prior, distance, population_size=particles, sampler=sampler)
        abc.new("sqlite:///" + os.path.join(tmp, "pyabc.db"), {"x1": x_o[0], "x2": x_o[1]})
        history = abc.run(max_total_nr_simulations=budget)
        elapsed = time.perf_counter() - start
        last = history.max_t
        frame, weights = history.get_distribution(m=0, t=last)
        tolerance = float(history.get_all_populations().set_index("t")["epsilon"][last])
    samples = frame[["theta1", "theta2"]].to_numpy()
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    info = {
        "time_s": elapsed,
        "simulations": sampler.used,
        "populations": last + 2,  # the calibration sample from the prior, and t = 0, 1, ...
        "tolerance": tolerance,
        "ess": float(1.0 / np.square(weights).sum()),
    }
    return samples, weights, info


def one_row(method: str, budget: int, k: int, args) -> dict:
    """Run ``method`` at observation ``k`` and score its resampled population by C2ST."""
    from sbitk_simulators.observations import load_observation, load_reference_posterior

    x_o = load_observation(TASK, k).reshape(-1).double().numpy()
    seed = args.seed + k
    if method == "sbitk":
        samples, weights, info = run_sbitk(x_o, budget, args.particles, seed)
    elif method == "sbitk-silverman":
        scale = silverman_scale(args.particles, len(x_o))
        samples, weights, info = run_sbitk(x_o, budget, args.particles, seed, scale)
    else:
        adaptive = method == "pyabc-adaptive"
        samples, weights, info = run_pyabc(x_o, budget, args.particles, seed, adaptive)
    rng = np.random.default_rng(seed)
    draws = samples[rng.choice(len(samples), args.samples, replace=True, p=weights)]
    reference = load_reference_posterior(TASK, k)[: args.samples]
    accuracy = c2st(reference, draws, seed=0, classifier=args.classifier).accuracy
    return {
        "method": method, "task": TASK, "budget": budget, "observation": k, "c2st": accuracy,
        **info, "distance": DISTANCE[method],
    }  # fmt: skip


def done_rows(path: Path) -> dict[tuple, dict]:
    return {(r["method"], int(r["budget"]), int(r["observation"])): r for r in read_rows(path)}


def table(rows: list[dict], methods: list[str], budgets: list[int]) -> str:
    """Markdown: per method and budget, means over the observations."""
    head = (
        "| budget | method | observations | C2ST mean | C2ST min–max | time s / obs. | "
        "simulations | populations | final ε | ESS | distance |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for budget in budgets:
        for method in methods:
            group = [r for r in rows if r["method"] == method and int(r["budget"]) == budget]
            if not group:
                continue

            def mean(key, group=group):
                return statistics.fmean(float(r[key]) for r in group)

            accs = [float(r["c2st"]) for r in group]
            lines.append(
                f"| {budget:,} | {method} | {len(group)} | {mean('c2st'):.3f} | "
                f"{min(accs):.3f}–{max(accs):.3f} | {mean('time_s'):.2f} | "
                f"{mean('simulations'):,.0f} | {mean('populations'):.1f} | "
                f"{mean('tolerance'):.3f} | {mean('ess'):.0f} | {group[0]['distance']} |"
            )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="10000,100000", help="simulations, comma-separated")
    parser.add_argument("--observations", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--methods", default="sbitk,pyabc", help=f"any of {', '.join(METHODS)}")
    parser.add_argument("--particles", type=int, default=1000, help="population size, both")
    parser.add_argument("--samples", type=int, default=10_000, help="per side (sbibm: 10,000)")
    parser.add_argument("--classifier", default="sbibm", choices=["sbibm", "mlp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default="runs/abc_vs_pyabc.csv")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    observations = [int(k) for k in args.observations.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)  # pyabc logs every generation
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(path)
    with threadpool_limits(1):
        for budget in budgets:
            for k in observations:
                for method in methods:
                    if (method, budget, k) in done:
                        continue
                    row = one_row(method, budget, k, args)
                    done[(method, budget, k)] = row
                    append_row(path, FIELDS, row)
                    print(f"{budget:>7,} obs {k:>2} {method:<15} C2ST {row['c2st']:.3f}  "
                          f"{row['time_s']:7.2f} s  {row['simulations']:>7,} sims  "
                          f"{row['populations']} pops  eps {row['tolerance']:.3f}",
                          flush=True)  # fmt: skip
    rows = [r for key, r in done.items() if key[0] in methods and key[2] in observations]
    text = (
        f"{TASK}: C2ST against the sbibm reference posterior, mean over the observations "
        f"{args.observations}; {args.particles:,} particles per population, resampled by "
        f"weight with replacement to {args.samples:,} draws per side (as sbibm did for ABC); "
        f"classifier {args.classifier!r}; one CPU thread; seed {args.seed} + observation.\n\n"
        + table(rows, methods, budgets)
    )
    publish(text, args.markdown)


if __name__ == "__main__":
    main()
