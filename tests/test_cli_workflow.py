"""The train → sample → diagnose → run chain on the command line, and every bad input.

The main paths run the installed ``sbitk`` in subprocesses on real files (one ``run`` on a tiny
budget, then ``inspect``, ``sample``, ``diagnose``, ``train`` on its outputs), and the result
files are checked with ArviZ as a user would open them. Bad inputs run in-process with click's
runner, which is fast.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sbitk.cli import main
from sbitk.inference.training import TrainConfig
from sbitk.simulation.runner import simulate

ROOT = Path(__file__).resolve().parents[1]
OBSERVED = ROOT / "examples" / "two_moons_observed.csv"
TINY_RUN = [
    "-n", "1000", "--epochs", "3", "--num-samples", "200", "--diagnose-simulations", "30",
    "--diagnose-samples", "50", "--workers", "1", "--seed", "3",
]  # fmt: skip


def sbitk_cli(*args, cwd=None):
    """Run the installed command line in a fresh process."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    script = Path(sys.executable).parent / "sbitk"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "sbitk.cli"]
    cmd = [*launcher, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ---- end to end in subprocesses --------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny ``sbitk run two_moons`` in a subprocess; its directory and process result."""
    out = tmp_path_factory.mktemp("run") / "demo"
    result = sbitk_cli("run", "two_moons", "--observed", OBSERVED, "-o", out, *TINY_RUN,
                       "--predictive")  # fmt: skip
    return out, result


@pytest.mark.slow
def test_run_writes_bank_model_result_report_and_manifest(demo_run):
    out, result = demo_run
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    for name in ("bank.zarr", "model.safetensors", "posterior.nc", "report.html", "manifest.json"):
        assert (out / name).exists(), name
    assert f"posterior samples: {out / 'posterior.nc'}" in result.stdout
    assert f"report: {out / 'report.html'}" in result.stdout
    # Exit 1 exactly when a check line says FAIL.
    failed = any(line.startswith("FAIL") for line in result.stdout.splitlines())
    assert result.returncode == (1 if failed else 0), result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"]["bank"]["inputs"] == {
        "simulator": "two_moons", "simulator_version": "1", "num_simulations": 1000, "seed": 3,
    }  # fmt: skip
    # the posterior default, recorded by name
    assert manifest["steps"]["model"]["inputs"]["estimator"] == "ensemble"
    # The manifest's status is the worst of the check lines printed, not just any status word.
    printed = {line.split()[0] for line in result.stdout.splitlines() if line[:4].isupper()}
    worst = next(s for s in ("FAIL", "WARN", "PASS") if s in printed | {"PASS"})
    assert manifest["steps"]["diagnose"]["status"] == worst.lower(), result.stdout
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # training, pair, SBC, coverage, TARP, z


@pytest.mark.slow
def test_result_file_opens_in_arviz_as_it_is(demo_run):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbitk import __version__
    from sbitk.io.arviz import file_sha256

    out, _ = demo_run
    idata = az.from_netcdf(out / "posterior.nc")
    theta = idata.posterior.theta
    assert theta.dims == ("chain", "draw", "parameter")
    assert theta.shape == (4, 50, 2)  # independent draws as 4 chains
    assert list(idata.posterior.parameter.values) == ["theta[0]", "theta[1]"]
    assert idata.observed_data.x.dims == ("output",)
    np.testing.assert_allclose(
        idata.observed_data.x.values, np.loadtxt(OBSERVED, delimiter=",", skiprows=1), rtol=1e-6
    )
    bank_theta = idata.prior.theta.values[0]
    assert bank_theta.shape[1] == 2 and (np.abs(bank_theta) <= 1).all()  # BoxUniform(-1, 1)
    assert idata.sample_stats.lp.shape == (4, 50) and np.isfinite(idata.sample_stats.lp).all()
    assert idata.posterior_predictive.x.shape == (4, 50, 2)
    attrs = idata.posterior.attrs
    assert attrs["sbitk_version"] == __version__
    assert attrs["model_sha256"] == file_sha256(out / "model.safetensors")
    assert attrs["simulator"] == "two_moons" and int(attrs["seed"]) == 3
    assert "misspecification_flagged" in attrs
    summary = az.summary(idata)
    assert list(summary.index) == ["theta[theta[0]]", "theta[theta[1]]"]
    axes = az.plot_posterior(idata)
    assert np.asarray(axes).size == 2
    plt.close("all")


@pytest.mark.slow
def test_inspect_sample_diagnose_train_on_the_run_outputs(demo_run, tmp_path):
    import arviz as az

    out, _ = demo_run
    model, bank = out / "model.safetensors", out / "bank.zarr"

    inspected = sbitk_cli("inspect", model)
    assert inspected.returncode == 0, inspected.stderr
    assert "NPE (posterior estimator ensemble)" in inspected.stdout
    assert "simulator: two_moons" in inspected.stdout
    assert re.search(r"rows: \d+ offered, 0 excluded as invalid", inspected.stdout)

    # Three observations: an observation dim; the third is far outside the prior predictive
    # (x lies within about 1.5 of the origin), yet near enough that most of the posterior's
    # draws fall inside the prior's box. One further out (40, -40) sends that observation to
    # slice sampling, which took 30 s here and is tested in tests/inference/test_npe_nle.py.
    obs = _write_csv(tmp_path / "three.csv", "x[1],x[0]", "0.1,-0.5", "0.2,0.3", "3.0,-3.0")
    result = tmp_path / "three.nc"
    sampled = sbitk_cli("sample", model, "--observed", obs, "-n", "100", "-o", result,
                        "--bank", bank, "--seed", "1")  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    assert "observation 2 looks misspecified" in sampled.stderr
    assert "observation 0 " not in sampled.stderr
    idata = az.from_netcdf(result)
    assert idata.posterior.theta.dims == ("chain", "draw", "observation", "parameter")
    assert idata.posterior.theta.shape == (4, 25, 3, 2)
    assert np.atleast_1d(idata.posterior.attrs["misspecification_flagged"]).tolist() == [0, 0, 1]
    az.summary(idata)

    # An existing output is not replaced without --force, and is left as it was.
    before = result.read_bytes()
    again = CliRunner().invoke(
        main, ["sample", str(model), "--observed", str(obs), "-n", "50", "-o", str(result)]
    )
    assert again.exit_code == 2 and "--force" in again.stderr
    assert result.read_bytes() == before

    report = tmp_path / "report.html"
    diagnosed = sbitk_cli("diagnose", model, "--bank", bank, "-o", report,
                          "--num-simulations", "20", "--num-posterior-samples", "30")  # fmt: skip
    assert diagnosed.returncode in (0, 1), diagnosed.stderr
    failed = any(line.startswith("FAIL") for line in diagnosed.stdout.splitlines())
    assert diagnosed.returncode == (1 if failed else 0)
    for name in ("SBC", "coverage", "TARP", "z-score / contraction", "training"):
        assert f" {name}:" in diagnosed.stdout
    assert report.is_file() and "<html" in report.read_text()

    nle = tmp_path / "nle.safetensors"
    trained = sbitk_cli("train", bank, "--method", "nle", "--estimator", "maf", "--epochs", "2",
                        "-o", nle, "--device", "cpu")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "trained NLE (maf) in 2 epochs" in trained.stdout
    trials = _write_csv(tmp_path / "trials.csv", "x[0],x[1]", "0.1,0.2", "0.12,0.18", "0.09,0.21")
    iid_nc = tmp_path / "iid.nc"
    iid = sbitk_cli("sample", nle, "--observed", trials, "--iid", "-n", "40", "-o", iid_nc)
    assert iid.returncode == 0, iid.stderr
    idata = az.from_netcdf(iid_nc)
    assert idata.posterior.theta.dims == ("chain", "draw", "parameter")
    assert idata.posterior.theta.shape == (2, 20, 2)  # 20 draws per chain at least
    assert idata.observed_data.x.dims == ("trial", "output")
    assert {"r_hat", "ess"} <= set(idata.sample_stats.data_vars)
    # The three trials are one observation: one misspecification verdict.
    assert np.atleast_1d(idata.posterior.attrs["misspecification_flagged"]).tolist() == [0]
    # diagnose says up front that an NLE model runs MCMC once per fresh simulation
    assert "MCMC" not in diagnosed.stderr
    nle_diag = sbitk_cli("diagnose", nle, "--bank", bank, "-o", tmp_path / "nle.html",
                         "--num-simulations", "10", "--num-posterior-samples", "20")  # fmt: skip
    assert nle_diag.returncode in (0, 1), nle_diag.stderr
    assert nle_diag.stderr.startswith(
        "note: an NLE posterior is sampled by MCMC for each of the 10"
    )


@pytest.mark.slow
def test_second_run_reuses_bank_and_model_and_recomputes_what_changed(demo_run):
    out, _ = demo_run
    model = out / "model.safetensors"
    stamp = (model.stat().st_mtime_ns, (out / "bank.zarr" / "zarr.json").stat().st_mtime_ns)
    sha = json.loads((out / "manifest.json").read_text())["steps"]["model"]["sha256"]
    second = sbitk_cli("run", "two_moons", "--observed", OBSERVED, "-o", out, *TINY_RUN,
                       "--predictive")  # fmt: skip
    assert second.returncode in (0, 1), second.stderr
    assert "reusing" in second.stderr and "bank.zarr" in second.stderr
    assert "reusing" in second.stderr and "model.safetensors" in second.stderr
    assert (model.stat().st_mtime_ns, (out / "bank.zarr" / "zarr.json").stat().st_mtime_ns) == (
        stamp
    )
    # Another training option: the bank is reused, the model is retrained.
    third = sbitk_cli("run", "two_moons", "--observed", OBSERVED, "-o", out, *TINY_RUN,
                      "--epochs", "2", "-T", "patience=5")  # fmt: skip
    assert third.returncode in (0, 1), third.stderr
    assert f"reusing {out / 'bank.zarr'}" in third.stderr
    assert f"training NPE (ensemble) into {model}" in third.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"]["model"]["sha256"] != sha
    assert manifest["steps"]["model"]["inputs"]["config"]["max_epochs"] == 2
    assert manifest["steps"]["model"]["inputs"]["config"]["patience"] == 5


# ---- in process: help and bad input ----------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "sample", "diagnose", "run", "inspect"])
def test_new_commands_have_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and f"sbitk {command} " in result.output


def test_threads_option_is_checked():
    result = CliRunner().invoke(main, ["--threads", "0", "inspect", "."])
    assert result.exit_code == 2 and "--threads" in result.output


def test_estimator_choices_are_the_registered_estimators():
    from sbitk.models.registry import available_estimators

    result = CliRunner().invoke(main, ["train", "--help"])
    names = available_estimators()
    assert len(names) >= 6
    assert all(name in result.output for name in names), result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bank of two_moons and a quickly trained Gaussian NPE model on it."""
    from sbitk import workflow

    root = tmp_path_factory.mktemp("trained")
    bank = root / "bank.zarr"
    simulate("two_moons", 300, seed=0, bank=bank, workers=1, progress=False)
    model = root / "model.safetensors"
    config = TrainConfig(max_epochs=2, progress=False, device="cpu")
    workflow.train(bank, model, estimator="gaussian", config=config)
    other = root / "other.zarr"
    simulate("gaussian_linear", 50, seed=0, bank=other, workers=1, progress=False)
    return root, bank, model, other


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("x[0]\n0.1\n", ["missing", "x[1]"]),
        ("x[0],x[1],x[2]\n0.1,0.2,0.3\n", ["extra", "x[2]"]),
        ("x[0],x[1]\nnan,0.2\n", ["non-finite", "nan"]),
        ("x[0],x[1]\n0.1,inf\n", ["non-finite", "inf"]),
        ("x[0],x[1]\n0.1,0.2,0.3\n", ["wrong number of values"]),
        ("", ["empty"]),
        ("x[0],x[1]\n", ["no rows"]),
    ],
    ids=["missing-column", "extra-column", "nan", "inf", "wrong-dimension", "empty", "no-rows"],
)
def test_bad_observed_data_is_a_one_line_error(trained, tmp_path, content, fragments):
    _, bank, model, _ = trained
    obs = tmp_path / "obs.csv"
    obs.write_text(content)
    out = tmp_path / "out.nc"
    result = CliRunner().invoke(
        main, ["sample", str(model), "--observed", str(obs), "-o", str(out)]
    )
    _one_line_error(result, str(obs), *fragments)
    assert not out.exists()
    diag = CliRunner().invoke(
        main,
        ["diagnose", str(model), "--bank", str(bank), "--observed", str(obs), "-o",
         str(tmp_path / "r.html"), "--num-simulations", "10"],
    )  # fmt: skip
    _one_line_error(diag, str(obs), *fragments)


