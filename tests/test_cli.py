"""The ``sbitk`` command line, run for real in subprocesses on files on disk."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import zarr
from click.testing import CliRunner

from sbitk import __version__
from sbitk.cli import main
from sbitk.simulation.bank import Bank
from sbitk.simulation.registry import unregister
from sbitk.simulation.runner import SimulationFailureWarning, simulate

SIMS = textwrap.dedent(
    '''
    import torch

    import sbitk


    @sbitk.simulator(
        "cli_blob",
        parameters={"loc": sbitk.Normal(0.0, 2.0, dim=2), "width": sbitk.BoxUniform(0.1, 1.0)},
        outputs={"obs": (3, 2)},
    )
    def blob(theta, generator):
        """Three noisy copies of a 2-D location.

        Fails (NaN) for locations far to the right.
        """
        noise = torch.randn(theta.shape[0], 3, 2, generator=generator)
        x = theta[:, None, :2] + theta[:, None, 2:] * noise
        x[theta[:, 0] > 3.0] = float("nan")
        return x
    '''
)


@pytest.fixture
def sims(tmp_path):
    path = tmp_path / "my_sims.py"
    path.write_text(SIMS)
    return path


def sbitk_cli(*args, cwd=None):
    """Run the installed command line in a fresh process."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    script = Path(sys.executable).parent / "sbitk"  # the installed entry point
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "sbitk.cli"]
    cmd = [*launcher, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _load(path):
    spec = importlib.util.spec_from_file_location("cli_test_sims", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_test_sims"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        # The decorator registered "cli_blob" in this process; leave the registry as it was.
        unregister("cli_blob")
    return module


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_simulate_then_resume_then_inspect(tmp_path, sims):
    bank = tmp_path / "runs" / "bank.zarr"
    args = ["simulate", f"{sims}:cli_blob", "-n", 600, "-o", bank, "--seed", 4]
    first = sbitk_cli(*args, "--workers", 2, "--batch-size", 100)
    assert first.returncode == 0, first.stderr
    assert "cli_blob (version 1)" in first.stdout and "rows        600 of 600" in first.stdout
    assert "nan:" in first.stdout and "loc[0]" in first.stdout  # where the failures lie
    with pytest.warns(SimulationFailureWarning):
        expected = simulate(
            _load(sims).blob, 600, seed=4, workers=1, batch_size=100, progress=False
        )  # the Python API gives the same bank
    got = Bank.open(bank)
    assert torch.equal(got.theta, expected.theta) and torch.equal(got.valid, expected.valid)
    assert got.parameter_names == ["loc[0]", "loc[1]", "width"]
    assert got.output_names[:2] == ["obs[0,0]", "obs[0,1]"] and len(got.output_names) == 6

    # Lose two batches, as if the run had been interrupted: rerunning without --force resumes.
    group = zarr.open_group(str(bank), mode="r+")
    group["done"][2] = False
    group["done"][5] = False
    group["x"][200:300] = 0.0
    resumed = sbitk_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "400 of 600 rows" in resumed.stderr
    again = Bank.open(bank)
    assert torch.equal(again.x.nan_to_num(), expected.x.nan_to_num())

    inspected = sbitk_cli("inspect", bank)
    assert inspected.returncode == 0 and inspected.stdout == resumed.stdout


def test_unknown_simulator_exits_2_with_the_available_names(tmp_path):
    result = sbitk_cli("simulate", "no_such_model", "-n", 10, "-o", tmp_path / "b.zarr")
    _assert_one_line_error(result, "unknown simulator 'no_such_model'", "available:")
    assert "two_moons" in result.stderr
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.slow
def test_simulators_list_and_show(sims):
    listed = sbitk_cli("simulators", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in listed.stdout.splitlines()[1:]}
    assert rows["two_moons"] == ["2", "2"] and rows["slcp"] == ["5", "8"]
    shown = sbitk_cli("simulators", "show", f"{sims}:cli_blob")
    assert shown.returncode == 0, shown.stderr
    for fragment in (
        "cli_blob (version 1)",
        "Three noisy copies of a 2-D location.",
        "parameters (D_theta = 3):",
        "loc    dim 2   prior normal(loc=0 (×2), scale=2 (×2))",
        "width  dim 1   prior box_uniform(low=0.1, high=1)",
        "outputs (D_x = 6):",
        "obs    shape (3, 2)",
    ):
        assert fragment in shown.stdout, shown.stdout


# ---- in process: help texts and usage errors (click's runner, no subprocess) ------------------
@pytest.mark.parametrize(
    "command",
    [
        [],
        ["simulate"],
        ["simulators"],
        ["simulators", "list"],
        ["simulators", "show"],
        ["inspect"],
    ],
)
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and "sbitk " in result.output.split("Example:")[1]


def test_version_and_usage_errors():
    runner = CliRunner()
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and __version__ in version.output
    assert runner.invoke(main, ["simulate", "two_moons", "-o", "x.zarr"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "two_moons", "-n", "0", "-o", "x"]).exit_code == 2
    assert runner.invoke(main, ["no-such-command"]).exit_code == 2
    both = runner.invoke(
        main, ["simulate", "two_moons", "-n", "5", "-o", "x", "--force", "--append"]
    )
    assert both.exit_code == 2 and "exclude each other" in both.output


@pytest.fixture
def runner():
    yield CliRunner()
    unregister("cli_blob")  # loading my_sims.py in this process registered it


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_existing_bank_of_another_seed_needs_force(tmp_path, sims, runner):
    bank = tmp_path / "bank.zarr"
    args = ["simulate", f"{sims}:cli_blob", "-n", "200", "-o", str(bank), "--workers", "1"]
    assert runner.invoke(main, [*args, "--seed", "4"]).exit_code == 0
    _one_line_error(
        runner.invoke(main, [*args, "--seed", "5"]), "seed 4, asked for seed 5", "--force"
    )
    _one_line_error(
        runner.invoke(main, [*args[:3], "300", *args[4:], "--seed", "4"]),
        "asked for 300",
        "--append",
    )
    forced = runner.invoke(main, [*args, "--seed", "5", "--force"])
    assert forced.exit_code == 0 and Bank.open(bank).seed == 5
    done = runner.invoke(main, [*args, "--seed", "5"])
    assert done.exit_code == 0 and "already complete" in done.stderr
    appended = runner.invoke(main, [*args, "--seed", "5", "--append"])
    assert appended.exit_code == 0 and len(Bank.open(bank)) == 400


def test_show_and_inspect_errors_are_one_line(sims, runner):
    _one_line_error(runner.invoke(main, ["simulators", "show", "nope"]), "unknown simulator")
    _one_line_error(runner.invoke(main, ["inspect", str(sims)]), "cannot inspect", "bank")
    _one_line_error(
        runner.invoke(main, ["simulators", "show", "missing.py:x"]), "'missing.py' not found"
    )


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, runner, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("sbitk.cli.DASK_CONNECT_TIMEOUT", "1s")
    args = ["simulate", "two_moons", "-n", "10", "-o", str(tmp_path / "b.zarr")]
    result = runner.invoke(main, [*args, "--scheduler", "tcp://127.0.0.1:9"])
    _one_line_error(result, "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.parametrize(
    ("command", "said"),
    [("train", "no checkpoint"), ("simulate", "finished batches are kept")],
)
def test_an_interrupt_says_what_a_rerun_picks_up(monkeypatch, tmp_path, command, said):

    from sbitk import workflow
    from sbitk.cli import EXIT_INTERRUPTED, main
    from sbitk.simulation import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "train", interrupted)
    monkeypatch.setattr(runner, "simulate", interrupted)
    args = {
        "train": ["train", str(tmp_path / "b.zarr"), "-o", str(tmp_path / "m.safetensors")],
        "simulate": ["simulate", "two_moons", "-n", "100", "-o", str(tmp_path / "b.zarr")],
    }[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert said in result.output
