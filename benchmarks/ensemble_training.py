"""Training the default posterior, an ensemble of three spline flows: sbitk against sbi.

sbitk's NPE default is the equal mixture of three neural spline flows trained together on the
same batches. It evaluates the three as one stacked network (``Flow.summed_loss``); the run also
trains them one member after another, as before, to show what the stacking saves. sbi's route
to the same ensemble is three ``SNPE`` trainings of its spline flow, joined by its
``EnsemblePosterior``. All three train on the same simulations, one after another, on one CPU
thread; torch's one-time imports are paid before anything is timed.

C2ST follows the sbibm protocol (10,000 samples a side, the published classifier, the mean over
the 10 reference observations) unless ``--observations`` or ``--samples`` narrow it, which the
table then says.

Usage::

    python benchmarks/ensemble_training.py --tasks two_moons
    python benchmarks/ensemble_training.py --tasks slcp --libraries sbitk --observations 1,2,3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from unittest import mock

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
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.models.flows import Flow

MEMBERS = 3


def score(task: str, sample, observations: list[int], n: int) -> float:
    """Mean C2ST of ``sample(x_o, n)`` against the reference over ``observations``."""
    from sbitk_simulators.observations import load_observation, load_reference_posterior

    scores = [
        c2st(load_reference_posterior(task, k)[:n], sample(load_observation(task, k), n),
             seed=0).accuracy
        for k in observations
    ]  # fmt: skip
    return sum(scores) / len(scores)


def train_sbitk(sim, theta, x, seed: int, stacked: bool):
    """The NPE default; ``stacked=False`` trains its members one after another."""
    npe = NPE(sim.prior, config=TrainConfig(progress=False, seed=seed))
    with contextlib.ExitStack() as stack:
        if not stacked:  # what the ensemble does for members that do not stack
            stack.enter_context(mock.patch.object(Flow, "summed_loss", _no_summed_loss))
        posterior, seconds = timed(lambda: npe.fit(theta, x))
    return lambda x_o, n: posterior.sample(n, x=x_o, seed=seed), seconds, npe.history.epochs


@staticmethod
def _no_summed_loss(flows, inputs, context=None):
    return None


def train_sbi(sim, theta, x, seed: int):
    """Three sbi spline flows, each trained by SNPE, joined by sbi's ensemble posterior."""
    from sbi.inference import SNPE
    from sbi.inference.posteriors.ensemble_posterior import EnsemblePosterior

    def one(k: int):
        torch.manual_seed(seed + k)
        inference = SNPE(
            prior=sbi_prior(sim.prior.spec()), density_estimator="nsf", show_progress_bars=False
        )
        inference.append_simulations(theta, x).train()
        return inference.build_posterior(), inference._summary["epochs_trained"][-1]

    parts, seconds = timed(lambda: [one(k) for k in range(MEMBERS)])
    posterior = EnsemblePosterior([p for p, _ in parts])

    def sample(x_o, n):
        torch.manual_seed(seed)
        return posterior.sample((n,), x=x_o.reshape(1, -1), show_progress_bars=False)

    return sample, seconds, "+".join(str(e) for _, e in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="two_moons")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--libraries", default="sbitk,sbi")
    parser.add_argument("--observations", default=",".join(map(str, SBIBM_OBSERVATIONS)))
    parser.add_argument("--samples", type=int, default=SBIBM_SAMPLES, help="per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    observations = [int(k) for k in args.observations.split(",")]
    libraries = args.libraries.split(",")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    warm_up_torch()
    rows = []
    with threadpool_limits(1):
        for task in args.tasks.split(","):
            sim, theta, x = bank(task, args.budget, args.seed)
            runs = []
            if "sbitk" in libraries:
                runs += [
                    ("sbitk, members stacked", *train_sbitk(sim, theta, x, args.seed, True)),
                    ("sbitk, one member after another",
                     *train_sbitk(sim, theta, x, args.seed, False)),
                ]  # fmt: skip
            if "sbi" in libraries:
                runs.append(("sbi, three SNPE trainings", *train_sbi(sim, theta, x, args.seed)))
            for name, sample, seconds, epochs in runs:
                accuracy = score(task, sample, observations, args.samples)
                rows.append((task, name, accuracy, seconds, epochs))
                print(f"{task}, {name}: C2ST {accuracy:.3f}, trained in {seconds:.1f} s "
                      f"({epochs} epochs)", flush=True)  # fmt: skip
    publish(table(rows, observations, args), args.markdown)


def table(rows: list[tuple], observations: list[int], args) -> str:
    """The rows, with each training time as a ratio to the stacked ensemble's of its task."""
    fastest = {task: s for task, name, _, s, _ in rows if name.endswith("stacked")}
    protocol = (
        "the sbibm protocol"
        if len(observations) == 10 and args.samples == SBIBM_SAMPLES
        else f"**observations {args.observations} only, {args.samples:,} samples a side**"
    )
    text = (
        f"{args.budget:,} simulations, seed {args.seed}, one CPU thread; C2ST: {protocol}. "
        "× = training time over the stacked ensemble's.\n\n"
        "| task | training | C2ST | training s | × | epochs |\n|---|---|---:|---:|---:|---|\n"
    )
    for task, name, accuracy, seconds, epochs in rows:
        ratio = f"{seconds / fastest[task]:.1f}" if task in fastest else "–"
        text += f"| {task} | {name} | {accuracy:.3f} | {seconds:.1f} | {ratio} | {epochs} |\n"
    return text


if __name__ == "__main__":
    main()
