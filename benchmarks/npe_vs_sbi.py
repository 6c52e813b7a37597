"""NPE and NLE of sbitk against sbi, on the same simulations in the same run.

For every task and simulation budget, both libraries train a neural spline flow on the same
(θ, x) pairs; the table reports the C2ST accuracy of each posterior against the sbibm reference
posterior (0.5 is perfect) and the wall-clock training time. With ``--nle`` both libraries also
train NLE and the table reports the time to draw the posterior samples by MCMC (each library's
defaults: sbitk's vectorized slice sampler, sbi's ``slice_np_vectorized``).

C2ST follows the sbibm protocol by default: 10,000 samples per side, the published classifier,
the mean over the 10 reference observations (``--observations``, ``--c2st-samples`` and
``--classifier mlp`` make it faster and flatter; the tables then say so).

Both run on one CPU thread (torch and BLAS), so that neither gains from the other's idle cores.
Torch's one-time imports are done before either is timed.

Usage::

    python benchmarks/npe_vs_sbi.py --tasks two_moons --budgets 10000
    python benchmarks/npe_vs_sbi.py --budgets 10000,100000 --nle --markdown table.md
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from _protocol import (
    SBIBM_OBSERVATIONS,
    SBIBM_SAMPLES,
    bank,
    publish,
    sbi_prior,
    timed,
    warm_up_torch,
)
from threadpoolctl import threadpool_limits

from sbitk.diagnostics.c2st import c2st
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.posteriors.mcmc import MCMCConfig

#: The C2ST classifier (``--classifier``): "sbibm" (the published one) or "mlp" (sbi's variant).
CLASSIFIER = ["sbibm"]


def score(task: str, k: int, samples: torch.Tensor, n: int) -> float:
    from sbitk_simulators.observations import load_reference_posterior

    reference = load_reference_posterior(task, k)[:n]
    return c2st(reference, samples[:n], seed=0, classifier=CLASSIFIER[0]).accuracy


def run_npe(task: str, budget: int, observations: list[int], n_c2st: int, seed: int) -> dict:
    from sbi.inference import SNPE
    from sbitk_simulators.observations import load_observation

    sim, theta, x = bank(task, budget, seed)
    ours, t_ours = timed(
        lambda: NPE(sim.prior, "nsf", config=TrainConfig(progress=False, seed=seed)).fit(theta, x)
    )
    torch.manual_seed(seed)
    inference = SNPE(
        prior=sbi_prior(sim.prior.spec()), density_estimator="nsf", show_progress_bars=False
    )
    _, t_sbi = timed(lambda: inference.append_simulations(theta, x).train())
    theirs = inference.build_posterior()
    c_ours, c_sbi = [], []
    for k in observations:
        x_o = load_observation(task, k)
        c_ours.append(score(task, k, ours.sample(n_c2st, x=x_o, seed=seed), n_c2st))
        torch.manual_seed(seed)
        s = theirs.sample((n_c2st,), x=x_o, show_progress_bars=False)
        c_sbi.append(score(task, k, s, n_c2st))
    return {
        "task": task, "budget": budget, "c2st_sbitk": sum(c_ours) / len(c_ours),
        "c2st_sbi": sum(c_sbi) / len(c_sbi), "time_sbitk": t_ours, "time_sbi": t_sbi,
        "each_sbitk": c_ours, "each_sbi": c_sbi,
        "epochs_sbitk": ours.history.epochs,
        "epochs_sbi": inference._summary["epochs_trained"][-1],
    }  # fmt: skip


def run_nle(task: str, budget: int, k: int, n_samples: int, n_c2st: int, seed: int) -> dict:
    from sbi.inference import SNLE
    from sbitk_simulators.observations import load_observation

    sim, theta, x = bank(task, budget, seed)
    x_o = load_observation(task, k)
    config = TrainConfig(progress=False, seed=seed)
    ours, t_train_ours = timed(
        lambda: NLE(sim.prior, "nsf", config=config, mcmc=MCMCConfig(progress=False)).fit(theta, x)
    )
    s_ours, t_ours = timed(lambda: ours.sample(n_samples, x=x_o, seed=seed))
    torch.manual_seed(seed)
    inference = SNLE(
        prior=sbi_prior(sim.prior.spec()), density_estimator="nsf", show_progress_bars=False
    )
    _, t_train_sbi = timed(lambda: inference.append_simulations(theta, x).train())
    theirs = inference.build_posterior()
    torch.manual_seed(seed)
    s_sbi, t_sbi = timed(lambda: theirs.sample((n_samples,), x=x_o, show_progress_bars=False))
    return {
        "task": task, "budget": budget, "samples": n_samples,
        "c2st_sbitk": score(task, k, s_ours, n_c2st), "c2st_sbi": score(task, k, s_sbi, n_c2st),
        "sample_time_sbitk": t_ours, "sample_time_sbi": t_sbi,
        "train_time_sbitk": t_train_ours, "train_time_sbi": t_train_sbi,
        "rhat_max_sbitk": float(ours.last_result.rhat.max()),
    }  # fmt: skip


def npe_table(rows: list[dict]) -> str:
    head = (
        "| task | simulations | C2ST sbitk | C2ST sbi | train s sbitk | train s sbi | speed-up |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['task']} | {r['budget']:,} | {r['c2st_sbitk']:.3f} | {r['c2st_sbi']:.3f} | "
        f"{r['time_sbitk']:.1f} | {r['time_sbi']:.1f} | {r['time_sbi'] / r['time_sbitk']:.1f}× |\n"
        for r in rows
    )
    return head + body


def nle_table(rows: list[dict]) -> str:
    head = (
        "| task | simulations | samples | C2ST sbitk | C2ST sbi | sampling s sbitk | "
        "sampling s sbi | speed-up |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['task']} | {r['budget']:,} | {r['samples']:,} | {r['c2st_sbitk']:.3f} | "
        f"{r['c2st_sbi']:.3f} | {r['sample_time_sbitk']:.1f} | {r['sample_time_sbi']:.1f} | "
        f"{r['sample_time_sbi'] / r['sample_time_sbitk']:.1f}× |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="gaussian_linear,two_moons,slcp")
    parser.add_argument("--budgets", default="10000,100000")
    parser.add_argument(
        "--observations", default=",".join(map(str, SBIBM_OBSERVATIONS)),
        help="comma-separated, 1 to 10 [default: all 10, as sbibm]",
    )  # fmt: skip
    parser.add_argument(
        "--c2st-samples", type=int, default=SBIBM_SAMPLES,
        help="samples per side in each C2ST [default: 10,000, as sbibm]",
    )  # fmt: skip
    parser.add_argument("--classifier", choices=("sbibm", "mlp"), default="sbibm")
    parser.add_argument("--nle", action="store_true", help="also compare NLE sampling time")
    parser.add_argument("--nle-tasks", default="two_moons")
    parser.add_argument("--nle-samples", type=int, default=10_000)
    parser.add_argument("--skip-npe", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    CLASSIFIER[0] = args.classifier
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    tasks = [t for t in args.tasks.split(",") if t]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    observations = [int(k) for k in args.observations.split(",")]
    out = []
    # A once-per-process cost both libraries pay; without this, whichever is timed first (sbitk)
    # would pay it for both.
    warm_up_torch()
    with threadpool_limits(1):
        if not args.skip_npe:
            rows = []
            for task in tasks:
                for budget in budgets:
                    r = run_npe(task, budget, observations, args.c2st_samples, args.seed)
                    rows.append(r)
                    print(
                        f"NPE {task:16s} n={budget:>7,}  C2ST sbitk {r['c2st_sbitk']:.3f}  "
                        f"sbi {r['c2st_sbi']:.3f}  |  train sbitk {r['time_sbitk']:7.1f} s "
                        f"({r['epochs_sbitk']} epochs)  sbi {r['time_sbi']:7.1f} s "
                        f"({r['epochs_sbi']} epochs)  "
                        f"speed-up {r['time_sbi'] / r['time_sbitk']:.1f}×",
                        flush=True,
                    )
                    for k, a, b in zip(observations, r["each_sbitk"], r["each_sbi"], strict=True):
                        print(f"    observation {k:2d}: C2ST sbitk {a:.3f}  sbi {b:.3f}")
            out.append("### NPE: training time and C2ST\n\n" + npe_table(rows))
        if args.nle:
            rows = []
            for task in [t for t in args.nle_tasks.split(",") if t]:
                for budget in budgets:
                    r = run_nle(
                        task,
                        budget,
                        observations[0],
                        args.nle_samples,
                        args.c2st_samples,
                        args.seed,
                    )
                    rows.append(r)
                    print(
                        f"NLE {task:16s} n={budget:>7,}  C2ST sbitk {r['c2st_sbitk']:.3f}  "
                        f"sbi {r['c2st_sbi']:.3f}  |  {r['samples']:,} samples: sbitk "
                        f"{r['sample_time_sbitk']:7.1f} s  sbi {r['sample_time_sbi']:7.1f} s  "
                        f"speed-up {r['sample_time_sbi'] / r['sample_time_sbitk']:.1f}×  "
                        f"(train sbitk {r['train_time_sbitk']:.1f} s, sbi "
                        f"{r['train_time_sbi']:.1f} s)",
                        flush=True,
                    )
            out.append("### NLE: posterior sampling time and C2ST\n\n" + nle_table(rows))
    protocol = (
        f"C2ST: NPE the mean over observation(s) {args.observations}, NLE observation "
        f"{observations[0]}; {args.c2st_samples:,} samples per side, classifier "
        f"'{args.classifier}'; seed {args.seed}."
    )
    publish("\n".join([*out, protocol, ""]), args.markdown)


if __name__ == "__main__":
    main()