def test_unknown_simulator_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        main, ["run", "no_such_simulator", "--observed", str(OBSERVED), "-o", str(tmp_path)]
    )
    _one_line_error(result, "no_such_simulator")


def test_a_model_of_another_simulator_is_refused(trained, tmp_path):
    _, _, model, other = trained
    result = CliRunner().invoke(
        main,
        ["sample", str(model), "--observed", str(OBSERVED), "-o", str(tmp_path / "o.nc"),
         "--bank", str(other)],
    )  # fmt: skip
    _one_line_error(result, "trained for simulator 'two_moons'", "'gaussian_linear'")
    diag = CliRunner().invoke(
        main, ["diagnose", str(model), "--bank", str(other), "-o", str(tmp_path / "r.html")]
    )
    _one_line_error(diag, "trained for simulator 'two_moons'")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped"])
def test_corrupt_or_truncated_model_file_is_a_one_line_error(trained, tmp_path, damage):
    _, _, model, _ = trained
    data = model.read_bytes()
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00\x01not a model at all" * 10)
    else:  # one weight byte changed: only the checksum can tell
        flipped = bytearray(data)
        flipped[-3] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    expected = ["checksum mismatch"] if damage == "flipped" else []
    for args in (
        ["sample", str(bad), "--observed", str(OBSERVED), "-o", str(tmp_path / "o.nc")],
        ["inspect", str(bad)],
    ):
        _one_line_error(CliRunner().invoke(main, args), str(bad), *expected)
    assert not (tmp_path / "o.nc").exists()


