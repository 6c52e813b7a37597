"""What the command line needs is a core dependency: the whole chain runs with every optional
extra made unimportable, and a missing extra is named in one line."""

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OBSERVED = ROOT / "examples" / "two_moons_observed.csv"
#: Top-level modules of the optional extras (and of the peers compared against in benchmarks).
EXTRAS = ("pyarrow", "dask", "distributed", "nflows", "sbi", "zuko", "sbibm")

# ``sys.modules[name] = None`` is Python's own way to make a module unimportable: ``import``
# raises ModuleNotFoundError and ``importlib.util.find_spec`` answers None, as if not installed.
BLOCKER = f"""
import sys

for name in {EXTRAS!r}:
    sys.modules[name] = None
"""


def core_requirements() -> set[str]:
    names = set()
    for req in requires("sbitk") or []:
        if "extra ==" not in req:
            names.add(re.split(r"[\s<>=!\[;~]", req, maxsplit=1)[0].lower())
    return names


def test_what_sample_diagnose_and_run_write_with_is_a_core_dependency():
    assert {"arviz", "h5netcdf", "xarray", "matplotlib", "click", "zarr"} <= core_requirements()
    assert not set(EXTRAS) & core_requirements()


def run_without_extras(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-m", "sbitk.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_the_chain_runs_with_every_extra_unimportable_and_parquet_names_its_extra(tmp_path):
    check = run_without_extras(tmp_path, "--help")
    assert check.returncode == 0, check.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import pyarrow"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "blocker")},
    )  # fmt: skip
    assert "ModuleNotFoundError" in probe.stderr  # the blocker works
    out = tmp_path / "run"
    result = run_without_extras(
        tmp_path, "run", "two_moons", "--observed", str(OBSERVED), "-o", str(out), "-n", "500",
        "--epochs", "2", "--num-samples", "50", "--diagnose-simulations", "20",
        "--diagnose-samples", "20", "--workers", "1", "--estimator", "gaussian",
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "posterior.nc").is_file() and (out / "report.html").is_file()

    # Parquet needs the extra, and says so in one line
    data = tmp_path / "obs.parquet"
    data.write_bytes(b"PAR1")
    result = run_without_extras(
        tmp_path, "sample", str(out / "model.safetensors"), "--observed", str(data),
        "-o", str(tmp_path / "o.nc"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sbitk[parquet]" in lines[0], result.stderr


def _lend_torch(venv: Path, tmp_path: Path) -> None:
    """Make this environment's torch visible in ``venv``, and nothing else of this environment:
    links to its package folders and metadata in a folder of their own, named by a ``.pth``
    file. Installing torch anew took 17 to 30 s (without and with byte-compiling it), and every
    run of `make setup` on a clean machine installs it by tools/install-torch already. What
    torch itself requires is not lent: pip installs it into ``venv`` with sbitk."""
    dist = distribution("torch")
    lent = tmp_path / "torch-site"
    lent.mkdir()
    for top in {f.parts[0] for f in dist.files or []} - {".."}:
        (lent / top).symlink_to(dist.locate_file(top), target_is_directory=True)
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "lent_torch.pth").write_text(f"{lent}\n")


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment with this environment's torch (see :func:`_lend_torch`), then
    sbitk and its simulators from a copy of the source tree, without extras; its bin
    directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _lend_torch(venv, tmp_path)
    source = tmp_path / "source"  # building in a copy writes no build/ or egg-info here
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("sbitk", "simulators"):
        shutil.copytree(ROOT / part, source / part, ignore=skip)
    for part in ("pyproject.toml", "README.md", "_sbitk_launcher.py"):
        shutil.copy(ROOT / part, source / part)
    # Byte-compiling every module installed took 45 s of pip's 66; Python compiles those that
    # the chain imports when it imports them (7 s more for the chain below). `make setup` does
    # byte-compile: where PYTHONDONTWRITEBYTECODE is set, nothing compiled on import is kept,
    # and the whole suite ran 20 % longer without it.
    subprocess.run(
        [*pip, "install", "-q", "--no-compile", str(source), str(source / "simulators")],
        check=True, timeout=900, capture_output=True,
    )  # fmt: skip
    return venv / "bin"


@pytest.mark.slow
def test_a_plain_install_in_a_fresh_environment_runs_the_whole_chain(tmp_path):
    """`pip install sbitk` with no extras, in a venv of its own: simulate, train, sample,
    diagnose and inspect from the command line."""
    bin_dir = _fresh_venv(tmp_path)
    for name in EXTRAS:  # nothing optional came in with it
        probe = subprocess.run([bin_dir / "python", "-c", f"import {name}"], capture_output=True)
        assert probe.returncode != 0, f"{name} is installed in the fresh environment"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    run = subprocess.run(
        [bin_dir / "sbitk", "run", "two_moons", "--observed", str(OBSERVED), "-o", str(out),
         "-n", "500", "--epochs", "2", "--num-samples", "50", "--diagnose-simulations", "20",
         "--diagnose-samples", "20", "--workers", "1", "--estimator", "gaussian"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr
    assert (out / "posterior.nc").is_file() and (out / "report.html").is_file()
    inspect = subprocess.run(
        [bin_dir / "sbitk", "inspect", str(out / "model.safetensors")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert inspect.returncode == 0 and "gaussian" in inspect.stdout, inspect.stderr
