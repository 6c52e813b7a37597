"""Histogram and density tree: the Freedman–Diaconis rule, normalisation, and L1 convergence
rates against a known density."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sbitk.errors import SbitkError
from sbitk.models.classical import DensityTree, Histogram, freedman_diaconis_width

GRID = torch.linspace(-6, 6, 2001, dtype=torch.float64)
NORMAL = torch.exp(-0.5 * GRID**2) / math.sqrt(2 * math.pi)
NS = [250, 500, 1000, 2000, 4000, 8000]


def _normal(n: int, seed: int, d: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _l1_slope(make, seeds=range(4)) -> float:
    """Slope of log(mean L1 error over seeds) against log N, over NS."""
    errors = []
    for n in NS:
        per_seed = []
        for s in seeds:
            density = make().fit(_normal(n, 1000 * s + n)).log_prob(GRID[:, None]).exp()
            per_seed.append(float(torch.trapezoid((density - NORMAL).abs(), GRID)))
        errors.append(np.mean(per_seed))
    return float(np.polyfit(np.log(NS), np.log(errors), 1)[0])


def test_freedman_diaconis_width_matches_numpy():
    x = _normal(1000, 0)[:, 0]
    edges = np.histogram_bin_edges(x.numpy(), bins="fd")
    # numpy rounds the number of bins, so its width is within one bin of range/width.
    n_bins = len(edges) - 1
    width = float(freedman_diaconis_width(x))
    assert n_bins == math.ceil(float(x.max() - x.min()) / width)
    hist = Histogram().fit(x[:, None])
    assert float(hist.width) == pytest.approx(width)


def test_histogram_integrates_to_one_and_is_zero_outside():
    hist = Histogram().fit(_normal(3000, 1))
    grid = torch.linspace(-8, 8, 160001, dtype=torch.float64)
    density = hist.log_prob(grid[:, None]).exp()
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    assert float(hist.log_prob(torch.tensor([[100.0]], dtype=torch.float64))) == -math.inf


def test_histogram_l1_error_falls_as_n_to_the_minus_one_third():
    # Theory: MISE-optimal bins give L1 ~ N^(-1/3). Measured over 8 disjoint sets of 4 seeds:
    # slope -0.338, standard deviation 0.013 (range -0.358 to -0.312).
    assert _l1_slope(Histogram) == pytest.approx(-1 / 3, abs=0.05)
    # A fixed bin width (no FD rule) stops improving once the bias dominates: slope near 0.
    assert _l1_slope(lambda: Histogram(bin_width=1.0)) > -0.15


def test_histogram_samples_follow_the_histogram():
    hist = Histogram().fit(_normal(2000, 2))
    x = hist.sample((40000,), generator=torch.Generator().manual_seed(3))
    counts = torch.histogram(x[:, 0], hist.edges.double()).hist
    expected = hist.counts / hist.counts.sum() * 40000
    full = expected > 0
    assert float(counts[~full].sum()) == 0.0  # empty bins are never drawn
    chi2 = float(((counts - expected)[full] ** 2 / expected[full]).sum())
    # Chi-square with (bins - 1) degrees of freedom: mean bins - 1, sd sqrt(2 (bins - 1)).
    dof = int(full.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)
    # Within its bin a draw is uniform: its position in the bin passes a KS test.
    position = torch.frac((x[:, 0] - hist.edges[0]) / hist.width)
    assert stats.kstest(position.numpy(), "uniform").pvalue > 1e-3


def test_density_tree_integrates_to_one_and_samples_inside_its_leaves():
    x = _normal(5000, 4, d=3)
    tree = DensityTree().fit(x)
    volumes = (tree.leaf_hi - tree.leaf_lo).prod(-1)
    mass = (tree.log_prob(0.5 * (tree.leaf_lo + tree.leaf_hi)).exp() * volumes).sum()
    assert float(mass) == pytest.approx(1.0, abs=1e-12)
    assert int(tree.counts.max()) <= math.ceil(5000 ** (2 / 5))
    draws = tree.sample((1000,), generator=torch.Generator().manual_seed(5))
    assert bool(torch.isfinite(tree.log_prob(draws)).all())
    assert float(tree.log_prob(torch.full((1, 3), 50.0, dtype=torch.float64))) == -math.inf


def test_density_tree_splits_the_first_of_equally_wide_sides():
    # At the root every side is as wide as the data's range, a tie in every dimension. The
    # first is split: an unstable sort picks another on the CPU from 17 dimensions, and any
    # on a GPU, so that the same data grew different trees on different devices.
    tree = DensityTree(max_depth=1).fit(_normal(64, 0, d=20))
    assert int(tree.dims[0]) == 0


def test_density_tree_l1_error_falls_in_two_dimensions():
    # Theory for a histogram in D = 2: L1 ~ N^(-1/(2+D)) = N^(-1/4). The tree's occupancy
    # moves in powers of 2, so over 500-16,000 points the measured slope (5 sets of 4 seeds)
    # is -0.195 with standard deviation 0.009.
    grid = torch.linspace(-5, 5, 161, dtype=torch.float64)
    pts = torch.cartesian_prod(grid, grid)
    true = torch.exp(-0.5 * pts.square().sum(-1)) / (2 * math.pi)
    area = float(grid[1] - grid[0]) ** 2
    ns = [500, 1000, 2000, 4000, 8000, 16000]
    errors = [
        np.mean(
            [
                float(
                    (DensityTree().fit(_normal(n, 100 * s + n, 2)).log_prob(pts).exp() - true)
                    .abs()
                    .sum()
                    * area
                )
                for s in range(4)
            ]
        )
        for n in ns
    ]
    slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
    assert -0.3 < slope < -0.15


@pytest.mark.parametrize(
    ("make", "x", "match"),
    [
        (Histogram, torch.zeros(10, 2), "D = 1"),
        (Histogram, torch.zeros(10, 1), "interquartile"),
        (DensityTree, torch.zeros(10, 2), "spread"),
        (DensityTree, torch.full((10, 2), math.nan), "finite"),
        (DensityTree, torch.zeros(10), r"\(N, D\)"),
    ],
)
def test_bad_inputs_raise_package_errors(make, x, match):
    with pytest.raises(SbitkError, match=match):
        make().fit(x)


def test_unfitted_estimators_say_so():
    with pytest.raises(SbitkError, match="not fitted"):
        Histogram().log_prob(torch.zeros(1, 1))
    with pytest.raises(SbitkError, match="not fitted"):
        DensityTree().sample((2,))