def test_corrupt_result_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"CDF\x01 truncated")
    _one_line_error(CliRunner().invoke(main, ["inspect", str(bad)]), str(bad))


def test_unwritable_output_path_is_a_one_line_error(trained, tmp_path):
    _, bank, model, _ = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    for args in (
        ["sample", str(model), "--observed", str(OBSERVED), "-o", str(blocker / "o.nc")],
        ["train", str(bank), "-o", str(blocker / "m.safetensors"), "--epochs", "1"],
        ["diagnose", str(model), "--bank", str(bank), "-o", str(blocker / "r.html")],
        ["run", "two_moons", "--observed", str(OBSERVED), "-o", str(blocker)],
    ):
        _one_line_error(CliRunner().invoke(main, args), str(blocker))


def _posterior_estimators() -> list[str]:
    from sbitk.models.contract import RATIO, density_kind
    from sbitk.models.registry import available_estimators, get_estimator

    names = available_estimators()
    return [n for n in names if density_kind(get_estimator(n)) != RATIO]


@pytest.mark.parametrize("name", _posterior_estimators())
def test_every_registered_posterior_estimator_trains_and_samples_from_the_command_line(
    name, trained, tmp_path
):
    """``--estimator NAME`` reaches every family through the registry alone: trained for one
    epoch, saved, inspected, loaded and sampled into an ArviZ file."""
    import arviz as az

    _, bank, _, _ = trained
    model, result = tmp_path / "m.safetensors", tmp_path / "p.nc"
    train = CliRunner().invoke(
        main,
        ["train", str(bank), "-o", str(model), "--estimator", name, "--epochs", "1",
         "--device", "cpu", "--seed", "0"],
    )  # fmt: skip
    assert train.exit_code == 0, (train.output, train.exception)
    assert f"trained NPE ({name}) in 1 epochs" in train.stdout
    inspected = CliRunner().invoke(main, ["inspect", str(model)])
    assert inspected.exit_code == 0, (inspected.output, inspected.exception)
    # flow matching chooses its ODE steps once trained, and the file keeps them
    settled = re.search(r"settled after training: steps (\d+)", inspected.stdout)
    assert bool(settled) == (name == "flow_matching"), inspected.stdout
    sample = CliRunner().invoke(
        main, ["sample", str(model), "--observed", str(OBSERVED), "-n", "20", "-o", str(result)]
    )
    assert sample.exit_code == 0, (sample.output, sample.exception)
    theta = az.from_netcdf(result).posterior.theta
    assert theta.sizes["parameter"] == 2 and theta.size == 2 * 20
    assert np.isfinite(theta.values).all()


