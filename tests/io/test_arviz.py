"""ArviZ export: the NetCDF file opens with ArviZ, and summary and plot_posterior work on it."""

import hashlib
import warnings

import arviz as az
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import sbitk
from sbitk.diagnostics import mmd_test
from sbitk.io.arviz import (
    Provenance,
    ResultFileError,
    file_sha256,
    iid_chains,
    read_inference_data,
    to_inference_data,
    write_inference_data,
)
from sbitk.io.atomic import OutputExistsError

NAMES = ["mu", "log sigma"]
OUTPUTS = ["x[0]", "x[1]", "x[2]"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _titles(axes) -> list[str]:
    return [ax.get_title() for ax in np.ravel(axes)]


def test_single_observation_round_trip_with_every_group(tmp_path, rng):
    chains, draws = 2, 200
    theta = rng.normal(size=(chains, draws, 2)) + np.array([1.0, -2.0])
    model = tmp_path / "model.sbitk"
    model.write_bytes(b"weights")
    x_o = torch.tensor([0.5, 1.5, -0.5])
    sims = torch.as_tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    mmd = mmd_test(x_o, sims, n_permutations=50, seed=0)
    idata = to_inference_data(
        torch.as_tensor(theta),
        NAMES,
        observed=x_o,
        output_names=OUTPUTS,
        prior=rng.normal(size=(300, 2)),
        log_prob=rng.normal(size=(chains, draws)),
        posterior_predictive=rng.normal(size=(chains, draws, 3)),
        misspecification=mmd,
        provenance=Provenance(
            simulator="toy",
            seed=7,
            model_sha256=file_sha256(model),
            method="npe",
            extra={"observed_file": "obs.csv", "n_trials": np.array([3, 4])},
        ),
    )
    out = write_inference_data(idata, tmp_path / "posterior.nc")
    loaded = az.from_netcdf(out)
    assert set(loaded.groups()) == {
        "posterior",
        "observed_data",
        "prior",
        "sample_stats",
        "posterior_predictive",
    }
    post = loaded.posterior.theta
    assert post.dims == ("chain", "draw", "parameter")
    assert post.parameter.values.tolist() == NAMES
    np.testing.assert_array_equal(post.values, theta)
    assert loaded.observed_data.x.dims == ("output",)
    assert loaded.observed_data.x.output.values.tolist() == OUTPUTS
    np.testing.assert_allclose(loaded.observed_data.x.values, x_o.numpy())
    assert loaded.prior.theta.dims == ("chain", "draw", "parameter")
    assert loaded.prior.theta.shape == (1, 300, 2)
    assert loaded.sample_stats.lp.dims == ("chain", "draw")
    assert loaded.posterior_predictive.x.dims == ("chain", "draw", "output")

    attrs = loaded.posterior.attrs
    assert attrs["sbitk_version"] == sbitk.__version__
    assert attrs["simulator"] == "toy" and int(attrs["seed"]) == 7 and attrs["method"] == "npe"
    assert attrs["model_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert attrs["observed_file"] == "obs.csv" and attrs["n_trials"].tolist() == [3, 4]
    assert loaded.attrs["model_sha256"] == attrs["model_sha256"]
    assert attrs["misspecification_test"] == "mmd"
    # NetCDF reads a one-element attribute back as a scalar
    assert np.atleast_1d(attrs["misspecification_flagged"]).tolist() == [
        mmd.observations[0].flagged
    ]
    np.testing.assert_allclose(attrs["misspecification_p_value"], mmd.p_values)

    summary = az.summary(loaded)
    assert summary.index.tolist() == ["theta[mu]", "theta[log sigma]"]
    np.testing.assert_allclose(summary["mean"], theta.reshape(-1, 2).mean(0), atol=1e-3)
    axes = az.plot_posterior(loaded)
    titles = _titles(axes)
    assert len(titles) == 2 and "mu" in titles[0] and "log sigma" in titles[1]
    plt.close("all")


def test_several_observations_get_an_observation_dim(tmp_path, rng):
    chains, draws, batch = 1, 100, 3
    theta = rng.normal(size=(chains, draws, batch, 2)) + np.arange(batch)[:, None]
    x = rng.normal(size=(batch, 3))
    verdicts = mmd_test(
        torch.as_tensor(x), torch.as_tensor(rng.normal(size=(200, 3))), n_permutations=50
    )
    idata = to_inference_data(
        theta,
        NAMES,
        observed=x,
        output_names=OUTPUTS,
        log_prob=rng.normal(size=(chains, draws, batch)),
        posterior_predictive=rng.normal(size=(chains, draws, batch, 3)),
        misspecification=verdicts.observations,
    )
    write_inference_data(idata, tmp_path / "p.nc")
    loaded = read_inference_data(tmp_path / "p.nc")
    assert loaded.posterior.theta.dims == ("chain", "draw", "observation", "parameter")
    assert loaded.posterior.observation.values.tolist() == [0, 1, 2]
    assert loaded.observed_data.x.dims == ("observation", "output")
    assert loaded.sample_stats.lp.dims == ("chain", "draw", "observation")
    assert loaded.posterior_predictive.x.dims == ("chain", "draw", "observation", "output")
    assert len(loaded.posterior.attrs["misspecification_flagged"]) == batch
    summary = az.summary(loaded, kind="stats")
    assert summary.index.tolist() == [f"theta[{b}, {n}]" for b in range(batch) for n in NAMES]
    np.testing.assert_allclose(
        summary["mean"].to_numpy().reshape(batch, 2), theta[0].mean(0), atol=1e-3
    )
    assert len(_titles(az.plot_posterior(loaded))) == batch * 2
    plt.close("all")


def test_iid_trials_and_one_observation_in_a_batch(rng):
    theta = rng.normal(size=(2, 50, 1, 2))
    idata = to_inference_data(
        theta, NAMES, observed=rng.normal(size=(5, 3)), output_names=OUTPUTS, iid=True
    )
    assert idata.posterior.theta.dims == ("chain", "draw", "parameter")
    assert idata.observed_data.x.dims == ("trial", "output")
    assert idata.observed_data.x.shape == (5, 3)


@pytest.mark.parametrize("observations", [1, 3])
def test_stored_r_hat_and_ess_are_what_arviz_summary_computes(tmp_path, rng, observations):
    """Correlated chains (a random walk per chain) so that R-hat and ESS are not trivial."""
    theta = rng.normal(size=(4, 300, observations, 2)).cumsum(1) * 0.1 + rng.normal(
        size=(4, 1, 1, 1)
    )
    idata = to_inference_data(theta if observations > 1 else theta[:, :, 0], NAMES)
    write_inference_data(idata, tmp_path / "m.nc")
    stored = az.from_netcdf(tmp_path / "m.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without a warning
        summary = az.summary(stored, kind="diagnostics")
    assert np.allclose(
        stored.sample_stats.r_hat.values.ravel(), summary["r_hat"].values, atol=0.01
    )
    assert np.allclose(
        stored.sample_stats.ess.values.ravel(), summary["ess_bulk"].values, rtol=0.01, atol=1
    )
    assert stored.sample_stats.r_hat.values.max() > 1.05  # the walks have not mixed


def test_independent_draws_are_chains_arviz_accepts_without_a_warning(rng):
    draws = iid_chains(rng.normal(size=(2000, 2)))
    assert draws.shape == (4, 500, 2)
    idata = to_inference_data(draws, NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = az.summary(idata, kind="diagnostics")
    # independent draws: R-hat 1 within its Monte Carlo spread, ESS near n
    assert np.all(np.abs(summary["r_hat"].values - 1) < 0.01)
    assert np.all(summary["ess_bulk"].values > 1500)
    assert iid_chains(np.zeros((7, 2))).shape == (1, 7, 2)  # no split leaves 4 draws a chain


def test_write_refuses_to_overwrite_without_force(tmp_path, rng):
    idata = to_inference_data(rng.normal(size=(1, 10, 2)), NAMES)
    path = write_inference_data(idata, tmp_path / "p.nc")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        write_inference_data(idata, path)
    assert path.read_bytes() == before
    write_inference_data(idata, path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["p.nc"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"posterior": np.zeros((10, 2))}, "posterior must have shape"),
        ({"posterior": np.zeros((1, 10, 3))}, "3 parameters but 2 parameter names"),
        ({"parameter_names": ["a", "a"]}, "unique"),
        ({"observed": np.zeros(3)}, "observed needs output_names"),
        ({"observed": np.zeros((2, 3)), "output_names": OUTPUTS}, "2 observations"),
        ({"observed": np.zeros(2), "output_names": OUTPUTS}, "2 outputs but 3 output names"),
        ({"prior": np.zeros((5, 3))}, "prior must have shape"),
        ({"log_prob": np.zeros((1, 9))}, "log_prob must have shape"),
        ({"posterior_predictive": np.zeros((1, 10, 2, 3))}, "posterior_predictive must"),
        ({"posterior": np.array([["a"]])}, "must be numeric"),
    ],
)
def test_inconsistent_inputs_are_named(kwargs, message):
    args = {"posterior": np.zeros((1, 10, 2)), "parameter_names": NAMES} | kwargs
    with pytest.raises(ResultFileError, match=message):
        to_inference_data(args.pop("posterior"), args.pop("parameter_names"), **args)


def test_reading_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ResultFileError, match="file not found"):
        read_inference_data(tmp_path / "absent.nc")
    (tmp_path / "bad.nc").write_bytes(b"not netcdf")
    with pytest.raises(ResultFileError, match="unreadable"):
        read_inference_data(tmp_path / "bad.nc")
    path = write_inference_data(to_inference_data(np.zeros((1, 10, 2)), NAMES), tmp_path / "t.nc")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ResultFileError, match="unreadable as NetCDF"):
        read_inference_data(path)
