"""Shared statistical helpers of the simulator tests (tolerances from sampling theory)."""

import numpy as np
import torch
from scipy import stats

#: Standard errors allowed in a mean or variance check: two-sided tail 7e-6 per check.
K = 4.5


def assert_mean(samples: torch.Tensor, expected, k: float = K) -> None:
    """The column means of samples (n, D) lie within k standard errors of expected (D,)."""
    s = samples.double()
    expected = torch.as_tensor(expected, dtype=torch.float64)
    se = s.std(0) / s.shape[0] ** 0.5
    z = (s.mean(0) - expected) / se
    assert z.abs().max() < k, f"mean off by {z.abs().max():.2f} standard errors: {z.tolist()}"


def assert_covariance(samples: torch.Tensor, expected, k: float = K) -> None:
    """The sample covariance (D, D) of samples (n, D) matches expected within k standard errors.

    The standard error of each entry is estimated from the fourth moments of the samples, so it
    holds for non-Gaussian samples too.
    """
    s = samples.double()
    c = s - s.mean(0)
    products = c[:, :, None] * c[:, None, :]  # (n, D, D)
    est = products.mean(0)
    se = products.std(0) / s.shape[0] ** 0.5
    z = (est - torch.as_tensor(expected, dtype=torch.float64)) / se
    assert z.abs().max() < k, f"covariance off by {z.abs().max():.2f} standard errors"


def sbc_pvalues(prior, simulate, posterior, trials: int, draws: int, seed: int) -> np.ndarray:
    """Simulation-based calibration of an exact posterior sampler; a χ² p-value per dimension.

    For θ ~ prior and x ~ simulate(θ), the rank of θ among ``draws`` posterior samples at x is
    uniform on 0…draws when the sampler is exact (Talts et al. 2018, arXiv:1804.06788).
    """
    g = torch.Generator().manual_seed(seed)
    theta = prior.sample(trials, generator=g)
    x = simulate(theta, g)
    ranks = np.stack(
        [(posterior(x[i], draws, g) < theta[i]).sum(0).numpy() for i in range(trials)]
    )
    bins = 10
    assert (draws + 1) % bins == 0
    counts = np.stack(
        [
            np.bincount(ranks[:, d] * bins // (draws + 1), minlength=bins)
            for d in range(ranks.shape[1])
        ]
    )
    return stats.chisquare(counts, axis=1).pvalue


def sbibm_tasks_dir():
    """The task folder of the installed sbibm package (reference files the tests compare with).

    `make setup` installs sbibm, so under CI a missing package fails the test instead of
    skipping it; elsewhere the comparison is skipped with the reason.
    """
    import importlib.util
    import os
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("sbibm is not installed; `make setup` installs it")
        pytest.skip("sbibm is not installed (`make setup` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"
