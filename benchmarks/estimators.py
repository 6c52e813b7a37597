"""Every estimator family against the default spline flow, at the sbibm protocol, in one run.

For each task, role (NPE, NLE, NRE) and estimator, one network is trained on the same 10,000
simulations (amortized: it then serves every observation), and its posterior is compared with
the sbibm reference posterior of each of the 10 reference observations by C2ST: 10,000 samples
per side and, by default, the classifier of the sbibm paper (``--classifier sbibm``; ``mlp`` is
sbi's faster variant with early stopping). The table gives the mean C2ST over the observations,
the training time, the time to draw the 10 × 10,000 posterior samples, and both times as ratios
to the spline flow (NSF) measured in the same run. Everything runs on one CPU thread.

Each finished (task, role, estimator) row is appended to a CSV file, and a rerun skips the rows
already there, so an interrupted run resumes.

Usage::

    python benchmarks/estimators.py --csv runs/estimators.csv --markdown runs/estimators.md
    python benchmarks/estimators.py --runs npe:two_moons:cvae,npe:two_moons:nsf --observations 1,2
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from _protocol import append_row, bank, publish, read_rows, warm_up_torch
from threadpoolctl import threadpool_limits

from sbitk.diagnostics.c2st import c2st
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.nre import NRE
from sbitk.inference.training import TrainConfig
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.simulator import trial_blocks

#: role:task:estimator for every run of the default table (the issue's targets, and the NSF).
DEFAULT_RUNS = (
    "npe:gaussian_linear:nsf,npe:gaussian_linear:cvae,npe:gaussian_linear:gan,"
    "npe:two_moons:nsf,npe:two_moons:cvae,npe:two_moons:gan,"
    "nle:two_moons:nsf,nle:two_moons:cvae"
)
FIELDS = ["role", "task", "estimator", "budget", "c2st", "train_s", "sample_s", "epochs", "each"]


def one_run(role: str, task: str, name: str, args) -> dict:
    """Train once, then sample and score every observation."""
    from sbitk_simulators.observations import load_observation, load_reference_posterior

    sim, theta, x = bank(task, args.budget, args.seed)
    config = TrainConfig(progress=False, seed=args.seed)
    trials = trial_blocks(sim.describe())  # as fitting from the bank would
    if role == "npe":
        method = NPE(sim.prior, name, config=config, trials=trials)
    else:
        cls = NLE if role == "nle" else NRE
        method = cls(sim.prior, name, config=config, mcmc=MCMCConfig(progress=False),
                     trials=trials)  # fmt: skip
    start = time.perf_counter()
    posterior = method.fit(theta, x)
    train_s = time.perf_counter() - start
    scores, sample_s = [], 0.0
    for k in args.observations:
        x_o = load_observation(task, k).reshape(-1)
        start = time.perf_counter()
        draws = posterior.sample(args.samples, x=x_o, seed=args.seed + k)
        sample_s += time.perf_counter() - start
        reference = load_reference_posterior(task, k)[: args.samples]
        result = c2st(reference, draws, seed=0, classifier=args.classifier)
        scores.append(result.accuracy)
        print(f"    {role} {task} {name} observation {k}: C2ST {result.accuracy:.3f}", flush=True)
    return {
        "role": role, "task": task, "estimator": name, "budget": args.budget,
        "c2st": sum(scores) / len(scores), "train_s": train_s, "sample_s": sample_s,
        "epochs": method.history.epochs, "each": " ".join(f"{s:.3f}" for s in scores),
    }  # fmt: skip


def done_rows(path: Path, budget: int) -> dict[tuple, dict]:
    rows = read_rows(path)
    return {(r["role"], r["task"], r["estimator"]): r for r in rows if int(r["budget"]) == budget}


def table(rows: list[dict]) -> str:
    """Markdown: C2ST and times, with ratios to the NSF of the same role and task."""
    head = (
        "| role | task | estimator | C2ST | training s | × NSF | sampling s | × NSF |\n"
        "|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    nsf = {(r["role"], r["task"]): r for r in rows if r["estimator"] == "nsf"}
    lines = []
    for r in rows:
        base = nsf.get((r["role"], r["task"]))
        t, s = float(r["train_s"]), float(r["sample_s"])
        rt = f"{t / float(base['train_s']):.2f}" if base else "–"
        rs = f"{s / float(base['sample_s']):.2f}" if base else "–"
        lines.append(
            f"| {r['role'].upper()} | {r['task']} | {r['estimator']} | {float(r['c2st']):.3f} | "
            f"{t:.1f} | {rt} | {s:.1f} | {rs} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="role:task:estimator, ...")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--observations", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--samples", type=int, default=10_000, help="per side (sbibm: 10,000)")
    parser.add_argument("--classifier", default="sbibm", choices=["sbibm", "mlp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default="runs/estimators.csv")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    args.observations = [int(k) for k in args.observations.split(",")]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(path, args.budget)
    runs = [tuple(r.split(":")) for r in args.runs.split(",") if r]
    warm_up_torch()
    with threadpool_limits(1):
        for role, task, name in runs:
            if (role, task, name) in done:
                continue
            row = one_run(role, task, name, args)
            done[(role, task, name)] = row
            append_row(path, FIELDS, row)
            print(f"{role} {task} {name}: C2ST {row['c2st']:.3f}, train {row['train_s']:.1f} s, "
                  f"sample {row['sample_s']:.1f} s", flush=True)  # fmt: skip
    rows = [done[r] for r in runs if r in done]
    n = len(args.observations)
    text = (
        f"C2ST: mean over {n} reference observation(s), {args.samples:,} samples per side, "
        f"classifier {args.classifier!r}; {args.budget:,} simulations, seed {args.seed}.\n\n"
        + table(rows)
    )
    publish(text, args.markdown)


if __name__ == "__main__":
    main()
