"""The two private APIs sbitk uses, pinned: an upgrade that moves them fails here, in CI, and
the upper bounds in pyproject.toml keep users on the versions checked."""

import inspect
import re
from importlib.metadata import requires, version

import numpy as np


def bound(package: str) -> str:
    spec = next(r for r in requires("sbitk") if re.match(rf"{package}\b", r) and "extra" not in r)
    return spec


def test_zarr_sync_runs_a_coroutine_on_zarrs_loop():
    from zarr.core.sync import sync

    async def three():
        return 3

    assert sync(three()) == 3
    assert "<3.2" in bound("zarr") and version("zarr").startswith(("3.0", "3.1"))


def test_arviz_ecdf_band_has_the_signature_sbc_calls():
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    params = inspect.signature(ecdf_confidence_band).parameters
    assert {"prob", "method"} <= set(params)
    points = np.linspace(0, 1, 11)
    lower, upper = ecdf_confidence_band(100, points, points, prob=0.95, method="optimized")
    assert np.all(np.asarray(lower) <= points + 1e-12) and np.all(
        np.asarray(upper) >= points - 1e-12
    )
    assert "<0.24" in bound("arviz")
