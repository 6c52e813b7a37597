"""Bad sizes, outputs that are inputs, missing devices and damaged files: one line, exit 2.

Each case once ended in an out-of-memory kill, a hang, a traceback, or a file overwritten by
its own output. The commands run in-process with click's runner (they fail before any heavy
work); the size cases also in a subprocess, since a hang or a kill is what they guard against.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sbitk.cli import main
from sbitk.inference.training import TrainConfig
from sbitk.simulation.bank import Bank
from sbitk.simulation.runner import simulate

ROOT = Path(__file__).resolve().parents[1]
OBSERVED = ROOT / "examples" / "two_moons_observed.csv"
HUGE = str(10**12)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, *fragments):
    """Exit 2 with one line ``error: ...`` on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two_moons bank and a quickly trained Gaussian NPE model on it."""
    from sbitk import workflow

    root = tmp_path_factory.mktemp("hardening")
    bank = root / "bank.zarr"
    simulate("two_moons", 300, seed=0, bank=bank, workers=1, progress=False)
    model = root / "model.safetensors"
    config = TrainConfig(max_epochs=2, progress=False, device="cpu")
    workflow.train(bank, model, estimator="gaussian", config=config)
    return root, bank, model


# ---- sizes checked up front ------------------------------------------------------------------
@pytest.mark.parametrize("n", [HUGE, str(2**63)])
def test_a_simulation_too_large_to_store_fails_at_once_in_a_subprocess(tmp_path, n):
    out = tmp_path / "bank.zarr"
    script = Path(sys.executable).parent / "sbitk"
    cmd = [str(script), "simulate", "two_moons", "-n", n, "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TQDM_DISABLE": "1"})  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "on disk" in lines[0] and "-n" in lines[0], result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_batch_too_large_to_hold_fails_before_the_bank_is_made(tmp_path):
    out = tmp_path / "runs" / "bank.zarr"
    result = _invoke("simulate", "two_moons", "-n", 1000, "--batch-size", 10**9, "-o", out)
    _one_line(result, "batch of 1000000000 rows", "memory", "--batch-size")
    assert not (tmp_path / "runs").exists()


def test_too_many_batches_are_refused(tmp_path):
    result = _invoke("simulate", "two_moons", "-n", 10**7, "--batch-size", 1, "-o",
                     tmp_path / "b.zarr")  # fmt: skip
    _one_line(result, "batches", "more than the 1000000")
    assert list(tmp_path.iterdir()) == []


def test_sample_and_diagnose_refuse_draws_that_cannot_be_held(trained, tmp_path):
    _, bank, model = trained
    out = tmp_path / "out" / "posterior.nc"
    result = _invoke("sample", model, "--observed", OBSERVED, "-n", HUGE, "-o", out)
    _one_line(result, f"sampling {HUGE} draws", "memory", "(-n)")
    report = tmp_path / "out" / "report.html"
    result = _invoke("diagnose", model, "--bank", bank, "--num-simulations", HUGE, "-o", report)
    _one_line(result, f"each of {HUGE} simulations", "memory", "--num-simulations")
    assert not out.exists() and not report.exists()


def test_inspect_of_a_half_made_huge_bank_is_one_line(tmp_path):
    """A bank planned at 10^12 rows by a run killed before it wrote a row (as earlier versions
    left them): reading its plan would take memory without bound."""
    path = tmp_path / "huge.zarr"
    desc = {"name": "two_moons", "version": "1", "parameter_names": ["a", "b"],
            "output_names": ["x", "y"], "prior": {"type": "box_uniform", "low": [-1, -1],
                                                  "high": [1, 1]}}  # fmt: skip
    Bank._create(path, simulator=desc, seed=0, batch_size=10_000, sbitk_version="0")
    Bank._open(path, mode="r+")._extend(10**12)
    _one_line(_invoke("inspect", path), "plans 1000000000000 rows", "--force")


# ---- an output is never its own input ---------------------------------------------------------
def test_force_never_lets_an_output_overwrite_its_input(trained):
    _, bank, model = trained
    before = model.read_bytes()
    observed = OBSERVED.read_bytes()
    cases = [
        (("sample", model, "--observed", OBSERVED, "-o", model, "--force"), "model file"),
        (("sample", model, "--observed", OBSERVED, "-o", OBSERVED, "--force"), "observed data"),
        (("diagnose", model, "--bank", bank, "-o", model, "--force"), "model file"),
        (("diagnose", model, "--bank", bank, "-o", bank, "--force"), "the bank"),
        (("train", bank, "-o", bank / "m.safetensors", "--force"), "lies inside the bank"),
    ]
    for args, fragment in cases:
        _one_line(_invoke(*args), fragment, "choose another output")
    assert model.read_bytes() == before and OBSERVED.read_bytes() == observed
    assert Bank.open(bank).complete and not (bank / "m.safetensors").exists()


def test_train_refuses_a_model_output_that_is_not_safetensors(trained, tmp_path):
    _, bank, _ = trained
    result = _invoke("train", bank, "-o", tmp_path / "x.nc", "--estimator", "gaussian")
    _one_line(result, "must end in '.safetensors'", "x.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---- one line where a traceback was ---------------------------------------------------------
def test_simulate_under_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = _invoke("simulate", "two_moons", "-n", 100, "-o", tmp_path / "file" / "b.zarr")
    _one_line(result, "cannot create a bank", "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_simulate_into_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = _invoke("simulate", "two_moons", "-n", 100, "-o", locked / "b.zarr")
    _one_line(result, "cannot create a bank", "not writable")


def test_a_read_only_directory_is_refused_even_for_root(tmp_path, monkeypatch):
    """Root passes ``os.access``; a read-only mount still refuses files: probe by creating."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    result = _invoke("simulate", "two_moons", "-n", 100, "-o", tmp_path / "sub" / "b.zarr")
    _one_line(result, "cannot create a bank", "not writable")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_a_device_this_machine_lacks_is_named(trained, tmp_path):
    _, bank, model = trained
    out = tmp_path / "p.nc"
    result = _invoke("sample", model, "--observed", OBSERVED, "-o", out, "--device", "mps")
    _one_line(result, "'mps'", "no mps device")
    result = _invoke("train", bank, "-o", tmp_path / "m.safetensors", "--device", "mps")
    _one_line(result, "'mps'", "no mps device")


