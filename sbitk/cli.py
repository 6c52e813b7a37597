"""The ``sbitk`` command line: simulate, and look at simulators and files.

Each command is a click command attached to the :data:`main` group; later steps of the chain
(``train``, ``sample``, ``diagnose``, ``run``) attach the same way. Heavy modules (torch, zarr,
dask) are imported inside the commands, so ``sbitk --help`` stays fast.

Exit codes: 0 success, 1 a check that failed, 2 a usage or input error. Every
:class:`~sbitk.errors.SbitkError` becomes one line ``error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from sbitk import __version__
from sbitk.errors import SbitkError, SimulatorError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: How long `--scheduler` waits for the scheduler to answer.
DASK_CONNECT_TIMEOUT = "20s"


class _Group(click.Group):
    """A click group that turns package errors into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SbitkError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="sbitk")
def main() -> None:
    """sbitk: simulation-based inference from the command line.

    \b
    Example:
      sbitk simulators list
      sbitk simulate two_moons -n 20000 -o runs/demo/bank.zarr --seed 0
      sbitk inspect runs/demo/bank.zarr
    """


# ---- simulators ------------------------------------------------------------------------------
def load_simulator(spec: str):
    """Find a simulator by registered name, or by ``FILE.py:NAME`` / ``MODULE:NAME``.

    The second form imports the file or module first (its ``@sbitk.simulator`` decorators
    register what it defines), then takes ``NAME`` from it or from the registry.
    """
    from sbitk.simulation.registry import get_simulator
    from sbitk.simulation.simulator import Simulator

    if ":" not in spec:
        return get_simulator(spec)
    source, _, name = spec.rpartition(":")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise SimulatorError(f"simulator file {source!r} not found (from {spec!r})")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        module_name = f"sbitk_user_{path.stem}_{digest}"
        module = sys.modules.get(module_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            try:
                module_spec.loader.exec_module(module)
            except SbitkError:
                raise
            except Exception as exc:
                del sys.modules[module_name]
                raise SimulatorError(f"importing {source!r} failed: {exc}") from exc
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise SimulatorError(
                f"cannot import module {source!r} (from {spec!r}): {exc}"
            ) from exc
    obj = getattr(module, name, None)
    if isinstance(obj, Simulator):
        return obj
    return get_simulator(name)


def _format_spec(spec: dict) -> str:
    """A prior spec in a few words, numbers rounded."""

    def num(v):
        if isinstance(v, list):
            if len(v) == 1:
                return num(v[0])
            if v and all(x == v[0] for x in v) and not isinstance(v[0], list):
                return f"{num(v[0])} (×{len(v)})"
            return "[" + ", ".join(num(x) for x in v) + "]"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    kind = spec.get("type", "?")
    if kind == "product":
        return " × ".join(_format_spec(c) for c in spec["components"])
    if kind == "torch":
        params = ", ".join(f"{k}={num(v)}" for k, v in spec.get("params", {}).items())
        return f"torch.{spec.get('class')}({params})"
    args = ", ".join(f"{k}={num(v)}" for k, v in spec.items() if k != "type")
    return f"{kind}({args})"


@main.group()
def simulators() -> None:
    """List the simulators that can be run, or show one.

    \b
    Example:
      sbitk simulators list
      sbitk simulators show two_moons
    """


@simulators.command("list")
def simulators_list() -> None:
    """List registered simulators with their dimensions.

    \b
    Example:
      sbitk simulators list
    """
    from sbitk.simulation.registry import available, get_simulator

    names = available()
    if not names:
        click.echo("no simulators registered")
        return
    width = max(len(n) for n in [*names, "name"])
    click.echo(f"{'name':<{width}}  {'D_theta':>7}  {'D_x':>5}  description")
    for name in names:
        try:
            sim = get_simulator(name)
        except SbitkError as exc:
            click.echo(f"{name:<{width}}  {'-':>7}  {'-':>5}  (failed to load: {exc})")
            continue
        summary = (sim.description.strip().splitlines() or [""])[0]
        if len(summary) > 70:
            summary = summary[:69] + "…"
        click.echo(f"{name:<{width}}  {sim.theta_dim:>7}  {sim.x_dim:>5}  {summary}")


@simulators.command("show")
@click.argument("name")
def simulators_show(name: str) -> None:
    """Show a simulator's parameters with their priors, its outputs and description.

    NAME is a registered name, or FILE.py:NAME for a simulator defined in a script.

    \b
    Example:
      sbitk simulators show two_moons
      sbitk simulators show my_sims.py:my_model
    """
    sim = load_simulator(name)
    click.echo(f"{sim.name} (version {sim.version})")
    if sim.description:
        for line in sim.description.strip().splitlines():
            click.echo(f"  {line.strip()}".rstrip())
    click.echo(f"parameters (D_theta = {sim.theta_dim}):")
    width = max(len(k) for k in [*sim.parameters, *sim.outputs])
    for key, prior in sim.parameters.items():
        click.echo(f"  {key:<{width}}  dim {prior.dim:<3} prior {_format_spec(prior.spec())}")
    click.echo(f"outputs (D_x = {sim.x_dim}):")
    for key, shape in sim.outputs.items():
        click.echo(f"  {key:<{width}}  shape {tuple(shape)}")
    click.echo(f"vectorized: {'yes' if sim.vectorized else 'no (run row by row)'}")
    click.echo(f"reference posterior: {'yes' if sim.reference_posterior else 'no'}")


# ---- simulate --------------------------------------------------------------------------------
@main.command()
@click.argument("name")
@click.option("-n", "--num-simulations", "n", type=click.IntRange(min=1), required=True,
              help="Rows to simulate (to add, with --append).")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Bank directory (a Zarr store).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes [default: the available cores].")  # fmt: skip
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run on the Dask cluster of this scheduler, e.g. tcp://host:8786.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Rows per batch and per chunk [default: from N, or the bank's].")  # fmt: skip
@click.option("--append", is_flag=True, help="Add the rows to an existing bank.")
@click.option("--force", is_flag=True, help="Delete an existing bank and start over.")
def simulate(
    name: str,
    n: int,
    output: Path,
    seed: int,
    workers: int | None,
    scheduler: str | None,
    batch_size: int | None,
    append: bool,
    force: bool,
) -> None:
    """Simulate NAME into a bank, then print its summary.

    NAME is a registered simulator (see `sbitk simulators list`), or FILE.py:NAME for one
    defined in a script. When the bank exists for the same simulator and seed, the run resumes:
    only batches not yet written are simulated. --force starts over, --append adds rows.

    \b
    Example:
      sbitk simulate two_moons -n 20000 -o runs/demo/bank.zarr --seed 0
      sbitk simulate slcp -n 100000 -o slcp.zarr --scheduler tcp://10.0.0.5:8786
    """
    from sbitk.simulation.bank import Bank
    from sbitk.simulation.runner import SimulationFailureWarning
    from sbitk.simulation.runner import simulate as run

    if force and append:
        raise click.UsageError("--force and --append exclude each other")
    sim = load_simulator(name)
    if not force and (output / "zarr.json").is_file():
        existing = Bank.open(output)
        if existing.simulator_name != sim.name or existing.seed != seed:
            pass  # the runner explains the mismatch
        elif append:
            click.echo(f"appending {n} rows to {output} ({len(existing)} rows)", err=True)
        elif existing.planned == n and existing.complete:
            click.echo(f"{output} is already complete; nothing to simulate", err=True)
        elif existing.planned == n:
            click.echo(
                f"resuming {output}: {len(existing)} of {n} rows were simulated before", err=True
            )
    with warnings.catch_warnings():
        # The summary printed below reports failures in full.
        warnings.simplefilter("ignore", SimulationFailureWarning)
        kwargs = {
            "seed": seed,
            "bank": output,
            "batch_size": batch_size,
            "append": append,
            "overwrite": force,
        }
        if scheduler:
            with _dask_client(scheduler) as client:
                bank = run(sim, n, client=client, **kwargs)
        else:
            bank = run(sim, n, workers=workers, **kwargs)
    click.echo(bank.summary())


def _dask_client(address: str):
    try:
        from distributed import Client
    except ImportError as exc:
        raise SbitkError(
            "--scheduler needs Dask: pip install 'sbitk[dask]' (dask[distributed])"
        ) from exc
    try:
        return Client(address, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SbitkError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from exc


# ---- inspect ---------------------------------------------------------------------------------
def _zarr_attrs(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes") if isinstance(meta, dict) else None


def _is_bank(path: Path) -> bool:
    from sbitk.simulation.bank import FORMAT

    attrs = _zarr_attrs(path) if path.is_dir() else None
    return bool(attrs) and attrs.get("format") == FORMAT


def _describe_bank(path: Path) -> str:
    from sbitk.simulation.bank import Bank

    return Bank.open(path).summary()


#: What `sbitk inspect` recognises, tried in order: (kind, test, describe). A new file type
#: (model file, results) is one more row.
INSPECTORS: list[tuple[str, Callable[[Path], bool], Callable[[Path], str]]] = [
    ("simulation bank", _is_bank, _describe_bank),
]


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def inspect(path: Path) -> None:
    """Say what a file holds: for a simulation bank, its summary.

    \b
    Example:
      sbitk inspect runs/demo/bank.zarr
    """
    for _, test, describe in INSPECTORS:
        if test(path):
            click.echo(describe(path))
            return
    kinds = ", ".join(kind for kind, _, _ in INSPECTORS)
    raise SbitkError(f"cannot inspect {path}: it is none of the known kinds ({kinds})")


if __name__ == "__main__":  # pragma: no cover
    main()
