"""Flow matching and diffusion NPE of sbitk against sbi's FMPE and NPSE, on the same simulations.

For every task, each library trains its continuous-time posterior on the same 10,000 (θ, x)
pairs: sbitk ``NPE(prior, "flow_matching")`` against sbi ``FMPE``, and sbitk
``NPE(prior, "diffusion")`` against sbi ``NPSE``, each with the defaults its library ships (sbi's
sampling too: FMPE by its probability-flow ODE, NPSE by its reverse SDE, both rejecting draws
outside the prior's support). The network then serves every observation (amortized): for each
sbibm reference observation it draws 10,000 posterior samples, timed, and scores them against
the reference posterior by C2ST (10,000 samples per side, the classifier of the sbibm paper).
The reference samples are those sbitk ships (two_moons, gaussian_linear,
gaussian_linear_uniform, slcp), else the sbibm package's (gaussian_mixture, sir, ...).

The table gives, per task and method, the mean C2ST of each library over the observations, the
training time, the time to draw the posterior samples (summed over the observations) and both
times as ratios sbi / sbitk. Everything runs on one CPU thread (torch and BLAS), or, with
``--device cuda``, both libraries train and sample on that GPU (the CPU work on one thread).

A GPU machine may lack the time or the scikit-learn set-up for the C2ST classifier:
``--classifier none --draws DIR`` then trains, samples and times without scoring, and saves every
draw in DIR; ``--rescore --draws DIR`` scores those rows later, on any machine, with the
published classifier.

Each finished (task, library, method) row is appended to a CSV file, and a rerun skips the rows
already there, so an interrupted run resumes; the simulations come from the seed, so a resumed
run trains on the same bank. ``--sbi-observations`` samples and scores sbi on fewer observations
than sbitk when its sampling is too slow for all of them; the ratios then compare the mean time
per observation.

Usage::

    python benchmarks/continuous_vs_sbi.py --tasks two_moons --markdown runs/continuous.md
    python benchmarks/continuous_vs_sbi.py --tasks slcp --methods diffusion --max-epochs 300
    python benchmarks/continuous_vs_sbi.py --device cuda --classifier none --draws runs/gpu \
        --csv runs/gpu.csv
    python benchmarks/continuous_vs_sbi.py --rescore --draws runs/gpu --csv runs/gpu.csv
    python benchmarks/continuous_vs_sbi.py --methods flow_matching --csv runs/fast.csv \
        --sbitk-options '{"hidden_features": [96, 96, 96, 96]}' \
        --sbitk-train '{"schedule": "anneal", "learning_rate": 0.008, "lr_patience": 10}'

``--sbitk-options`` and ``--sbitk-train`` (JSON) give sbitk's estimator options and further
``TrainConfig`` fields instead of its defaults; a row records them, and a rerun with other
settings measures both libraries again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from _protocol import append_row, bank, publish, read_rows, sbi_prior, sbibm_reference
from threadpoolctl import threadpool_limits

import sbitk
from sbitk.diagnostics.c2st import c2st
from sbitk.errors import ObservationError
from sbitk.inference.npe import NPE
from sbitk.inference.training import config_with

#: sbitk estimator name → the sbi trainer it is compared with.
PEERS = {"flow_matching": "FMPE", "diffusion": "NPSE"}
FIELDS = [
    "task", "library", "method", "budget", "max_epochs", "c2st", "train_s", "sample_s",
    "observations", "epochs", "each", "settings", "device",
]  # fmt: skip


def train_sbitk(sim, theta, x, method: str, args):
    given = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    train_options = json.loads(args.sbitk_train)
    config = config_with(train_options, progress=False, seed=args.seed, device=args.device,
                         **given)  # fmt: skip
    npe = NPE(sim.prior, method, config=config, **json.loads(args.sbitk_options))
    posterior = npe.fit(theta, x)
    if npe.history.settled:  # what the trained model chose for itself (flow matching's steps)
        print(f"sbitk {method}: settled after training {npe.history.settled}", flush=True)

    def sample(x_o: torch.Tensor, k: int) -> torch.Tensor:
        return posterior.sample(args.samples, x=x_o.reshape(-1), seed=args.seed + k)

    return sample, npe.history.epochs


def train_sbi(sim, theta, x, method: str, args):
    from sbi.inference import FMPE, NPSE

    trainer = {"FMPE": FMPE, "NPSE": NPSE}[PEERS[method]]
    torch.manual_seed(args.seed)
    prior = sbi_prior(sim.prior.spec(), args.device)
    inference = trainer(prior=prior, device=args.device, show_progress_bars=False)
    inference.append_simulations(theta, x)
    if args.max_epochs:
        inference.train(max_num_epochs=args.max_epochs)
    else:
        inference.train()
    posterior = inference.build_posterior()

    def sample(x_o: torch.Tensor, k: int) -> torch.Tensor:
        torch.manual_seed(args.seed + k)
        draws = posterior.sample((args.samples,), x=x_o.reshape(1, -1), show_progress_bars=False)
        return draws.reshape(args.samples, -1).cpu()

    return sample, inference._summary["epochs_trained"][-1]


def one_run(task: str, library: str, method: str, observations: list[int], args) -> dict:
    """Train once on the task's bank, then sample and score every observation."""
    from sbitk_simulators.observations import load_observation

    sim, theta, x = bank(task, args.budget, args.seed)
    train = train_sbitk if library == "sbitk" else train_sbi
    start = time.perf_counter()
    sample, epochs = train(sim, theta, x, method, args)
    train_s = time.perf_counter() - start
    print(f"    {task} {library} {method}: trained in {train_s:.1f} s ({epochs} epochs)",
          flush=True)  # fmt: skip
    every, sample_s = {}, 0.0
    for k in observations:
        x_o = load_observation(task, k)
        start = time.perf_counter()
        every[k] = sample(x_o, k)
        elapsed = time.perf_counter() - start
        sample_s += elapsed
        print(f"    {task} {library} {method} observation {k}: sampled in {elapsed:.1f} s",
              flush=True)  # fmt: skip
    row = {
        "task": task, "library": library, "method": method, "budget": args.budget,
        "max_epochs": args.max_epochs, "c2st": math.nan, "train_s": train_s,
        "sample_s": sample_s, "observations": " ".join(map(str, observations)),
        "epochs": epochs, "each": "", "settings": settings(args), "device": args.device,
    }  # fmt: skip
    if args.draws:
        torch.save(every, draws_file(args.draws, row))
    return row if args.classifier == "none" else scored(row, every, args.classifier)


