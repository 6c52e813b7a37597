"""The ``sbitk`` command line: simulate, and look at simulators and files.

Each command is a click command attached to the :data:`main` group; later steps of the chain
(``train``, ``sample``, ``diagnose``, ``run``) attach the same way. Heavy modules (torch, zarr,
dask) are imported inside the commands, so ``sbitk --help`` stays fast.

Exit codes: 0 success, 1 a check that failed, 2 a usage or input error. Every
:class:`~sbitk.errors.SbitkError` becomes one line ``error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from sbitk import __version__
from sbitk.errors import SbitkError, SimulatorError
from sbitk.inference.abc import DEFAULT_PARTICLES, DEFAULT_QUANTILE, ABCConfig
from sbitk.inference.sequential import SEQUENTIAL_NPE
from sbitk.workflow import RunOptions

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: How long `--scheduler` waits for the scheduler to answer.
DASK_CONNECT_TIMEOUT = "20s"


#: What a rerun of an interrupted command picks up (training keeps no checkpoint: it starts over).
RESUMES = {
    "simulate": "rerun the same command to resume: the finished batches are kept",
    "run": "rerun the same command: the bank's finished batches are kept, training starts over",
    "abc": "rerun the same command: ABC starts over",
    "train": "training keeps no checkpoint; rerun the command to start it over",
}


class _Group(click.Group):
    """A click group that turns package errors, and a subcommand's bad option values or
    missing arguments, into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SbitkError as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(EXIT_USAGE)
        except click.UsageError as exc:  # a bad option value or a missing argument
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise  # a group called bare: click prints its help
            command = exc.ctx.command_path if exc.ctx else "sbitk"
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see '{command} --help')", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo(f"interrupted: {RESUMES.get(ctx.invoked_subcommand, 'nothing was kept')}",
                       err=True)  # fmt: skip
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="sbitk")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              envvar="SBITK_THREADS",
              help="CPU threads for torch in train, sample, diagnose and run (env SBITK_THREADS). "
              "The networks here are small: one thread is usually fastest, and more threads "
              "on a busy machine can be many times slower.")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, threads: int) -> None:
    """sbitk: simulation-based inference from the command line.

    \b
    Example:
      sbitk simulators list
      sbitk simulate two_moons -n 20000 -o runs/demo/bank.zarr --seed 0
      sbitk inspect runs/demo/bank.zarr
    """
    ctx.meta["sbitk.threads"] = threads


@contextlib.contextmanager
def _warnings_as_lines():
    """Print each warning raised inside (about the data or the run, not library deprecations)
    as one line ``warning: ...`` on stderr, once the step has succeeded; an error is then the
    only line."""
    noise = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if not issubclass(w.category, noise) and text not in seen:
            seen.add(text)
            click.echo(f"warning: {text}", err=True)


def _use_threads() -> None:
    """Apply --threads to torch in this process through the library's one rule
    (:func:`~sbitk.nn.threads.torch_threads`: ``SBITK_THREADS``, else 1), which the
    Python API follows too; the CLI owns its process, so it sets the variable for good."""
    import os

    import torch

    from sbitk.nn.threads import THREADS_ENV, torch_threads

    ctx = click.get_current_context(silent=True)
    if ctx is not None and "sbitk.threads" in ctx.meta:
        os.environ[THREADS_ENV] = str(ctx.meta["sbitk.threads"])
    torch.set_num_threads(torch_threads())


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


# ---- train, sample, diagnose, run ------------------------------------------------------------
def _estimator_names() -> list[str]:
    # The registry lists names from entry-point metadata: --help imports no estimator module.
    from sbitk.models.registry import available_estimators

    return available_estimators()


def _estimator_choice(f):
    from sbitk.models.registry import DEFAULT_ESTIMATORS

    rule = ", ".join(f"{r}: {n}" for r, n in DEFAULT_ESTIMATORS.items())
    return click.option(
        "--estimator", type=click.Choice(_estimator_names()), default=None,
        help=f"The conditional density estimator [default by role, {rule}].",
    )(f)  # fmt: skip


def _estimator_option(f):
    return click.option(
        "-O", "--estimator-option", "estimator_options", multiple=True, metavar="KEY=VALUE",
        help="An option of the estimator's constructor, repeatable; VALUE is read as JSON "
        "where it parses (2, 0.5, true, [64, 64]) and as text otherwise. Example: "
        "-O objective=wgan-gp -O hidden_features=[128,128].",
    )(f)  # fmt: skip


