"""Training and sampling the default posterior, an ensemble of three spline flows: sbitk
against sbi.

sbitk's NPE default is the equal mixture of three neural spline flows trained together on the
same batches. It evaluates the three as one stacked network (``Flow.summed_loss``), and each
member draws only the rows that picked it. The run also trains and samples it as before, the
members one after another and every member drawing every row, to show what each saves. sbi's
route to the same ensemble is three ``SNPE`` trainings of its spline flow, joined by its
``EnsemblePosterior``. All three train on the same simulations, one after another, on one CPU
thread; torch's one-time imports are paid before anything is timed. Sampling is timed apart
from C2ST: the draws for all observations, 10,000 each unless ``--samples`` says otherwise.

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
from sbitk.models.ensemble import EnsembleDistribution
from sbitk.models.flows import Flow

MEMBERS = 3


def score(task: str, sample, observations: list[int], n: int) -> tuple[float, float]:
    """Mean C2ST of ``sample(x_o, n)`` against the reference over ``observations``, and the
    seconds the sampling took."""
    from sbitk_simulators.observations import load_observation, load_reference_posterior

    scores, seconds = [], 0.0
    for k in observations:
        draws, spent = timed(lambda k=k: sample(load_observation(task, k), n))
        scores.append(c2st(load_reference_posterior(task, k)[:n], draws, seed=0).accuracy)
        seconds += spent
    return sum(scores) / len(scores), seconds


def train_sbitk(sim, theta, x, seed: int, stacked: bool):
    """The NPE default; ``stacked=False`` trains and samples it as before: its members one
    after another, and every member drawing every row."""
    npe = NPE(sim.prior, config=TrainConfig(progress=False, seed=seed))
    with contextlib.ExitStack() as stack:
        if not stacked:  # what the ensemble does for members that do not stack
            stack.enter_context(mock.patch.object(Flow, "summed_loss", _no_summed_loss))
        posterior, seconds = timed(lambda: npe.fit(theta, x))

    def sample(x_o, n):
        with contextlib.ExitStack() as stack:
            if not stacked:
                stack.enter_context(
                    mock.patch.object(EnsembleDistribution, "sample", _every_member_draws)
                )
            return posterior.sample(n, x=x_o, seed=seed)

    return sample, seconds, npe.history.epochs


@staticmethod
def _no_summed_loss(flows, inputs, context=None):
    return None


def _every_member_draws(self, shape=()):
    """The ensemble's sampling before this release: every member draws every row, and each
    row keeps one member's draw."""
    draws = torch.stack([p.sample(shape) for p in self.parts])  # (K, *shape, *batch, D)
    pick = torch.randint(len(self.parts), draws.shape[1:-1], device=draws.device)
    index = pick.unsqueeze(0).unsqueeze(-1).expand(1, *draws.shape[1:])
    return torch.gather(draws, 0, index)[0]


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
                    ("sbitk, as before",
                     *train_sbitk(sim, theta, x, args.seed, False)),
                ]  # fmt: skip
            if "sbi" in libraries:
                runs.append(("sbi, three SNPE trainings", *train_sbi(sim, theta, x, args.seed)))
            for name, sample, seconds, epochs in runs:
                accuracy, sampling = score(task, sample, observations, args.samples)
                rows.append((task, name, accuracy, seconds, epochs, sampling))
                print(f"{task}, {name}: C2ST {accuracy:.3f}, trained in {seconds:.1f} s "
                      f"({epochs} epochs), sampled in {sampling:.1f} s", flush=True)  # fmt: skip
    publish(table(rows, observations, args), args.markdown)


def table(rows: list[tuple], observations: list[int], args) -> str:
    """The rows, with each time as a ratio to the stacked ensemble's of its task."""
    fastest = {row[0]: row for row in rows if row[1].endswith("stacked")}
    protocol = (
        "the sbibm protocol"
        if len(observations) == 10 and args.samples == SBIBM_SAMPLES
        else f"**observations {args.observations} only, {args.samples:,} samples a side**"
    )
    text = (
        f"{args.budget:,} simulations, seed {args.seed}, one CPU thread; C2ST: {protocol}; "
        f"sampling: {args.samples:,} draws for each of the {len(observations)} observations. "
        "× = a time over the stacked ensemble's.\n\n"
        "| task | ensemble | C2ST | training s | × | epochs | sampling s | × |\n"
        "|---|---|---:|---:|---:|---|---:|---:|\n"
    )
    for task, name, accuracy, seconds, epochs, sampling in rows:
        base = fastest.get(task)
        train = f"{seconds / base[3]:.1f}" if base else "–"
        draw = f"{sampling / base[5]:.1f}" if base else "–"
        text += (
            f"| {task} | {name} | {accuracy:.3f} | {seconds:.1f} | {train} | {epochs} "
            f"| {sampling:.1f} | {draw} |\n"
        )
    return text


if __name__ == "__main__":
    main()