def test_an_unnormalised_npe_is_sampled_by_mcmc_as_nle_is(trained, tmp_path):
    """An energy model declares an unnormalised density: its posterior is sampled in chains,
    with R-hat and ESS, and diagnose says up front that it runs MCMC per fresh simulation."""
    import arviz as az

    _, bank, _, _ = trained
    model, result = tmp_path / "ebm.safetensors", tmp_path / "p.nc"
    train = CliRunner().invoke(
        main,
        ["train", str(bank), "-o", str(model), "--estimator", "ebm", "--epochs", "2",
         "--device", "cpu", "--seed", "0"],
    )  # fmt: skip
    assert train.exit_code == 0, (train.output, train.exception)
    sample = CliRunner().invoke(
        main, ["sample", str(model), "--observed", str(OBSERVED), "-n", "40", "-o", str(result)]
    )
    assert sample.exit_code == 0, (sample.output, sample.exception)
    idata = az.from_netcdf(result)
    assert idata.posterior.theta.shape == (2, 20, 2)  # two chains of 20 draws
    assert {"r_hat", "ess"} <= set(idata.sample_stats.data_vars)
    diagnosed = sbitk_cli("diagnose", model, "--bank", bank, "-o", tmp_path / "r.html",
                          "--num-simulations", "10", "--num-posterior-samples", "20")  # fmt: skip
    assert diagnosed.returncode in (0, 1), diagnosed.stderr
    assert diagnosed.stderr.startswith(
        "note: an NPE posterior is sampled by MCMC for each of the 10"
    )


