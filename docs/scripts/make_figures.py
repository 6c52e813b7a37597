"""Pictures of good and bad calibration for docs/diagnostics.md, made by sbitk's own code.

A toy problem with a posterior in closed form: θ ~ N(0, 1), x = θ + N(0, 1), so that
p(θ | x) = N(x / 2, 1 / 2). Four posteriors are checked against it: the exact one, an
overconfident one (its scale halved), an underconfident one (its scale doubled) and a biased
one (its mean shifted by one posterior standard deviation). Each is run through
``sbitk.diagnostics`` (SBC, HPD coverage, TARP) and drawn by ``sbitk.diagnostics.plots``; each
figure is written as ``{check}_{posterior}.png`` under ``docs/figures/`` (or the folder given).

    python docs/scripts/make_figures.py [OUTPUT_DIR]

The site build runs it through ``docs/scripts/hooks.py``; the seeds are fixed, so the pictures
are the same at every build.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

from sbitk.diagnostics import expected_coverage, sbc, tarp
from sbitk.diagnostics.plots import plot_coverage, plot_sbc_ecdf, plot_tarp

#: name -> (scale factor of the posterior's sd, shift of its mean in posterior sds)
POSTERIORS = {
    "exact": (1.0, 0.0),
    "overconfident": (0.5, 0.0),
    "underconfident": (2.0, 0.0),
    "biased": (1.0, 1.0),
}
N_OBSERVATIONS = 300
N_DRAWS = 200
SD = 0.5**0.5  # the exact posterior's standard deviation


def toy_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """θ (N, 1) from the prior and x (N, 1) simulated from it."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(N_OBSERVATIONS, 1, generator=g)
    return theta, theta + torch.randn(N_OBSERVATIONS, 1, generator=g)


def gaussian_posterior(scale: float, shift: float, seed: int = 1):
    """A batched sampler and log-density of N(x / 2 + shift · sd, (scale · sd)²)."""
    g = torch.Generator().manual_seed(seed)

    def sample(x: torch.Tensor, n: int) -> torch.Tensor:  # (B, 1) -> (n, B, 1)
        noise = torch.randn(n, *x.shape, generator=g)
        return x / 2 + shift * SD + scale * SD * noise

    def log_prob(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (n, B, 1) -> (n, B)
        return -(((theta - x / 2 - shift * SD) / (scale * SD)) ** 2).sum(-1) / 2

    return sample, log_prob


def figures() -> dict[str, bytes]:
    """PNG bytes by file name ``{check}_{posterior}.png``: SBC, HPD coverage and TARP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theta, x = toy_problem()
    pngs = {}
    for name, (scale, shift) in POSTERIORS.items():
        sample, log_prob = gaussian_posterior(scale, shift)
        options = {"n_posterior_samples": N_DRAWS, "progress": False}
        checks = {
            "sbc": plot_sbc_ecdf(sbc(theta, x, sample, **options)),
            "coverage": plot_coverage(expected_coverage(theta, x, sample, log_prob, **options)),
            "tarp": plot_tarp(tarp(theta, x, sample, **options)),
        }
        for check, fig in checks.items():
            fig.set_size_inches(3.2, 3.0)
            fig.tight_layout()
            pngs[f"{check}_{name}.png"] = _png(fig).getvalue()
            plt.close(fig)
    return pngs


def _png(fig, dpi: int = 80) -> io.BytesIO:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    buffer.seek(0)
    return buffer


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in figures().items():
        (out / name).write_bytes(data)
        print(out / name, f"{len(data) // 1024} KiB")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "figures"
    )