def test_sample_of_a_bank_says_it_is_a_bank(trained, tmp_path):
    _, bank, _ = trained
    result = _invoke("sample", bank, "--observed", OBSERVED, "-o", tmp_path / "p.nc")
    _one_line(result, "is a simulation bank", "not a model file")


# ---- run checks every option first ------------------------------------------------------------
def _two_rows(tmp_path) -> Path:
    path = tmp_path / "two.csv"
    path.write_text("x[0],x[1]\n0.1,0.2\n0.0,0.1\n")
    return path


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--iid"], "needs an NLE or NRE model"),
        (["--device", "mps" if not torch.backends.mps.is_available() else "cuda:99"], "device"),
        (["--method", "nle", "--estimator", "gan"], "samples only"),
        (["--num-samples", HUGE], "(--num-samples)"),
        (["-n", HUGE], "on disk"),
    ],
)
def test_run_checks_every_option_before_the_first_step(tmp_path, extra, fragment):
    out = tmp_path / "run"
    result = _invoke("run", "two_moons", "--observed", _two_rows(tmp_path), "-o", out, *extra)
    _one_line(result, fragment)
    assert not out.exists()


# ---- damaged banks ---------------------------------------------------------------------------
def test_a_deleted_chunk_is_detected_and_simulated_again(tmp_path):
    path = tmp_path / "bank.zarr"
    whole = simulate("two_moons", 5000, seed=1, bank=path, batch_size=1250, workers=1,
                     progress=False)  # fmt: skip
    x = whole.x.clone()
    (path / "x" / "c" / "1" / "0").unlink()
    damaged = Bank.open(path)
    assert damaged.damaged() == {1: ("x",)}
    assert len(damaged) == 3750 and not damaged.complete
    assert torch.isfinite(damaged.x).all()  # the lost rows are left out, not read as NaN
    text = _invoke("inspect", path).output
    assert "3750 of 5000 planned" in text and "damaged" in text and "100.00%" in text
    # Training on it warns; rerunning the same simulation repairs it bit for bit.
    result = _invoke("train", path, "-o", tmp_path / "m.safetensors", "--estimator", "gaussian",
                     "--epochs", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: training on an incomplete bank" in result.stderr
    assert "3750 of 5000 planned rows" in result.stderr
    repaired = simulate("two_moons", 5000, seed=1, bank=path, workers=1, progress=False)
    assert repaired.complete and repaired.damaged() == {}
    assert torch.equal(repaired.x, x)


# ---- Ctrl-C ----------------------------------------------------------------------------------
SLOW_SIMULATOR = """
import time

import torch

import sbitk


@sbitk.simulator("slow_rows", parameters={"a": sbitk.BoxUniform(0.0, 1.0)}, outputs={"x": ()},
                 vectorized=False, register=False)
def slow_rows(theta, generator):
    time.sleep(0.02)
    return theta[0] + torch.randn((), generator=generator)
"""


def _interrupt_simulate(tmp_path: Path, bank: Path, ready) -> subprocess.CompletedProcess:
    """Run ``sbitk simulate`` on two workers, press Ctrl-C once ``ready()``, and wait."""
    source = tmp_path / "slow_sims.py"
    source.write_text(SLOW_SIMULATOR)
    script = Path(sys.executable).parent / "sbitk"
    args = [f"{source}:slow_rows", "-n", "400", "-o", str(bank), "--workers", "2"]
    # A shell that starts jobs in the background hands them SIGINT ignored: restore it first.
    launcher = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); " + (
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    cmd = [sys.executable, "-c", launcher, str(script), "simulate", *args, "--batch-size", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # Its own process group, which gets the signal as a terminal's Ctrl-C reaches every process
    # of the foreground group: the CLI, the fork server, the resource tracker and the workers.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _one_interrupted_line(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 130, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("interrupted: rerun the same command to resume"), result.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_ctrl_c_in_simulate_with_workers_prints_one_line_and_the_run_resumes(tmp_path):
    bank = tmp_path / "slow.zarr"

    def starting() -> bool:
        # The bank exists just before the workers start; the fork server then imports torch
        # and sbitk for about a second, where a Ctrl-C used to print dozens of lines.
        if (bank / "zarr.json").is_file():
            time.sleep(0.3)
            return True
        return False

    _one_interrupted_line(_interrupt_simulate(tmp_path, bank, starting))

    before = Bank.open(bank).done_batches().sum()  # none, unless the first run got that far

    def some_done() -> bool:  # a batch of this run is done
        with contextlib.suppress(Exception):
            return bool(Bank.open(bank).done_batches().sum() > before)
        return False

    _one_interrupted_line(_interrupt_simulate(tmp_path, bank, some_done))
    kept = Bank.open(bank)
    assert kept.planned == 400 and 0 < len(kept) < 400  # the finished batches are kept

    script = Path(sys.executable).parent / "sbitk"
    source = tmp_path / "slow_sims.py"
    resume = [str(script), "simulate", f"{source}:slow_rows", "-n", "400", "-o", str(bank)]
    done = subprocess.run(
        [*resume, "--workers", "2"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Bank.open(bank).complete and len(Bank.open(bank)) == 400


#: Run in a fresh interpreter: Ctrl-C arrives while the `sbitk` command imports its CLI.
INTERRUPTED_IMPORT = """
import sys

import _sbitk_launcher


class CtrlC:  # a Ctrl-C the moment sbitk.cli starts to load
    def find_spec(self, name, path=None, target=None):
        if name == "sbitk.cli":
            raise KeyboardInterrupt


sys.meta_path.insert(0, CtrlC())
_sbitk_launcher.main()
"""


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130():
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == [
        "interrupted while sbitk was starting; nothing was done"
    ]


def test_the_sbitk_command_is_the_launcher():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="sbitk")
    assert script.value == "_sbitk_launcher:main"


# ---- estimator options, training settings, usage errors ------------------------------------
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--estimator", "nsf", "-O", "features=5"], "features is set by the data"),
        (["--estimator", "ensemble", "-O", "options=3"], "option options takes a mapping"),
        (["--estimator", "ensemble", "-O", "trials=5"], "trials must be None, true, false or"),
        (["--estimator", "flow_matching", "-O", "hidden_features=abc"], "list of sizes"),
        (["--estimator", "gaussian", "-O", "hidden_features=[100000,100000]"], "of memory"),
        (["--estimator", "ensemble", "-O", "members=1000000"], "ask for fewer members"),
        (["--estimator", "diffusion", "-O", "beta_max=Infinity"], "takes a finite number"),
        (["--estimator", "flow_matching", "-O", "bogus=1"], "its options: atol, divergence"),
        (["--method", "nle", "--estimator", "ensemble", "-O", "member=ebm"], "no mixture"),
        (
            ["--method", "nre", "--estimator", "gan"],
            "no classifier (its density is 'none'): use it with NPE",
        ),
        (["--learning-rate", "inf"], "TrainConfig.learning_rate must be a finite number"),
        (["-T", "weight_decay=Infinity"], "TrainConfig.weight_decay must be a finite number"),
    ],
)
def test_bad_estimator_options_and_settings_are_one_line_before_training(
    trained, tmp_path, monkeypatch, options, fragment
):
    from sbitk.simulation import resources

    # 16 GB, on any machine: the sizes asked for above need 40 GB and more
    monkeypatch.setattr(resources, "available_memory", lambda: 16 * 10**9)
    _, bank, _ = trained
    out = tmp_path / "m.safetensors"
    _one_line(_invoke("train", bank, "-o", out, "--epochs", 1, *options), fragment)
    assert not out.exists()


