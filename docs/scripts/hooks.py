"""MkDocs hooks of the sbitk site (named in mkdocs.yml under ``hooks``).

Before every build, the calibration pictures of docs/diagnostics.md are drawn again by
docs/scripts/make_figures.py, so that they always show what the current code does. A file is
rewritten only when its bytes change: the committed pictures then stay as they are, and
``mkdocs serve`` does not rebuild in a loop.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.sbitk")
SCRIPTS = Path(__file__).resolve().parent


def on_pre_build(config, **kwargs) -> None:
    spec = importlib.util.spec_from_file_location("make_figures", SCRIPTS / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    start = time.perf_counter()
    out = Path(config["docs_dir"]) / "figures"
    out.mkdir(exist_ok=True)
    changed = 0
    for name, data in make_figures.figures().items():
        path = out / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed += 1
    log.info(
        f"calibration figures drawn in {time.perf_counter() - start:.1f} s, {changed} changed"
    )
