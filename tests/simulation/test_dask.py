"""Simulation on a real Dask LocalCluster gives the bank of the local run."""

import math
import os
import subprocess
import sys

import pytest
import torch

import sbitk
from sbitk.errors import SimulatorError
from sbitk.simulation.bank import Bank
from sbitk.simulation.runner import SimulationFailureWarning, simulate

distributed = pytest.importorskip("distributed")


@sbitk.simulator(
    "dask_ring",
    parameters={"r": sbitk.LogNormal(0.0, 0.5), "phi": sbitk.BoxUniform(0.0, 6.0)},
    outputs={"xy": (2,)},
    register=False,
)
def ring(theta, generator):
    xy = torch.stack([torch.cos(theta[:, 1]), torch.sin(theta[:, 1])], -1) * theta[:, :1]
    xy = xy + 0.05 * torch.randn(xy.shape, generator=generator)
    xy[theta[:, 1] > 5.5, 0] = math.inf
    return xy


@sbitk.simulator(
    "dask_scalar",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": ()},
    vectorized=False,
    register=False,
)
def scalar(theta, generator):
    if float(theta[0]) > 0.9:
        raise RuntimeError("a > 0.9 is not allowed")
    return theta[0] ** 2 + torch.rand((), generator=generator)


@sbitk.simulator(
    "dask_wrong",
    parameters={"a": sbitk.BoxUniform(-1.0, 1.0)},
    outputs={"y": (2,)},
    register=False,
)
def wrong(theta, generator):
    return torch.zeros(theta.shape[0], 2, 2)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, distributed.Client(cluster) as c:
        yield c


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _same(a: Bank, b: Bank) -> None:
    assert len(a) == len(b)
    for name in ("theta", "x", "valid", "status"):
        assert torch.equal(_bits(getattr(a, name)), _bits(getattr(b, name))), name


@pytest.mark.slow
def test_dask_bank_equals_the_local_bank_for_the_same_seed(client, tmp_path):
    with pytest.warns(SimulationFailureWarning):
        remote = simulate(
            ring, 3000, seed=21, client=client, batch_size=250, bank=tmp_path / "dask.zarr"
        )
    with pytest.warns(SimulationFailureWarning):
        local = simulate(ring, 3000, seed=21, workers=1, batch_size=250, progress=False)
    _same(remote, local)
    assert remote.complete and remote.num_batches == 12
    assert 0 < int((~remote.valid).sum()) == remote.failures().counts["inf"]
    # Both workers took part: the batches really ran on the cluster.
    log = client.run(lambda: len(sbitk.simulation.runner._DASK_CACHE))
    assert len(log) == 2 and all(n >= 1 for n in log.values())


def test_runs_in_a_row_ship_the_simulator_under_keys_of_their_own(client, monkeypatch):
    """Under the payload's hash, a run right after another of the same simulator scattered the
    key the first was releasing: its batches were cancelled for lost dependencies, or hung."""
    keys, real = [], client.scatter

    def scatter(*args, **kwargs):
        future = real(*args, **kwargs)
        keys.append(future.key)
        return future

    monkeypatch.setattr(client, "scatter", scatter)
    banks = []
    for _ in range(3):
        with pytest.warns(SimulationFailureWarning):
            banks.append(simulate(ring, 400, seed=4, client=client, batch_size=100))
    assert len(set(keys)) == 3
    _same(banks[0], banks[2])


@pytest.mark.slow
def test_dask_runs_plain_python_functions_and_resumes_local_banks(client, tmp_path):
    path = tmp_path / "scalar.zarr"
    with pytest.warns(SimulationFailureWarning):
        local = simulate(scalar, 200, seed=2, workers=1, batch_size=50, bank=path)
    with pytest.warns(SimulationFailureWarning):
        more = simulate(scalar, 200, seed=2, client=client, bank=path, append=True)
    assert torch.equal(_bits(more.theta[:200]), _bits(local.theta))
    # The same two steps in one process give the same bank.
    with pytest.warns(SimulationFailureWarning):
        simulate(scalar, 200, seed=2, workers=1, batch_size=50, bank=tmp_path / "ref.zarr")
    with pytest.warns(SimulationFailureWarning):
        ref = simulate(scalar, 200, seed=2, workers=1, bank=tmp_path / "ref.zarr", append=True)
    _same(more, ref)
    assert len(more) == 400 and more.num_batches == 8
    failing = more.theta[~more.valid, 0]
    assert (failing > 0.9).all() and torch.equal(~more.valid, more.theta[:, 0] > 0.9)
    assert set(more.errors().values()) == {"RuntimeError: a > 0.9 is not allowed"}


def test_wrong_shape_on_dask_is_the_same_clear_error(client):
    with pytest.raises(SimulatorError, match=r"'dask_wrong'.*\(100, 2, 2\).*\(100, 2\)"):
        simulate(wrong, 300, client=client, batch_size=100, progress=False)


@pytest.mark.slow
def test_cli_scheduler_option_runs_on_the_cluster(client, tmp_path):
    path = tmp_path / "moons.zarr"
    address = client.scheduler.address
    cmd = [sys.executable, "-m", "sbitk.cli", "simulate", "two_moons", "-n", "3000", "-o"]
    result = subprocess.run(
        [*cmd, str(path), "--seed", "8", "--scheduler", address],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "rows        3000 of 3000 planned" in result.stdout
    local = simulate("two_moons", 3000, seed=8, workers=1, progress=False)
    _same(Bank.open(path), local)
