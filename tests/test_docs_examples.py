"""The Python examples of the docs run as written: each ```python block of a page, in order, in
one fresh process per page (so that a page's blocks may build on each other)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Every page with Python blocks: its blocks are complete programs, run in page order.
RUNNABLE = (
    "cli.md",
    "sbi.md",
    "classical.md",
    "flows.md",
    "diagnostics.md",
    "estimators.md",
    "dask.md",
    "inference.md",
    "simulation.md",
    "families/flows.md",
    "families/gaussian.md",
    "families/vae.md",
    "families/gan.md",
    "families/continuous.md",
    "families/energy.md",
    "families/score.md",
    "families/autoregressive.md",
    "families/classical.md",
    "families/ensemble.md",
    "families/ratio.md",
)
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: str | Path) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


@pytest.mark.parametrize("page", RUNNABLE)
def test_every_listed_page_has_examples(page):
    assert blocks(page), f"docs/{page} has no python block"


def test_every_page_with_python_examples_runs_them():
    """Every page with Python blocks is run here: none is left out."""
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if blocks(p)}
    assert pages == set(RUNNABLE)


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE)
def test_the_examples_of_a_page_run(page, tmp_path):
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks(page)))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
