"""Time sbitk's SBC, expected coverage and MMD test against sbi's, on the same NPE posterior.

One sbi NPE posterior (MAF) is trained on gaussian_linear (10 parameters, prior N(0, 0.1 I),
x = θ + N(0, 0.1 I)); both libraries then draw from that *same* posterior object, sbitk through
a batched sampler wrapper, so that the figures compare the diagnostics, not the estimators.

Rows (N = 1,000 simulations, L = 1,000 posterior draws each):

- ``sbc marginals, end to end``: sbi ``run_sbc`` (batched sampling, marginal ranks) followed by
  its KS uniformity check, against ``sbitk.diagnostics.sbc`` (ranks, ArviZ simultaneous ECDF
  bands, chi-square). Both include drawing the 10⁶ samples from the same flow.
- ``sbc marginals, each library's own NPE, end to end``: each library trains its own NPE with a
  neural spline flow (sbi ``NPE(density_estimator="nsf")``, sbitk ``NPE(prior, "nsf")``, each
  with its default training settings) on the same 2,000 simulations, then runs SBC as its user
  would: sbi ``run_sbc`` + KS on its posterior, sbitk ``sbc`` with the posterior's batched
  ``sample(n, x=x_batch)``. Training is not timed in the row (its time is printed on a separate
  line); the row counts drawing the 10⁶ samples, the ranks and the uniformity check.
- ``sbc marginals, given draws``: the diagnostic stage alone on precomputed draws (sbi's
  ``_run_sbc`` rank loop + KS). *cold* counts ArviZ's band computation, *warm* reuses the
  band cached for this (N, L) in the process (repeated SBC runs, e.g. across checkpoints).
- ``uniformity checks``: sbi's recommended ``check_sbc`` (KS, classifier tests of the ranks and
  of the data-averaged posterior) on given ranks, against sbitk's ``sbc`` on given draws.
- ``log q(theta|x) ranks``: ranks of the posterior log-density (sample-based expected
  coverage) on given draws: sbi's per-observation loop against
  ``sbitk.diagnostics.expected_coverage`` batched over observations; both evaluate the
  unnormalised flow density (``norm_posterior=False``).
- ``mmd, K observations``: sbi ``calc_misspecification_mmd`` called once per observation (its
  defaults: 1,000 shuffles, up to 1,000 simulations) against one ``sbitk.diagnostics.mmd_test``
  over all observations (1,000 reference + 1,000 held-out calibration simulations). The share
  of well-specified observations each flags at level 0.05 is printed too.

Each row is the median over ``--repeats`` runs; the libraries alternate within a repeat so that
load from other processes hits both alike. ``ratio`` is sbi's time over sbitk's (above 1:
sbitk is faster).

Usage: ``python benchmarks/diagnostics.py [--repeats 3] [--threads 1] [--observations 20]
[--only "own NPE"]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

DIM, N_TRAIN, N_SBC, L = 10, 2000, 1000, 1000


def gaussian_linear(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    theta = 0.1**0.5 * torch.randn(n, DIM, generator=g)
    x = theta + 0.1**0.5 * torch.randn(n, DIM, generator=g)
    return theta, x


def train_sbi_posterior(seed: int):
    from sbi.inference import NPE

    torch.manual_seed(seed)
    prior = torch.distributions.MultivariateNormal(torch.zeros(DIM), 0.1 * torch.eye(DIM))
    theta, x = gaussian_linear(N_TRAIN, torch.Generator().manual_seed(seed))
    inference = NPE(prior=prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=20, show_train_summary=False)
    return inference.build_posterior()


def train_sbi_nsf(seed: int):
    from sbi.inference import NPE

    torch.manual_seed(seed)
    prior = torch.distributions.MultivariateNormal(torch.zeros(DIM), 0.1 * torch.eye(DIM))
    theta, x = gaussian_linear(N_TRAIN, torch.Generator().manual_seed(seed))
    inference = NPE(prior=prior, density_estimator="nsf", show_progress_bars=False)
    inference.append_simulations(theta, x).train(show_train_summary=False)
    return inference.build_posterior()


def train_sbitk_nsf(seed: int):
    from sbitk import MultivariateNormal
    from sbitk.inference.npe import NPE
    from sbitk.inference.training import TrainConfig

    prior = MultivariateNormal(torch.zeros(DIM), 0.1 * torch.eye(DIM))
    theta, x = gaussian_linear(N_TRAIN, torch.Generator().manual_seed(seed))
    npe = NPE(prior, estimator="nsf", config=TrainConfig(seed=seed, progress=False))
    return npe.fit(theta, x)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--observations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from sbi.diagnostics import check_sbc, run_sbc
    from sbi.diagnostics.misspecification import calc_misspecification_mmd

    # sbi's rank loop without its sampling step, to time the diagnostic stage on its own.
    from sbi.diagnostics.sbc import _run_sbc, check_uniformity_frequentist

    from sbitk.diagnostics import expected_coverage, mmd_test, sbc
    from sbitk.diagnostics.sbc import _band

    t_train, posterior = timed(lambda: train_sbi_posterior(args.seed))
    g = torch.Generator().manual_seed(args.seed + 1)
    theta, x = gaussian_linear(N_SBC, g)

    def sampler(xb: torch.Tensor, n: int) -> torch.Tensor:
        return posterior.sample_batched((n,), x=xb, show_progress_bars=False)

    def log_q_batched(th: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return posterior.log_prob_batched(th, xb, norm_posterior=False)

    def log_q_single(th: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return posterior.log_prob(th, x=xi, norm_posterior=False)

    t_train_sbi_nsf, posterior_sbi_nsf = timed(lambda: train_sbi_nsf(args.seed))
    t_train_sbitk_nsf, posterior_sbitk_nsf = timed(lambda: train_sbitk_nsf(args.seed))

    def sbitk_nsf_sampler(xb: torch.Tensor, n: int) -> torch.Tensor:
        return posterior_sbitk_nsf.sample(n, x=xb)

    draws = sampler(x, L)
    sims_x = gaussian_linear(2000, g)[1]
    k = args.observations
    obs = gaussian_linear(k, g)[1]

    def sbi_mmd() -> np.ndarray:
        return np.array(
            [
                calc_misspecification_mmd(obs[i : i + 1], sims_x, mode="x_space")[0]
                for i in range(k)
            ]
        )

    def sbitk_sbc(posterior_or_draws) -> object:
        _band.cache_clear()  # count ArviZ's band computation every time
        return sbc(theta, x, posterior_or_draws, n_posterior_samples=L)

    ranks_sbi, dap_sbi = run_sbc(
        theta, x, posterior, num_posterior_samples=L, show_progress_bar=False
    )
    rows: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "sbc marginals, end to end": (
            lambda: check_uniformity_frequentist(
                run_sbc(theta, x, posterior, num_posterior_samples=L, show_progress_bar=False)[0],
                L,
            ),
            lambda: sbitk_sbc(sampler),
        ),
        "sbc marginals, own NPE (nsf), end to end": (
            lambda: check_uniformity_frequentist(
                run_sbc(
                    theta,
                    x,
                    posterior_sbi_nsf,
                    num_posterior_samples=L,
                    show_progress_bar=False,
                )[0],
                L,
            ),
            lambda: sbitk_sbc(sbitk_nsf_sampler),
        ),
        "sbc marginals, given draws (cold)": (
            lambda: check_uniformity_frequentist(
                _run_sbc(theta, x, draws, "marginals", show_progress_bar=False), L
            ),
            lambda: sbitk_sbc(draws),
        ),
        "sbc marginals, given draws (warm)": (
            lambda: check_uniformity_frequentist(
                _run_sbc(theta, x, draws, "marginals", show_progress_bar=False), L
            ),
            lambda: sbc(theta, x, draws, n_posterior_samples=L),
        ),
        "uniformity checks: check_sbc vs sbc": (
            lambda: check_sbc(ranks_sbi, theta, dap_sbi, num_posterior_samples=L),
            lambda: sbitk_sbc(draws),
        ),
        "log q(theta|x) ranks (coverage), draws": (
            lambda: _run_sbc(theta, x, draws, log_q_single, show_progress_bar=False),
            lambda: expected_coverage(theta, x, draws, log_q_batched, batch_size=100),
        ),
        f"mmd, {k} observations": (sbi_mmd, lambda: mmd_test(obs, sims_x)),
    }
    if args.only:
        rows = {name: fns for name, fns in rows.items() if args.only in name}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in rows}
    outputs: dict[str, tuple[object, object]] = {}
    for _ in range(args.repeats):
        for name, (sbi_fn, ours_fn) in rows.items():
            t_sbi, out_sbi = timed(sbi_fn)
            t_ours, out_ours = timed(ours_fn)
            times[name][0].append(t_sbi)
            times[name][1].append(t_ours)
            outputs[name] = (out_sbi, out_ours)

    print(
        f"gaussian_linear D={DIM}: sbi NPE (MAF) trained on {N_TRAIN} simulations in "
        f"{t_train:.1f} s; N={N_SBC}, L={L}; threads={args.threads}, repeats={args.repeats}"
    )
    print(
        f"own NPE (nsf, default training) on the same {N_TRAIN} simulations, not timed in the "
        f"table: sbi {t_train_sbi_nsf:.1f} s, sbitk {t_train_sbitk_nsf:.1f} s"
    )
    print(f"{'task':40s} {'sbi [s]':>9s} {'sbitk [s]':>10s} {'ratio':>7s}")
    for name, (t_sbi, t_ours) in times.items():
        a, b = statistics.median(t_sbi), statistics.median(t_ours)
        print(f"{name:40s} {a:9.3f} {b:10.3f} {a / b:7.1f}x")

    if f"mmd, {k} observations" in outputs:
        p_sbi, ours = outputs[f"mmd, {k} observations"]
        print(
            f"mmd false alarms on {k} well-specified observations at level 0.05: "
            f"sbi {np.mean(p_sbi < 0.05):.3f}, sbitk {ours.flagged_fraction:.3f}"
        )
    if "sbc marginals, end to end" in outputs:
        verdict = outputs["sbc marginals, end to end"][1].verdict
        print(f"sbitk SBC verdict on the shared NPE posterior: {verdict}")
    if "log q(theta|x) ranks (coverage), draws" in outputs:
        coverage = outputs["log q(theta|x) ranks (coverage), draws"][1].verdict
        print(f"sbitk HPD coverage verdict on the shared NPE posterior: {coverage}")
    if "sbc marginals, own NPE (nsf), end to end" in outputs:
        own = outputs["sbc marginals, own NPE (nsf), end to end"][1].verdict
        print(f"sbitk SBC verdict on its own NPE (nsf) posterior: {own}")


if __name__ == "__main__":
    main()