def test_existing_outputs_need_force(trained, tmp_path):
    _, bank, model, _ = trained
    target = tmp_path / "m.safetensors"
    target.write_text("precious\n")
    result = CliRunner().invoke(
        main, ["train", str(bank), "-o", str(target), "--estimator", "gaussian", "--epochs", "1"]
    )
    _one_line_error(result, str(target), "--force")
    assert target.read_text() == "precious\n"
    forced = CliRunner().invoke(
        main,
        ["train", str(bank), "-o", str(target), "--estimator", "gaussian", "--epochs", "1",
         "--force", "--device", "cpu"],
    )  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert "trained NPE (gaussian) in 1 epochs" in forced.stdout
    report = tmp_path / "r.html"
    report.write_text("old report\n")
    diag = CliRunner().invoke(
        main, ["diagnose", str(model), "--bank", str(bank), "-o", str(report)]
    )
    _one_line_error(diag, "--force")
    assert report.read_text() == "old report\n"


def test_run_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "bank.zarr").mkdir()
    result = CliRunner().invoke(
        main, ["run", "two_moons", "--observed", str(OBSERVED), "-o", str(tmp_path)]
    )
    _one_line_error(result, "manifest.json", "--force")


def test_iid_rows_need_an_nle_model(trained, tmp_path):
    _, _, model, _ = trained
    obs = _write_csv(tmp_path / "t.csv", "x[0],x[1]", "0.1,0.2", "0.1,0.3")
    result = CliRunner().invoke(
        main, ["sample", str(model), "--observed", str(obs), "--iid", "-o", str(tmp_path / "o.nc")]
    )
    _one_line_error(result, "NLE")


