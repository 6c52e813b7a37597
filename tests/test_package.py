"""Package-wide rules: no import-time side effects, and layers import only downwards."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sbitk"

# Lowest first. A module may import its own layer and any layer below it, never one above.
# posteriors sits below inference: NPE and NLE build posteriors, a posterior never trains.
LAYERS = [
    "errors",
    "simulation",
    "nn",
    "models",
    "posteriors",
    "inference",
    "diagnostics",
    "io",
    "report",
    "workflow",
    "cli",
]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "sbitk" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_subpackage_is_in_the_layer_table():
    subpackages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert (subpackages | modules) <= set(LAYERS), (subpackages | modules) - set(LAYERS)


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        own = _layer(name)
        if own is None:
            continue
        for imported in _imports(path):
            other = _layer(imported)
            if other is not None and other > own:
                violations.append(f"{name} imports {imported}")
    assert violations == []


def test_layer_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from sbitk.cli import main\nimport sbitk.inference.npe\n")
    assert {_layer(m) for m in _imports(bad)} == {LAYERS.index("cli"), LAYERS.index("inference")}


HEAVY = ["arviz", "matplotlib", "dask", "distributed", "zarr", "sklearn", "pandas", "xarray"]


@pytest.mark.parametrize("module", ["sbitk", "sbitk.simulation"])
def test_import_has_no_side_effects_and_no_heavy_imports(module):
    code = f"""
import json, sys, torch
before = (str(torch.get_default_dtype()), torch.get_num_threads(),
          torch.are_deterministic_algorithms_enabled(), torch.initial_seed())
import {module}
after = (str(torch.get_default_dtype()), torch.get_num_threads(),
         torch.are_deterministic_algorithms_enabled(), torch.initial_seed())
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"same": before == after, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "heavy": []}