def _train_option(f):
    return click.option(
        "-T", "--train-option", "train_options", multiple=True, metavar="KEY=VALUE",
        help="A training setting (a field of TrainConfig, docs/inference.md), repeatable; VALUE "
        "is read as JSON where it parses. Example: -T schedule=anneal -T patience=20.",
    )(f)  # fmt: skip


#: Training settings with a flag of their own, which ``--train-option`` leaves to it.
_TRAIN_FLAGS = {
    "max_epochs": "--epochs", "batch_size": "--batch-size", "learning_rate": "--learning-rate",
    "seed": "--seed", "device": "--device", "progress": "TQDM_DISABLE=1",
}  # fmt: skip


def _parse_train_options(items: tuple[str, ...]) -> dict:
    """``--train-option`` values as a dict; the settings with a flag of their own are refused."""
    options = _parse_options(items, "'--train-option'")
    for name in options:
        if name in _TRAIN_FLAGS:
            raise click.BadParameter(
                f"{name} has a setting of its own: {_TRAIN_FLAGS[name]}",
                param_hint="'--train-option'",
            )
    return options


def _parse_estimator_options(items: tuple[str, ...]) -> dict:
    return _parse_options(items, "'--estimator-option'")


def _parse_options(items: tuple[str, ...], hint: str) -> dict:
    """``KEY=VALUE`` strings as a dict, values read as JSON where they parse."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=hint)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out


def _training_options(f):
    """--epochs, --batch-size and --learning-rate, unset unless given: the one defaults rule
    (TrainConfig's, with the estimator's and the method's) decides the rest, as in the API."""
    rule = " [default: TrainConfig's rule, as in the Python API; see docs/inference.md]"
    f = click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True),
                     default=None, help="AdamW's initial rate." + rule)(f)  # fmt: skip
    f = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Rows per gradient step." + rule)(f)  # fmt: skip
    return click.option(
        "--epochs", "--max-epochs", "max_epochs", type=click.IntRange(min=1), default=None,
        help="Most epochs: passes over the bank, or 50,000 rows when it is larger; training "
        "stops earlier when the validation loss stops improving." + rule,
    )(f)  # fmt: skip


def _device_option(f):
    return click.option(
        "--device", default="auto", show_default=True,
        help="Where to run: auto (CUDA when present), cpu, cuda, cuda:1, ...",
    )(f)  # fmt: skip


def _seed_option(f):
    return click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)(f)


def _force_option(f):
    return click.option("--force", is_flag=True, help="Overwrite an existing output.")(f)


def _say_mcmc_cost(model: Path, n: int) -> None:
    """Say up front that the checks of a posterior sampled by MCMC (NLE's, NRE's, an
    unnormalised NPE's) run it once per fresh simulation."""
    from sbitk.io.modelfile import read_metadata
    from sbitk.models.contract import RATIO, UNNORMALISED, density_kind
    from sbitk.models.registry import get_estimator

    try:
        meta = read_metadata(model)
        density = density_kind(get_estimator((meta.get("estimator") or {}).get("name")))
    except (SbitkError, TypeError):
        return  # diagnose names the problem with the file itself
    if meta.get("role") == "nle" or density == UNNORMALISED:
        kind = "NRE" if density == RATIO else meta.get("role", "").upper()
        click.echo(
            f"note: an {kind} posterior is sampled by MCMC for each of the "
            f"{n} fresh simulations; "
            "this takes minutes (about 1 s each for a small model on one core); "
            "--num-simulations sets how many",
            err=True,
        )


def _progress() -> bool:
    return sys.stderr.isatty()


def _simulator_or_none(spec: str | None):
    return None if spec is None else load_simulator(spec)


def _warn_flagged(result) -> None:
    for i in result.flagged:
        verdict = result.verdicts[i]
        click.echo(
            f"warning: observation {i} looks misspecified ({verdict.test} p-value "
            f"{verdict.p_value:.3g} < {verdict.alpha}): the simulator may not be able to produce "
            "it; recorded in the result file",
            err=True,
        )


@main.command()
@click.argument("bank", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["npe", "nle", "nre"]), default="npe",
              show_default=True,
              help="npe: learn the posterior; nle: the likelihood; nre: the likelihood-to-"
                   "evidence ratio by classification (nle and nre sample by MCMC).")  # fmt: skip
