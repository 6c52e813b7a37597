"""``sbitk abc``: ABC from the command line to an ArviZ result file, and every bad input.

Two runs of the installed ``sbitk`` in subprocesses on real files (SMC-ABC on two_moons, and
rejection ABC with regression adjustment on gaussian_linear, whose exact posterior is known),
checked with ArviZ as a user would open them. Bad inputs run in-process with click's runner:
each fails before any simulation.
"""

import os
import subprocess
import sys
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sbitk import workflow
from sbitk.cli import main
from sbitk.inference.abc import ABCConfig
from sbitk.simulation.registry import get_simulator

ROOT = Path(__file__).resolve().parents[1]
OBSERVED = ROOT / "examples" / "two_moons_observed.csv"


def sbitk_cli(*args):
    """Run the installed command line in a fresh process."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).parent / "sbitk"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "sbitk.cli"]
    cmd = [*launcher, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _attr(idata, key):
    return np.atleast_1d(idata.posterior.attrs[key])  # NetCDF reads 1-element arrays as scalars


# ---- end to end in subprocesses --------------------------------------------------------------
@pytest.mark.slow
def test_smc_abc_on_two_moons_writes_a_result_arviz_opens(tmp_path):
    out = tmp_path / "abc.nc"
    budget = 4000
    result = sbitk_cli("abc", "two_moons", "--observed", OBSERVED, "-o", out, "--method", "smc",
                       "-n", budget, "--particles", 300, "--num-samples", 250,
                       "--seed", 2)  # fmt: skip
    assert result.returncode == 0, result.stderr
    idata = az.from_netcdf(out)
    theta = idata.posterior.theta
    assert theta.dims == ("chain", "draw", "parameter") and theta.shape == (2, 125, 2)
    assert np.isfinite(theta.values).all()
    assert set(idata.groups()) == {"posterior", "prior", "observed_data", "sample_stats"}
    assert set(idata.sample_stats.data_vars) == {"r_hat", "ess"}  # ArviZ's, no lp
    assert idata.posterior.attrs["method"] == "abc-smc"
    used = int(_attr(idata, "abc_num_simulations")[0])
    assert 300 < used <= budget and int(idata.posterior.attrs["abc_num_simulations_total"]) == used
    tolerances = _attr(idata, "abc_tolerances_0")
    assert np.isinf(tolerances[0]) and len(tolerances) >= 2  # the prior population, then rounds
    assert np.all(np.diff(tolerances[1:]) < 0)
    assert float(_attr(idata, "abc_tolerance")[0]) == tolerances[-1]
    assert f"from {used} simulations" in result.stdout and f"wrote {out}" in result.stdout
    assert az.summary(idata, kind="stats").shape[0] == 2  # ArviZ takes the file as it is


@pytest.mark.slow
def test_rejection_abc_with_regression_finds_the_gaussian_linear_posterior(tmp_path):
    sim = get_simulator("gaussian_linear")
    g = torch.Generator().manual_seed(5)
    x_o = sim(sim.prior.sample(2, g), g).double()  # two observations (2, 10)
    obs = tmp_path / "obs.csv"
    rows = [",".join(f"{v:.9g}" for v in row) for row in x_o.tolist()]
    obs.write_text("\n".join([",".join(sim.output_names), *rows]) + "\n")
    out = tmp_path / "post.nc"
    result = sbitk_cli("abc", "gaussian_linear", "--observed", obs, "-o", out, "--method",
                       "rejection", "-n", 10_000, "--quantile", 0.05, "--regression",
                       "--num-samples", 2000, "--seed", 1)  # fmt: skip
    assert result.returncode == 0, result.stderr
    idata = az.from_netcdf(out)
    theta = idata.posterior.theta
    assert theta.dims == ("chain", "draw", "observation", "parameter")
    assert theta.shape == (4, 500, 2, 10)
    assert _attr(idata, "abc_num_simulations").tolist() == [10_000, 10_000]
    assert int(idata.posterior.attrs["abc_num_simulations_total"]) == 20_000
    assert _attr(idata, "abc_num_particles").tolist() == [500, 500]
    assert "from 20000 simulations" in result.stdout
    # Exact posterior N(x_o / 2, 0.05 I). With 500 kept particles the Monte Carlo sd of a mean
    # is sqrt(0.05 / 500) = 0.01; measured over 10 seeds, the worst of the 10 coordinates was
    # 0.026 on average and 0.047 at most (0.10 without the adjustment: the ABC bias). 0.08
    # keeps a margin over the measured worst; the prior mean 0 lies ~0.2 away.
    mean = theta.mean(("chain", "draw")).values
    np.testing.assert_allclose(mean, x_o.numpy() / 2, atol=0.08)
    sd = theta.std(("chain", "draw")).values
    np.testing.assert_allclose(sd, np.sqrt(0.05), rtol=0.2)


@pytest.mark.slow
def test_workers_do_not_change_the_draws_and_the_api_matches(tmp_path):
    config = ABCConfig(method="rejection", num_simulations=25_000, num_samples=100, seed=3)
    one = workflow.abc("two_moons", OBSERVED, tmp_path / "one.nc", config)
    two = workflow.abc("two_moons", OBSERVED, tmp_path / "two.nc", config, workers=2)
    # 25,000 rows go in three seeded chunks, in this process or over two processes alike.
    assert torch.equal(one.results[0].samples, two.results[0].samples)
    assert one.num_simulations == two.num_simulations == 25_000
    assert one.idata.posterior.theta.shape == (4, 25, 2)


# ---- in process: help and bad inputs (click's runner) ----------------------------------------
def test_help_shows_an_example_and_the_defaults():
    result = CliRunner().invoke(main, ["abc", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Example:" in text and "sbitk abc two_moons" in text and "SIMULATOR" in text
    assert f"[default: {ABCConfig().num_simulations}]" in text


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--quantile", "1.5"], ["quantile", "(0, 1)", "1.5"]),
        (["--method", "rejection", "--quantile", "0"], ["quantile", "(0, 1]"]),
        (["--method", "rejection", "--particles", "100"], ["--particles", "smc"]),
        (["--particles", "500", "-n", "100"], ["particles", "500", "100"]),
        (["-n", "1"], ["num_simulations"]),
        (["--num-samples", "0"], ["num_samples"]),
        (["--workers", "0"], ["workers"]),
    ],
    ids=["quantile-smc", "quantile-rejection", "particles-rejection", "budget", "n", "samples",
         "workers"],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(tmp_path, args, fragments):
    out = tmp_path / "o.nc"
    result = CliRunner().invoke(
        main, ["abc", "two_moons", "--observed", str(OBSERVED), "-o", str(out), *args]
    )
    _one_line_error(result, *fragments)
    assert not out.exists()


def test_unknown_simulator_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        main, ["abc", "no_such_simulator", "--observed", str(OBSERVED), "-o", str(tmp_path / "o")]
    )
    _one_line_error(result, "no_such_simulator")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("x[0]\n0.1\n", ["missing", "x[1]"]),
        ("x[0],x[1],x[2]\n0.1,0.2,0.3\n", ["extra", "x[2]"]),
        ("a,b\n0.1,0.2\n", ["missing", "x[0]"]),
    ],
    ids=["missing-column", "extra-column", "other-names"],
)
def test_observed_file_with_wrong_columns_is_a_one_line_error(tmp_path, content, fragments):
    obs = tmp_path / "obs.csv"
    obs.write_text(content)
    out = tmp_path / "o.nc"
    result = CliRunner().invoke(main, ["abc", "two_moons", "--observed", str(obs), "-o", str(out)])
    _one_line_error(result, str(obs), *fragments)
    assert not out.exists()


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "o.nc"
    out.write_text("keep me")
    result = CliRunner().invoke(
        main, ["abc", "two_moons", "--observed", str(OBSERVED), "-o", str(out)]
    )
    _one_line_error(result, str(out), "already exists", "--force")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_the_observed_file_is_refused(tmp_path, force):
    obs = tmp_path / "obs.csv"
    obs.write_bytes(OBSERVED.read_bytes())
    same = tmp_path / "sub" / ".." / "obs.csv"  # another spelling of the same path
    args = ["abc", "two_moons", "--observed", str(obs), "-o", str(same)]
    result = CliRunner().invoke(main, [*args, "--force"] if force else args)
    _one_line_error(result, "is the observed data file")
    assert obs.read_bytes() == OBSERVED.read_bytes()