def test_a_bank_that_is_not_a_bank_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path), "-o", str(tmp_path / "m.st")])
    _one_line_error(result, str(tmp_path))


def test_bad_device_is_a_one_line_error(trained, tmp_path):
    _, _, model, _ = trained
    result = CliRunner().invoke(
        main,
        ["sample", str(model), "--observed", str(OBSERVED), "-o", str(tmp_path / "o.nc"),
         "--device", "tpu:9"],
    )  # fmt: skip
    _one_line_error(result, "tpu:9")


def test_sample_in_process_matches_the_seed(trained, tmp_path):
    _, bank, model, _ = trained
    outs = []
    for name in ("a.nc", "b.nc"):
        result = CliRunner().invoke(
            main,
            ["sample", str(model), "--observed", str(OBSERVED), "-n", "50", "-o",
             str(tmp_path / name), "--bank", str(bank), "--seed", "7", "--device", "cpu"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        import arviz as az

        outs.append(az.from_netcdf(tmp_path / name).posterior.theta.values)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert torch.isfinite(torch.as_tensor(outs[0])).all()


def test_train_defaults_are_the_engines_size_dependent_ones(trained, tmp_path):
    """Without --batch-size / --learning-rate the engine's rule applies; given values win."""
    from sbitk.io.modelfile import load_model

    _, bank, _, _ = trained
    runs = {
        "default": ([], 512, 2e-3),
        "given": (["--batch-size", "64", "--learning-rate", "1e-3"], 64, 1e-3),
    }
    for name, (extra, batch, lr) in runs.items():
        target = tmp_path / f"{name}.safetensors"
        args = ["train", str(bank), "-o", str(target), "--estimator", "gaussian", "--epochs",
                "1", "--device", "cpu", *extra]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        history = load_model(target).history
        assert history["batch_size"] == batch, name
        assert history["learning_rate"] == [pytest.approx(lr)], name
        shown = CliRunner().invoke(main, ["inspect", str(target)])
        assert f"optimiser: batches of {batch}, learning rate {lr:.3g} to {lr:.3g}" in shown.output


def test_estimator_options_reach_the_estimator_and_bad_ones_are_one_line(trained, tmp_path):
    from sbitk.io.modelfile import read_metadata

    _, bank, _, _ = trained
    model = tmp_path / "m.safetensors"
    args = ["train", str(bank), "--estimator", "nsf", "--epochs", "1", "-o", str(model)]
    ok = CliRunner().invoke(main, [*args, "-O", "hidden_features=[16]", "-O", "transforms=2",
                                   "-O", "activation=elu"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    config = read_metadata(model)["estimator"]["config"]
    assert (config["hidden_features"], config["transforms"], config["activation"]) == (
        [16],
        2,
        "elu",
    )
    bad = CliRunner().invoke(main, [*args, "--force", "-O", "transforms"])
    assert bad.exit_code == 2 and "expected KEY=VALUE, got 'transforms'" in bad.output
    unknown = CliRunner().invoke(main, [*args, "--force", "-O", "wings=2"])
    _one_line_error(unknown, "wings")


def test_training_options_reach_the_engine_and_bad_ones_are_one_line(trained, tmp_path):
    from sbitk.io.modelfile import load_model

    _, bank, _, _ = trained
    model = tmp_path / "m.safetensors"
    args = ["train", str(bank), "--estimator", "gaussian", "--epochs", "6", "-o", str(model),
            "--device", "cpu"]  # fmt: skip
    options = ["-T", "schedule=anneal", "-T", "lr_patience=1", "-T", "anneal_fraction=0.5",
               "-T", "min_lr=1e-4"]  # fmt: skip
    ok = CliRunner().invoke(main, [*args, *options])
    assert ok.exit_code == 0, ok.output
    history = load_model(model).history
    # The cosine starts once the loss stalls for an epoch, at the latest in epoch
    # floor(6 / 1.5) = 4 so that it ends by the sixth: training ends on it either way.
    assert history["stop_reason"] == "annealed to min_lr"
    assert history["learning_rate"][-1] < history["learning_rate"][0]
    reserved = CliRunner().invoke(main, [*args, "--force", "-T", "seed=2"])
    assert reserved.exit_code == 2 and "seed has a setting of its own: --seed" in reserved.output
    bad = CliRunner().invoke(main, [*args, "--force", "-T", "patience"])
    assert bad.exit_code == 2 and "expected KEY=VALUE, got 'patience'" in bad.output
    _one_line_error(CliRunner().invoke(main, [*args, "--force", "-T", "wings=2"]), "wings")
    _one_line_error(
        CliRunner().invoke(main, [*args, "--force", "-T", "patience=2.5"]),
        "'patience' must be int or None, got 2.5",
    )


def test_nle_on_a_simulator_of_trials_learns_one_trial_and_says_so(tmp_path):
    """slcp's x is nothing but four i.i.d. points: train says NLE learned one, inspect too."""
    bank = tmp_path / "slcp.zarr"
    simulate("slcp", 200, seed=0, workers=1, bank=bank, progress=False)
    model = tmp_path / "nle.safetensors"
    args = ["train", str(bank), "-o", str(model), "--method", "nle", "--estimator", "gaussian",
            "--epochs", "1", "--device", "cpu"]  # fmt: skip
    trained = CliRunner().invoke(main, args)
    assert trained.exit_code == 0, trained.output
    assert "trained NLE (gaussian, of one trial: x holds 4 i.i.d. trials) in 1 epochs" in (
        trained.output
    )
    shown = CliRunner().invoke(main, ["inspect", str(model)])
    assert "NLE (likelihood estimator gaussian, of one trial: x holds 4 i.i.d. trials)" in (
        shown.output
    )
    assert "outputs: x[0,0], x[0,1]," in shown.output  # x's names, all eight of them


def test_a_model_learned_on_log_x_says_so_in_train_and_inspect(tmp_path):
    """lotka_volterra's populations are positive and right-skewed: learned as log x."""
    bank = tmp_path / "lv.zarr"
    simulate("lotka_volterra", 300, seed=0, workers=1, bank=bank, progress=False)
    model = tmp_path / "npe.safetensors"
    args = ["train", str(bank), "-o", str(model), "--estimator", "gaussian", "--epochs", "1",
            "--device", "cpu"]  # fmt: skip
    trained = CliRunner().invoke(main, args)
    assert trained.exit_code == 0, trained.output
    # Not the initial states (prey[0], predator[0]: 30 and 1 times noise, not skewed), nor, in
    # these 300 rows, prey[4] and prey[6], whose log is more skewed (extinct prey, clipped at
    # 10^-10); all 18 at 10,000 rows.
    said = "log x for 16 output(s): prey[1], prey[2], prey[3], …) in 1 epochs"
    assert f"trained NPE (gaussian; {said}" in trained.output
    shown = CliRunner().invoke(main, ["inspect", str(model)])
    assert "NPE (posterior estimator gaussian; log x for 16 output(s): prey[1]," in shown.output
    plain = CliRunner().invoke(main, [*args, "--force", "-O", "log_x=false"])
    assert plain.exit_code == 0 and "trained NPE (gaussian) in 1 epochs" in plain.output