@_estimator_choice
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Model file to write (.safetensors).")  # fmt: skip
@_training_options
@_train_option
@_estimator_option
@_seed_option
@_device_option
@_force_option
def train(
    bank: Path,
    method: str,
    estimator: str | None,
    estimator_options: tuple[str, ...],
    output: Path,
    max_epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    train_options: tuple[str, ...],
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Train a posterior (NPE) or likelihood (NLE) estimator on BANK; write a model file.

    \b
    Example:
      sbitk train runs/demo/bank.zarr --method npe --estimator nsf -o runs/demo/model.safetensors
      sbitk train bank.zarr --method nle --estimator maf -o nle.safetensors --device cuda
    """
    from sbitk import workflow

    _use_threads()

    from sbitk.models.registry import default_estimator

    estimator = estimator or default_estimator(workflow.METHOD_ROLES[method])
    config = workflow.train_config(
        _parse_train_options(train_options).items(), max_epochs=max_epochs,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed, device=device,
        progress=_progress(),
    )  # fmt: skip
    with _warnings_as_lines():
        posterior = workflow.train(
            bank, output, method=method, estimator=estimator, config=config, force=force,
            **_parse_estimator_options(estimator_options),
        )  # fmt: skip
    history = posterior.history
    trained = getattr(posterior, "likelihood", posterior)
    trials, logged = getattr(trained, "trials", 1), _logged_x(trained.logged_x, trained)
    click.echo(
        f"trained {method.upper()} ({estimator}{_per_trial(trials)}{logged}) in "
        f"{history.epochs} epochs ({history.time_s:.1f} s, {history.stop_reason or 'done'}); "
        f"best validation loss {history.best_val_loss:.4g} at epoch {history.best_epoch + 1}; "
        f"wrote {output}"
    )


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--observed", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet file, one column per simulator output.")  # fmt: skip
@click.option("-n", "--num-samples", "n", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Posterior draws per observation.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Result file to write (ArviZ InferenceData, NetCDF .nc).")  # fmt: skip
@click.option("--iid", is_flag=True,
              help="The rows are i.i.d. trials of one observation (NLE models).")  # fmt: skip
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="The training bank: its rows give the prior draws and the misspecification "
              "reference.")  # fmt: skip
@click.option("--predictive", is_flag=True,
              help="Simulate x for every draw (a posterior_predictive group).")  # fmt: skip
@click.option("--no-misspecification-check", "skip_check", is_flag=True,
              help="Skip the misspecification test that runs by default.")  # fmt: skip
@click.option("--simulator", "simulator_spec", metavar="NAME|FILE.py:NAME", default=None,
              help="The simulator, when it is not registered [default: the model's].")  # fmt: skip
@_seed_option
@_device_option
@_force_option
def sample(
    model: Path,
    observed: Path,
    n: int,
    output: Path,
    iid: bool,
    bank: Path | None,
    predictive: bool,
    skip_check: bool,
    simulator_spec: str | None,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Sample the posterior of MODEL at the observed data; write ArviZ InferenceData.

    The misspecification check (MMD against prior-predictive simulations) runs by default: a
    flagged observation prints a warning and is recorded in the file's attributes.

    \b
    Example:
      sbitk sample runs/demo/model.safetensors --observed examples/two_moons_observed.csv \\
          -n 2000 -o runs/demo/posterior.nc --bank runs/demo/bank.zarr
    """
    from sbitk import workflow

    _use_threads()
    with _warnings_as_lines():
        result = workflow.sample(
            model, observed, output, n=n, iid=iid, seed=seed, device=device, force=force,
            predictive=predictive, bank=bank, simulator=_simulator_or_none(simulator_spec),
            check_misspecification=not skip_check, progress=_progress(),
        )  # fmt: skip
    _warn_flagged(result)
    shape = dict(result.idata.posterior.theta.sizes)
    dims = ", ".join(f"{k}={v}" for k, v in shape.items())
    click.echo(f"wrote {output}: posterior theta ({dims})")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--bank", type=click.Path(path_type=Path), required=True,
              help="The bank the model was trained on.")  # fmt: skip