def test_a_bad_option_value_or_a_missing_argument_is_one_line_naming_the_help(trained):
    _, _, model = trained
    result = _invoke("sample", model, "--observed", OBSERVED, "-n", 0, "-o", "never.nc")
    _one_line(result, "'-n' / '--num-samples': 0 is not in the range", "sample --help')")
    _one_line(_invoke("train"), "Missing argument 'BANK'", "train --help')")
    bare = _invoke("simulators")  # a group called bare prints its help, as click does
    assert "Commands:" in bare.output and "list" in bare.output and "error:" not in bare.output


def test_an_estimator_option_named_like_a_method_argument_reaches_the_estimator(trained, tmp_path):
    _, bank, _ = trained
    out = tmp_path / "cvae.safetensors"
    result = _invoke("train", bank, "-o", out, "--epochs", 1, "--estimator", "cvae",
                     "-O", "prior=standard", "-O", "log_x=false")  # fmt: skip
    assert result.exit_code == 0, result.output
    from sbitk.io.modelfile import read_metadata

    assert read_metadata(out)["estimator"]["config"]["prior"] == "standard"


def test_an_nre_model_is_shown_and_recorded_as_nre(trained, tmp_path):
    import arviz as az

    _, bank, _ = trained
    model, result = tmp_path / "nre.safetensors", tmp_path / "nre.nc"
    assert _invoke("train", bank, "--method", "nre", "-o", model, "--epochs", 1).exit_code == 0
    assert "method: NRE (ratio estimator ratio)" in _invoke("inspect", model).output
    sampled = _invoke("sample", model, "--observed", OBSERVED, "-n", 20, "-o", result,
                      "--no-misspecification-check")  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    assert az.from_netcdf(result).posterior.attrs["method"] == "nre"