def scored(row: dict, every: dict[int, torch.Tensor], classifier: str) -> dict:
    """``row`` with the C2ST of each observation's draws against the reference posterior."""
    scores = []
    for k, draws in every.items():
        reference = reference_samples(row["task"], k)[: draws.shape[0]]
        scores.append(c2st(reference, draws, seed=0, classifier=classifier).accuracy)
        print(f"    {row['task']} {row['library']} {row['method']} observation {k}: "
              f"C2ST {scores[-1]:.3f}", flush=True)  # fmt: skip
    each = " ".join(f"{s:.3f}" for s in scores)
    return {**row, "c2st": sum(scores) / len(scores), "each": each}


def draws_file(folder: str, row: dict) -> Path:
    """The file of a row's draws: named by everything that tells rows apart."""
    given = hashlib.sha256(str(row["settings"]).encode()).hexdigest()[:8]
    keys = ("task", "library", "method", "budget", "max_epochs", "device")
    path = Path(folder) / ("-".join(str(row[k]) for k in keys) + f"-{given}.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def rescore(path: Path, args) -> str | None:
    """Score the rows of ``path`` that were written without a C2ST, from their saved draws,
    rewriting the file after each; return the device the rows were measured on, if one."""
    rows = read_rows(path)
    for i, row in enumerate(rows):
        file = draws_file(args.draws, row)
        if not math.isnan(float(row["c2st"])):
            continue
        if not file.is_file():
            print(f"no draws for {row['task']} {row['library']} {row['method']}: {file}")
            continue
        rows[i] = scored(row, torch.load(file), args.classifier)
        partial = path.with_suffix(".partial")
        with open(partial, "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
    devices = {row.get("device") or "cpu" for row in rows}
    return devices.pop() if len(devices) == 1 else None


def reference_samples(task: str, k: int) -> torch.Tensor:
    """The reference posterior sbitk ships for ``task``, else the sbibm package's (the tasks
    outside the comparison with sbi: gaussian_mixture, sir, ...)."""
    from sbitk_simulators.observations import load_reference_posterior

    try:
        return load_reference_posterior(task, k)
    except ObservationError:
        return sbibm_reference(task, k)


def settings(args) -> str:
    """sbitk's settings other than its defaults, as one canonical JSON text ("" for none)."""
    given = {"options": json.loads(args.sbitk_options), "train": json.loads(args.sbitk_train)}
    return "" if given == {"options": {}, "train": {}} else json.dumps(given, sort_keys=True)


def done_rows(
    path: Path, budget: int, max_epochs: int, given: str, device: str
) -> dict[tuple, dict]:
    return {
        (r["task"], r["library"], r["method"]): r
        for r in read_rows(path)
        if int(r["budget"]) == budget
        and int(r["max_epochs"]) == max_epochs
        and r.get("settings", "") == given
        and (r.get("device") or "cpu") == device
    }


def table(done: dict[tuple, dict], tasks: list[str], methods: list[str], n: int) -> str:
    """Markdown: one row per task and method, sbitk and sbi side by side, ratios sbi / sbitk
    (sampling: of the mean time per observation, should the observation counts differ). A
    figure over other than ``n`` observations is marked with its count."""
    head = (
        "| task | method (sbitk / sbi) | C2ST sbitk | C2ST sbi | training s sbitk | "
        "training s sbi | × | sampling s sbitk | sampling s sbi | × |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for task in tasks:
        for method in methods:
            ours, theirs = done.get((task, "sbitk", method)), done.get((task, "sbi", method))
            if ours is None and theirs is None:
                continue
            cells = [task, f"{method} / {PEERS[method]}"]
            for key in ("c2st",):
                cells += [_cell(ours, key, 3, n), _cell(theirs, key, 3, n)]
            for key in ("train_s", "sample_s"):
                cells += [_cell(ours, key, 1, n), _cell(theirs, key, 1, n)]
                cells.append(_ratio(ours, theirs, key))
            lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _count(row: dict) -> int:
    return len(str(row["observations"]).split())


def _cell(row: dict | None, key: str, digits: int, n: int) -> str:
    if row is None:
        return "–"
    if math.isnan(float(row[key])):
        return "not scored"
    text = f"{float(row[key]):.{digits}f}"
    if key != "train_s" and _count(row) != n:
        text += f" ({_count(row)} obs.)"
    return text


def _ratio(ours: dict | None, theirs: dict | None, key: str) -> str:
    if ours is None or theirs is None:
        return "–"
    a, b = float(ours[key]), float(theirs[key])
    if key == "sample_s":
        a, b = a / _count(ours), b / _count(theirs)
    return f"{b / a:.1f}"


def where(device: str) -> str:
    """The machine the figures were measured on, in words."""
    if device == "cpu":
        return "one CPU thread"
    if not torch.cuda.is_available():  # rows scored here, measured on another machine
        return "both libraries on one CUDA GPU"
    return f"both libraries on one {torch.cuda.get_device_name(device)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="two_moons,gaussian_linear,slcp")
    parser.add_argument("--methods", default="flow_matching,diffusion")
    parser.add_argument("--libraries", default="sbitk,sbi")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--observations", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument(
        "--sbi-observations",
        help="observations for sbi's sampling and C2ST (default: --observations)",
    )
    parser.add_argument("--samples", type=int, default=10_000, help="per side (sbibm: 10,000)")
    parser.add_argument(
        "--classifier",
        default="sbibm",
        choices=["sbibm", "mlp", "none"],
        help="none: train, sample and time only (score later with --rescore)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: both libraries there")
    parser.add_argument(
        "--draws", help="save every draw in this folder, one file per row of the CSV"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="only score the saved draws of unscored rows"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=0,
        help="the same epoch cap for both libraries (0: each library's default; sbi has none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sbitk-options", default="{}", help="JSON: sbitk estimator options")
    parser.add_argument("--sbitk-train", default="{}", help="JSON: further TrainConfig fields")
    parser.add_argument("--csv", default="runs/continuous_vs_sbi.csv")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    observations = [int(k) for k in args.observations.split(",")]
    sbi_observations = (
        [int(k) for k in args.sbi_observations.split(",")]
        if args.sbi_observations
        else observations
    )
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    libraries = [lib for lib in args.libraries.split(",") if lib]
    unknown = set(methods) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; expected some of {list(PEERS)}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.classifier == "none" and not args.draws:
        raise SystemExit("--classifier none needs --draws: the draws to score later")
    if args.rescore:
        if not args.draws or args.classifier == "none":
            raise SystemExit("--rescore needs --draws and a classifier")
        args.device = rescore(path, args) or args.device  # the table of the rows measured
        libraries = []  # score only: the table of what the file holds
    done = done_rows(path, args.budget, args.max_epochs, settings(args), args.device)
    # torch imports its compiler stack when the first optimizer is built: a once-per-process
    # cost that whichever library is timed first would otherwise pay for both.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    with threadpool_limits(1):
        for task in tasks:
            for method in methods:
                for library in libraries:
                    if (task, library, method) in done:
                        continue
                    obs = observations if library == "sbitk" else sbi_observations
                    row = one_run(task, library, method, obs, args)
                    done[(task, library, method)] = row
                    append_row(path, FIELDS, row)
                    print(f"{task} {library} {method}: C2ST {row['c2st']:.3f}, train "
                          f"{row['train_s']:.1f} s, sample {row['sample_s']:.1f} s",
                          flush=True)  # fmt: skip
    import sbi

    cap = (
        f"both capped at {args.max_epochs} epochs"
        if args.max_epochs
        else "each library's own stopping rule (sbitk: at most 500 epochs; sbi: no cap)"
    )
    if settings(args):
        cap += f"; sbitk's settings other than its defaults: {settings(args)}"
    text = (
        f"C2ST: mean over the reference observations ({len(observations)} unless marked), "
        f"{args.samples:,} samples per side, classifier {args.classifier!r}; "
        f"{args.budget:,} simulations, seed {args.seed}, {where(args.device)}; training: {cap}. "
        f"sbitk {sbitk.__version__}, sbi {sbi.__version__} with its defaults: FMPE and NPSE with "
        "the 'mlp' vector field (5 layers of 100, sinusoidal time embedding), NPSE's 've' SDE; "
        "batch 200, learning rate 5e-4, convergence after 20 epochs without improvement; "
        "FMPE sampled by its ODE, NPSE by 500 Euler–Maruyama steps of the reverse SDE, both "
        "rejecting draws outside the prior. × = sbi / sbitk (sampling: per observation).\n\n"
        + table(done, tasks, methods, len(observations))
    )
    publish(text, args.markdown)


if __name__ == "__main__":
    main()