@click.option("--observed", type=click.Path(path_type=Path), default=None,
              help="Observed data: adds predictive and misspecification checks.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="HTML report to write.")  # fmt: skip
@click.option(
    "--iid", is_flag=True, help="The observed rows are i.i.d. trials of one observation."
)
@click.option("--num-simulations", type=click.IntRange(min=10), default=300, show_default=True,
              help="Fresh simulations for the calibration checks.")  # fmt: skip
@click.option("--num-posterior-samples", type=click.IntRange(min=10), default=500,
              show_default=True, help="Posterior draws per simulation.")  # fmt: skip
@click.option("--simulator", "simulator_spec", metavar="NAME|FILE.py:NAME", default=None,
              help="The simulator, when it is not registered [default: the bank's].")  # fmt: skip
@_seed_option
@_device_option
@_force_option
def diagnose(
    model: Path,
    bank: Path,
    observed: Path | None,
    output: Path,
    iid: bool,
    num_simulations: int,
    num_posterior_samples: int,
    simulator_spec: str | None,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Check a model's calibration and write an HTML report; exit 1 when a check fails.

    SBC, expected coverage, TARP and z-score/contraction run on fresh simulations (never the
    training rows); with --observed, also posterior predictive and misspecification checks.

    \b
    Example:
      sbitk diagnose runs/demo/model.safetensors --bank runs/demo/bank.zarr \\
          --observed examples/two_moons_observed.csv -o runs/demo/report.html
    """
    from sbitk import workflow

    _use_threads()
    _say_mcmc_cost(model, num_simulations)
    with _warnings_as_lines():
        result = workflow.diagnose(
            model, bank, output, observed=observed, iid=iid, n_simulations=num_simulations,
            n_posterior_samples=num_posterior_samples, seed=seed, device=device, force=force,
            simulator=_simulator_or_none(simulator_spec), progress=_progress(),
        )  # fmt: skip
    for check in result.checks:
        click.echo(check.line())
    click.echo(f"wrote {output}")
    if result.failed:
        click.get_current_context().exit(EXIT_CHECK_FAILED)


#: Defaults of `sbitk run`, shared with the Python API.
_RUN = RunOptions()
#: Defaults of `sbitk abc`, shared with the Python API.
_ABC = ABCConfig()


@main.command()
@click.argument("name")
@click.option("--observed", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet file, one column per simulator output.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Run directory (bank, model, result, report and manifest).")  # fmt: skip
@click.option("-n", "--num-simulations", type=click.IntRange(min=10), default=_RUN.num_simulations,
              show_default=True)  # fmt: skip
@click.option("--method", type=click.Choice(["npe", "nle", "nre"]), default=_RUN.method,
              show_default=True)  # fmt: skip
@_estimator_choice
@_training_options
@click.option("--num-samples", type=click.IntRange(min=1), default=_RUN.n_samples,
              show_default=True,
              help="Posterior draws per observation.")  # fmt: skip
@click.option("--diagnose-simulations", type=click.IntRange(min=10), default=_RUN.n_diagnose,
              show_default=True, help="Fresh simulations for the calibration checks.")  # fmt: skip
@click.option("--diagnose-samples", type=click.IntRange(min=10),
              default=_RUN.n_diagnose_samples, show_default=True,
              help="Posterior draws per fresh simulation.")  # fmt: skip
@click.option(
    "--iid", is_flag=True, help="The observed rows are i.i.d. trials of one observation."
)
@click.option("--predictive", is_flag=True, help="Add posterior predictive draws to the result.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local simulation processes [default: the available cores].")  # fmt: skip
@click.option("--rounds", type=click.IntRange(min=1), default=_RUN.rounds, show_default=True,
              help="Sequential rounds for the one observation: later rounds simulate where "
                   "the posterior is (NPE: see --sequential-npe; NLE, NRE: the posterior). "
                   "1: amortized.")  # fmt: skip
@click.option("--sequential-npe", type=click.Choice(SEQUENTIAL_NPE), default=None,
              help="Sequential NPE's variant: truncated prior (TSNPE) or the posterior as "
                   f"proposal with APT's atomic loss. [default: {SEQUENTIAL_NPE[0]}]")  # fmt: skip
@_train_option
@_estimator_option
@_seed_option
@_device_option
@click.option("--force", is_flag=True, help="Recompute everything, even what could be reused.")
def run(
    name: str,
    observed: Path,
    output: Path,
    num_simulations: int,
    method: str,
    estimator: str | None,
    estimator_options: tuple[str, ...],
    train_options: tuple[str, ...],
    max_epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    num_samples: int,
    diagnose_simulations: int,
    diagnose_samples: int,
    iid: bool,
    predictive: bool,
    workers: int | None,
    rounds: int,
    sequential_npe: str | None,
    seed: int,
    device: str,
    force: bool,
) -> None:
    """Run the whole chain for simulator NAME: simulate, train, sample, diagnose.

    Writes bank.zarr, model.safetensors, posterior.nc, report.html and manifest.json into the
    output directory. A rerun reuses the bank and the model when the manifest shows they were
    made with the same inputs, and recomputes what changed. Exit 1 when a check fails.

    \b
    Example:
      sbitk run two_moons --observed examples/two_moons_observed.csv -o runs/demo
      sbitk run slcp --observed obs.csv -o runs/slcp -n 50000 --method nle --estimator maf
      sbitk run slcp --observed one.csv -o runs/slcp-snle --method nle --rounds 10
    """
    from sbitk import workflow

    _use_threads()
    options = workflow.RunOptions(
        num_simulations=num_simulations, method=method, estimator=estimator,
        estimator_options=tuple(_parse_estimator_options(estimator_options).items()),
        max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
        train_options=tuple(_parse_train_options(train_options).items()), n_samples=num_samples,
        n_diagnose=diagnose_simulations, n_diagnose_samples=diagnose_samples, iid=iid,
        predictive=predictive, seed=seed, device=device, workers=workers, rounds=rounds,
        sequential_npe=sequential_npe,
    )  # fmt: skip
    with _warnings_as_lines():
        result = workflow.run(
            load_simulator(name), observed, output, options, force=force, progress=_progress(),
            log=lambda line: click.echo(line, err=True),
        )  # fmt: skip
    _warn_flagged(result.sample)
    for check in result.diagnose.checks:
        click.echo(check.line())
    click.echo(f"posterior samples: {result.result}")
    click.echo(f"report: {result.report}")
    if result.diagnose.failed:
        click.get_current_context().exit(EXIT_CHECK_FAILED)


# ---- abc -------------------------------------------------------------------------------------
@main.command("abc")
@click.argument("simulator")
@click.option("--observed", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet file, one column per simulator output.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Result file to write (ArviZ InferenceData, NetCDF .nc).")  # fmt: skip
@click.option("--method", type=click.Choice(["rejection", "smc"]), default=_ABC.method,
              show_default=True, help="rejection: keep the closest prior simulations; smc: "
              "populations under shrinking tolerances.")  # fmt: skip
@click.option("-n", "--num-simulations", type=int, default=_ABC.num_simulations,
              show_default=True, help="Simulation budget per observation.")  # fmt: skip
@click.option("--particles", type=int, default=None,
              help=f"SMC particles per population [default: {DEFAULT_PARTICLES}].")  # fmt: skip
@click.option("--quantile", type=float, default=None,
              help="rejection: fraction of the simulations kept [default: "
              f"{DEFAULT_QUANTILE['rejection']}]; smc: each tolerance is this quantile of the "
              f"previous distances [default: {DEFAULT_QUANTILE['smc']}].")  # fmt: skip
@click.option("--regression", is_flag=True,
              help="Regression-adjust the particles (Beaumont et al. 2002).")  # fmt: skip
@click.option("--num-samples", type=int, default=_ABC.num_samples, show_default=True,
              help="Posterior draws per observation, resampled by weight.")  # fmt: skip
@click.option("--workers", type=int, default=None,
              help="Local simulation processes [default: 1, this process]; the draws do not "
              "depend on it.")  # fmt: skip
@_seed_option
@_force_option
def abc_command(
    simulator: str,
    observed: Path,
    output: Path,
    method: str,
    num_simulations: int,
    particles: int | None,
    quantile: float | None,
    regression: bool,
    num_samples: int,
    workers: int | None,
    seed: int,
    force: bool,
) -> None:
    """Approximate Bayesian computation for SIMULATOR at the observed data.

    SIMULATOR is a registered name, or FILE.py:NAME. ABC trains nothing: for each observed
    row, it simulates from the prior (rejection) or in SMC rounds with adaptive tolerances,
    and writes posterior draws as ArviZ InferenceData. The file records the simulations used
    and the tolerance schedule in its attributes.

    \b
    Example:
      sbitk abc two_moons --observed examples/two_moons_observed.csv -o abc.nc
      sbitk abc gaussian_linear --observed obs.csv -o abc.nc --method rejection \\
          -n 100000 --quantile 0.005 --regression
    """
    from sbitk import workflow

    _use_threads()
    config = ABCConfig(
        method=method, num_simulations=num_simulations, num_particles=particles,
        quantile=quantile, regression=regression, num_samples=num_samples, seed=seed,
    )  # fmt: skip
    sim = load_simulator(simulator)
    with _warnings_as_lines():
        result = workflow.abc(
            sim, observed, output, config, force=force, workers=workers, progress=_progress(),
        )  # fmt: skip
    _report_abc(result, method)


def _report_abc(result, method: str) -> None:
    """Print the simulation count, the tolerances and what was written."""
    label = {"rejection": "rejection ABC", "smc": "SMC-ABC"}[method]
    for b, r in enumerate(result.results):
        rounds = f", {len(r.tolerances) - 1} rounds" if method == "smc" else ""
        click.echo(
            f"observation {b}: {r.num_simulations} simulations{rounds}, tolerance "
            f"{r.tolerance:.4g}, {r.samples.shape[0]} particles (ESS "
            f"{r.effective_sample_size:.0f})"
        )
    if result.failed_simulations:
        click.echo(f"warning: {result.failed_simulations} simulations failed", err=True)
    shape = dict(result.idata.posterior.theta.sizes)
    dims = ", ".join(f"{k}={v}" for k, v in shape.items())
    click.echo(
        f"wrote {result.path}: posterior theta ({dims}) by {label} from "
        f"{result.num_simulations} simulations"
    )


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


def _is_model(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        return True
    try:  # a safetensors file starts with an 8-byte header length, then a JSON header
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and path.suffix not in (".nc", ".h5")


def _describe_model(path: Path) -> str:
    from sbitk.io.modelfile import load_model, read_metadata

    meta = read_metadata(path)
    model = load_model(path)  # checks the checksum and the weights, not only the header
    from sbitk.models.contract import RATIO, density_kind
    from sbitk.models.registry import get_estimator

    est = meta["estimator"]
    training = meta.get("training") or {}
    density = density_kind(get_estimator(est["name"]))
    method = "nre" if density == RATIO else meta["role"]
    kind = {"npe": "posterior", "nle": "likelihood", "nre": "ratio"}[method]
    lines = [
        f"model file {path} (format {meta['format_version']}, sbitk {meta['sbitk_version']})",
        f"  method: {method.upper()} ({kind} estimator {est['name']}"
        f"{_per_trial(meta.get('trials', 1))}{_logged_x(_spec_logged(meta), meta)})",
        f"  estimator: {est['name']} from {est.get('package') or 'this process'}, "
        f"{density} density",
        f"  simulator: {meta['simulator_name']}",
        f"  parameters: {', '.join(meta['parameter_names'])}",
        f"  outputs: {', '.join(meta['output_names'])}",
        f"  prior: {_format_spec(meta['prior'])}",
    ]
    if columns := model.absent_columns:
        _, trials, width = model.missing_trials
        first, last = (meta["output_names"][j] for j in (columns[0], columns[-1]))
        lines.append(
            f"  absent trials: x may leave out whole trials of its {trials} (of {width} "
            f"value(s) each: {first} to {last}) as empty cells, keeping at least one"
        )
    for offset, trials, width in getattr(model, "sorted_trials", ()):
        first, last = (meta["output_names"][j] for j in (offset, offset + trials * width - 1))
        lines.append(
            f"  sorted trials: the estimator sees x's {trials} i.i.d. trials ({first} to "
            f"{last}) sorted by their values, so their order does not matter"
        )
    if training:
        lines.append(
            f"  training: {training.get('epochs')} epochs, best validation loss "
            f"{training.get('best_val_loss', float('nan')):.4g} at epoch "
            f"{(training.get('best_epoch') or 0) + 1}, {training.get('n_train')} training rows, "
            f"{training.get('time_s')} s on {training.get('device')}"
        )
        rows = training.get("rows") or {}
        if rows:
            excluded = sum(v for k, v in rows.items() if k != "n_rows")
            lines.append(f"  rows: {rows['n_rows']} offered, {excluded} excluded as invalid")
        if settled := training.get("settled"):
            shown = ", ".join(f"{k} {v}" for k, v in settled.items())
            lines.append(f"  settled after training: {shown}")
        rates = training.get("learning_rate") or []
        if training.get("batch_size") and rates:
            lines.append(
                f"  optimiser: batches of {training['batch_size']}, learning rate "
                f"{rates[0]:.3g} to {rates[-1]:.3g}"
            )
    n_weights = sum(math.prod(shape) for _, shape in meta["tensors"].values())
    lines.append(f"  weights: {len(meta['tensors'])} tensors, {n_weights} values")
    return "\n".join(lines)


def _per_trial(trials: int) -> str:
    return f", of one trial: x holds {trials} i.i.d. trials" if trials > 1 else ""


def _logged_x(columns: list[int], source) -> str:
    """What the estimator learned in log coordinates, for a line of ``train`` or ``inspect``."""
    if not columns:
        return ""
    names = source["output_names"] if isinstance(source, dict) else source.output_names
    shown = ", ".join(names[j] for j in columns[:3]) + (", …" if len(columns) > 3 else "")
    return f"; log x for {len(columns)} output(s): {shown}"


def _spec_logged(meta: dict) -> list[int]:
    from sbitk.simulation.bijections import bijection_from_spec, logged_columns

    spec = meta.get("x_bijection")
    return logged_columns(bijection_from_spec(spec)) if spec else []


def _is_result(path: Path) -> bool:
    return path.is_file() and path.suffix in (".nc", ".netcdf", ".h5")


def _describe_result(path: Path) -> str:
    import numpy as np

    from sbitk.io.arviz import read_inference_data

    idata = read_inference_data(path)
    attrs = dict(idata.attrs) if hasattr(idata, "attrs") and idata.attrs else {}
    if not attrs and "posterior" in idata.groups():
        attrs = dict(idata.posterior.attrs)
    lines = [f"result file {path} (ArviZ InferenceData)"]
    for group in idata.groups():
        ds = getattr(idata, group)
        parts = []
        for name, var in ds.data_vars.items():
            dims = ", ".join(f"{d}={n}" for d, n in var.sizes.items())
            parts.append(f"{name} ({dims})")
        lines.append(f"  {group}: {'; '.join(parts)}")
    if "posterior" in idata.groups() and "parameter" in idata.posterior.coords:
        theta = idata.posterior.theta
        names = [str(v) for v in idata.posterior.parameter.values]
        mean = theta.mean([d for d in theta.dims if d in ("chain", "draw")])
        sd = theta.std([d for d in theta.dims if d in ("chain", "draw")])
        if "observation" not in theta.dims:
            stats = ", ".join(
                f"{n} {float(m):.4g} ± {float(s):.3g}"
                for n, m, s in zip(names, mean.values, sd.values)
            )
            lines.append(f"  posterior mean ± sd: {stats}")
    for key in ("simulator", "method", "seed", "model_sha256", "sbitk_version", "created_at"):
        if key in attrs:
            lines.append(f"  {key}: {attrs[key]}")
    if "abc_num_simulations_total" in attrs:
        tolerance = ", ".join(f"{t:.4g}" for t in np.atleast_1d(attrs["abc_tolerance"]))
        lines.append(
            f"  abc: {attrs['abc_num_simulations_total']} simulations (budget "
            f"{attrs['abc_budget']} per observation), final tolerance {tolerance}"
        )
    if "misspecification_flagged" in attrs:
        flagged = np.atleast_1d(attrs["misspecification_flagged"]).astype(int)
        which = [str(i) for i, f in enumerate(flagged) if f]
        lines.append(
            f"  misspecification ({attrs.get('misspecification_test', '?')}): "
            + (f"flagged observation(s) {', '.join(which)}" if which else "nothing flagged")
        )
    return "\n".join(lines)


#: What `sbitk inspect` recognises, tried in order: (kind, test, describe). A new file type
#: is one more row.
INSPECTORS: list[tuple[str, Callable[[Path], bool], Callable[[Path], str]]] = [
    ("simulation bank", _is_bank, _describe_bank),
    ("model file", _is_model, _describe_model),
    ("result file", _is_result, _describe_result),
]


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def inspect(path: Path) -> None:
    """Say what a file holds: a simulation bank, a model file or a result (.nc) file.

    \b
    Example:
      sbitk inspect runs/demo/bank.zarr
      sbitk inspect runs/demo/model.safetensors
      sbitk inspect runs/demo/posterior.nc
    """
    for _, test, describe in INSPECTORS:
        if test(path):
            click.echo(describe(path))
            return
    kinds = ", ".join(kind for kind, _, _ in INSPECTORS)
    raise SbitkError(f"cannot inspect {path}: it is none of the known kinds ({kinds})")


if __name__ == "__main__":  # pragma: no cover
    main()
