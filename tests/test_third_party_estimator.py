"""An estimator from outside sbitk, end to end: the example package `examples/sbitk_nflows_maf`
is installed (into a folder of its own, put on PYTHONPATH), and the command line trains, samples,
diagnoses and inspects with it; the shared contract test runs over it too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "sbitk_nflows_maf"
OBSERVED = ROOT / "examples" / "two_moons_observed.csv"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed with pip into a fresh folder (its dependencies are ours)."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "pkg"
    shutil.copytree(PACKAGE, source)  # building writes next to the sources: not in the checkout
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--target", str(target), str(source)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return target


def run(site: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "sbitk.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_the_contract_test_covers_the_installed_estimator(site):
    env = {**os.environ, "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "nflows_maf",
           str(ROOT / "tests" / "models" / "test_contract.py")]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "6 passed" in result.stdout, result.stdout[-500:]


@pytest.mark.slow
def test_train_sample_diagnose_inspect_with_the_installed_estimator(site, tmp_path):
    bank, model = tmp_path / "bank.zarr", tmp_path / "maf.safetensors"
    simulated = run(site, "simulate", "two_moons", "-n", "1000", "-o", bank, "--workers", "1")
    assert simulated.returncode == 0, simulated.stderr

    trained = run(site, "train", bank, "--estimator", "nflows_maf", "--epochs", "3", "-o", model)
    assert trained.returncode == 0, trained.stderr
    assert "trained NPE (nflows_maf)" in trained.stdout

    inspected = run(site, "inspect", model)
    assert inspected.returncode == 0, inspected.stderr
    assert "estimator: nflows_maf from sbitk-nflows-maf, exact density" in inspected.stdout

    result = tmp_path / "posterior.nc"
    sampled = run(site, "sample", model, "--observed", OBSERVED, "-n", "200", "-o", result,
                  "--bank", bank)  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    assert result.is_file()

    report = tmp_path / "report.html"
    diagnosed = run(site, "diagnose", model, "--bank", bank, "-o", report,
                    "--num-simulations", "30", "--num-posterior-samples", "50")  # fmt: skip
    assert diagnosed.returncode in (0, 1), diagnosed.stderr
    assert "Traceback" not in diagnosed.stderr and report.is_file()
    assert "coverage" in diagnosed.stdout and "SKIP" not in diagnosed.stdout  # it has a density


@pytest.mark.slow
def test_without_the_package_its_model_file_names_what_to_install(site, tmp_path):
    bank, model = tmp_path / "bank.zarr", tmp_path / "maf.safetensors"
    assert run(site, "simulate", "two_moons", "-n", "300", "-o", bank).returncode == 0
    assert run(site, "train", bank, "--estimator", "nflows_maf", "--epochs", "1",
               "-o", model).returncode == 0  # fmt: skip
    missing = run(tmp_path / "empty", "inspect", model)  # the package is not on the path
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "estimator 'nflows_maf' is not installed" in lines[0]
    assert "'sbitk-nflows-maf'" in lines[0]
