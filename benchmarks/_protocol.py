"""What the benchmark scripts share: the simulation bank, timing, sbi's prior, resumable CSVs and
the reference posterior samples that ship with the sbibm package.

The scripts import it as ``from _protocol import ...``: run as ``python benchmarks/NAME.py``,
their folder is first on ``sys.path``.

References:
    Lueckmann et al., "Benchmarking Simulation-Based Inference", AISTATS 2021, arXiv:2101.04653.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sbitk

#: Reference samples per observation in the sbibm package, and its observations per task.
SBIBM_SAMPLES = 10_000
SBIBM_OBSERVATIONS = tuple(range(1, 11))


def bank(task: str, budget: int, seed: int):
    """``budget`` simulations of ``task`` from its prior: (simulator, θ (N, D_θ), x (N, D_x))."""
    sim = sbitk.get_simulator(task)
    g = torch.Generator().manual_seed(seed)
    theta = sim.prior.sample(budget, g)
    return sim, theta, sim(theta, g)


def publish(text: str, markdown: str | None) -> None:
    """Print a results table, and write it to ``markdown`` when a path is given."""
    print()
    print(text)
    if markdown:
        Path(markdown).write_text(text)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock time in seconds."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def warm_up_torch() -> None:
    """Pay torch's once-per-process imports before anything is timed.

    Torch imports its compiler stack (about 1.3 s) when the first optimizer is built; without
    this, whichever run is timed first would pay it.
    """
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


def sbi_prior(spec: dict, device: str = "cpu"):
    """The prior as a torch distribution sbi accepts, on ``device`` (sbi's training device)."""
    from sbi.utils import BoxUniform

    def tensor(key: str) -> torch.Tensor:
        return torch.tensor(spec[key], device=device)

    if spec["type"] == "box_uniform":
        return BoxUniform(tensor("low"), tensor("high"))
    if spec["type"] == "mvn":
        return torch.distributions.MultivariateNormal(tensor("loc"), tensor("covariance"))
    if spec["type"] == "normal":
        return torch.distributions.Independent(
            torch.distributions.Normal(tensor("loc"), tensor("scale")), 1
        )
    raise SystemExit(f"no sbi prior for spec type {spec['type']!r}")


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file written by :func:`append_row` (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path: Path, fields: Iterable[str], row: dict) -> None:
    """Append one row, writing the header first when the file is new.

    A run's row is written only once it has finished, so a rerun that skips the rows present
    resumes an interrupted benchmark.
    """
    new = not path.is_file()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != list(fields):
            raise SystemExit(
                f"{path} has the columns {header}, not this benchmark's {list(fields)}: "
                "pass another --csv"
            )
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, list(fields))
        if new:
            writer.writeheader()
        writer.writerow(row)


def sbibm_files(task: str) -> Path | None:
    """The folder of ``task``'s files in the installed sbibm package, or ``None``.

    The folder is found from the distribution's metadata, without importing sbibm: it pins an
    old sbi, and ``benchmarks/sbibm.py`` would shadow it for a script run from that folder.
    """
    try:
        root = Path(str(distribution("sbibm").locate_file("sbibm")))
    except PackageNotFoundError:
        return None
    folder = root / "tasks" / task / "files"
    return folder if folder.is_dir() else None


def has_sbibm_reference(task: str) -> bool:
    """Whether the sbibm package ships reference posterior samples for ``task``."""
    folder = sbibm_files(task)
    return folder is not None and all(
        (folder / f"num_observation_{k}" / "reference_posterior_samples.csv.bz2").is_file()
        for k in SBIBM_OBSERVATIONS
    )


def sbibm_reference(task: str, k: int) -> torch.Tensor:
    """The sbibm package's reference posterior samples (10000, D_θ) for observation ``k``."""
    folder = sbibm_files(task)
    if folder is None:
        raise SystemExit(
            f"no sbibm reference samples for {task!r}: install the package's files with "
            "`pip install --no-deps sbibm==1.1.0`"
        )
    path = folder / f"num_observation_{k}" / "reference_posterior_samples.csv.bz2"
    samples = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float32)
    return torch.from_numpy(samples)
