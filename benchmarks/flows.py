"""Time NSF and MAF training steps and sampling in sbitk, zuko and nflows, side by side.

Same depth, width and bins for all three: ``transforms`` steps, conditioners with two hidden
layers of ``hidden`` units, 8 spline bins on [-5, 5] with linear tails. NSF is the coupling
version in all three (zuko ``NSF(passes=2)``, nflows'
``PiecewiseRationalQuadraticCouplingTransform``); MAF is the affine MADE flow with reversed
orders between steps. Conditioners concatenate the context to their inputs in all three.

A training step is forward + backward + AdamW step on a batch of (x, c) pairs; sampling draws
10,000 samples for one context. Frameworks are timed in turn within each repeat, so that load
from other processes hits them alike; the figure is the median over repeats, and the ratio is
sbitk's time over the fastest peer's (below 1: sbitk is faster).

Usage: ``python benchmarks/flows.py [--repeats 7] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

FEATURES, CONTEXT, TRANSFORMS, HIDDEN, BINS, BOUND = 8, 8, 5, 64, 8, 5.0


class CatMLP(nn.Module):
    """nflows conditioner: the same MLP as sbitk's and zuko's, on ``cat(x, context)``."""

    def __init__(self, in_features: int, out_features: int, context: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features + context, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, out_features),
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, context], -1))


def sbitk_flows() -> dict[str, nn.Module]:
    from sbitk.models.flows import MAF, NSF

    opts = dict(transforms=TRANSFORMS, hidden_features=(HIDDEN, HIDDEN))
    return {
        "NSF": NSF(FEATURES, CONTEXT, bins=BINS, bound=BOUND, permutation="reverse", **opts),
        "MAF": MAF(FEATURES, CONTEXT, permutation="reverse", **opts),
    }


def zuko_flows() -> dict[str, nn.Module]:
    import zuko

    opts = dict(transforms=TRANSFORMS, hidden_features=(HIDDEN, HIDDEN))
    return {
        "NSF": zuko.flows.NSF(FEATURES, CONTEXT, bins=BINS, passes=2, **opts),
        "MAF": zuko.flows.MAF(FEATURES, CONTEXT, **opts),
    }


def nflows_flows() -> dict[str, nn.Module]:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        PiecewiseRationalQuadraticCouplingTransform,
        ReversePermutation,
    )

    def coupling(i: int) -> nn.Module:
        mask = (torch.arange(FEATURES) % 2 == i % 2).int()
        return PiecewiseRationalQuadraticCouplingTransform(
            mask,
            lambda a, b: CatMLP(a, b, CONTEXT),
            num_bins=BINS,
            tails="linear",
            tail_bound=BOUND,
        )

    def maf(i: int) -> nn.Module:
        return MaskedAffineAutoregressiveTransform(
            FEATURES, HIDDEN, context_features=CONTEXT, num_blocks=1, use_residual_blocks=False
        )

    def chain(step: Callable[[int], nn.Module]) -> list[nn.Module]:
        out: list[nn.Module] = []
        for i in range(TRANSFORMS):
            if i:
                out.append(ReversePermutation(FEATURES))
            out.append(step(i))
        return out

    base = StandardNormal([FEATURES])
    return {
        "NSF": Flow(CompositeTransform(chain(coupling)), base),
        "MAF": Flow(CompositeTransform(chain(maf)), base),
    }


def log_prob_fn(lib: str, flow: nn.Module) -> Callable:
    if lib == "nflows":
        return lambda x, c: flow.log_prob(x, context=c)
    return lambda x, c: flow(c).log_prob(x)


def sample_fn(lib: str, flow: nn.Module) -> Callable:
    if lib == "nflows":
        return lambda c, n: flow.sample(n, context=c[None])
    return lambda c, n: flow(c).sample((n,))


def median_time(fn: Callable[[], object], min_time: float = 0.2) -> float:
    """Seconds per call, averaged over enough calls to last ``min_time``."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    libs = {"sbitk": sbitk_flows(), "zuko": zuko_flows(), "nflows": nflows_flows()}
    for lib, flows in libs.items():
        for name, flow in flows.items():
            n = sum(p.numel() for p in flow.parameters())
            print(f"# {lib:6s} {name}: {n} parameters")

    tasks: dict[tuple[str, str], dict[str, Callable]] = {}
    for name in ("NSF", "MAF"):
        for batch in args.batches:
            x, c = torch.randn(batch, FEATURES), torch.randn(batch, CONTEXT)
            row = {}
            for lib, flows in libs.items():
                flow, lp = flows[name], log_prob_fn(lib, flows[name])
                opt = torch.optim.AdamW(flow.parameters(), lr=1e-4)

                def step(flow=flow, lp=lp, opt=opt, x=x, c=c) -> None:
                    loss = -lp(x, c).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

                row[lib] = step
            tasks[(name, f"train step, batch {batch}")] = row
        c = torch.randn(CONTEXT)
        row = {}
        for lib, flows in libs.items():
            sample = sample_fn(lib, flows[name])

            def draw(sample=sample, c=c) -> None:
                with torch.no_grad():
                    sample(c, 10_000)

            row[lib] = draw
        tasks[(name, "10,000 samples")] = row

    print(f"# torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    header = f"{'flow':4s} {'task':24s} " + " ".join(f"{lib:>10s}" for lib in libs)
    print(header + f" {'sbitk/best peer':>16s}")
    for (name, task), row in tasks.items():
        times: dict[str, list[float]] = {lib: [] for lib in row}
        for _ in range(args.repeats):
            for lib, fn in row.items():
                times[lib].append(median_time(fn))
        med = {lib: statistics.median(t) for lib, t in times.items()}
        best_peer = min(v for lib, v in med.items() if lib != "sbitk")
        cells = " ".join(f"{1e3 * med[lib]:8.2f}ms" for lib in row)
        print(f"{name:4s} {task:24s} {cells} {med['sbitk'] / best_peer:16.2f}", flush=True)


if __name__ == "__main__":
    main()
