"""The whole chain as Python calls: train, sample, diagnose, and run (all of it, with reuse).

Each function here is what one ``sbitk`` command does, minus the option parsing, so the command
line stays thin and the same steps can be scripted. Every step checks its output path before
any expensive work, refuses to overwrite without ``force``, and writes atomically.

``run`` keeps a small JSON manifest (``manifest.json``) in its directory with a hash of the
inputs of each step (simulator, simulation budget, seed, training options, the hash of the
bank or model it built on). A rerun reuses the bank and the model whose recorded hash matches
and recomputes the ones whose inputs changed.

Example:
    >>> from sbitk.workflow import RunOptions, options_hash
    >>> options_hash({"a": 1, "b": [2, 3]}) == options_hash({"b": [2, 3], "a": 1})
    True
    >>> RunOptions().method
    'npe'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbitk.errors import SbitkError, SimulatorError

__all__ = [
    "DiagnoseResult",
    "RunOptions",
    "RunResult",
    "SampleResult",
    "diagnose",
    "options_hash",
    "run",
    "sample",
    "train",
]

METHODS = ("npe", "nle")
#: Rows of the bank used as prior draws in a result file, and as the misspecification reference.
MAX_PRIOR_DRAWS = 4000
MAX_REFERENCE_SIMULATIONS = 4000
MANIFEST = "manifest.json"
#: Fewest MCMC draws per chain in a result file.
DRAWS_PER_CHAIN = 20


def options_hash(options: dict) -> str:
    """SHA-256 of a JSON-serialisable dict, independent of key order."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose, independent of the user's seed used for anything else."""
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _load_simulator(name: str | None):
    """The registered simulator called ``name`` (``None`` for no name)."""
    from sbitk.simulation.registry import get_simulator

    return None if name is None else get_simulator(name)


def _check_same_simulator(model_sim: str | None, other_sim: str | None, what: str) -> None:
    if model_sim and other_sim and model_sim != other_sim:
        raise SbitkError(
            f"the model was trained for simulator {model_sim!r}, but {what} is for "
            f"simulator {other_sim!r}"
        )


def _open_bank(path: str | os.PathLike):
    from sbitk.simulation.bank import Bank

    return Bank.open(path)


def _valid_rows(bank, limit: int | None = None):
    """``(theta, x)`` of the bank's valid rows, the first ``limit`` of them."""
    import torch

    theta, x, valid = bank.theta, bank.x, bank.valid
    keep = valid & torch.isfinite(x).all(-1) & torch.isfinite(theta).all(-1)
    theta, x = theta[keep], x[keep]
    if limit is not None:
        theta, x = theta[:limit], x[:limit]
    return theta, x


# ---- train -----------------------------------------------------------------------------------
def train(
    bank: str | os.PathLike,
    output: str | os.PathLike,
    *,
    method: str = "npe",
    estimator: str = "nsf",
    config=None,
    force: bool = False,
    **estimator_kwargs,
):
    """Train an NPE or NLE estimator on a bank and write the model file.

    Args:
        bank: The simulation bank (a Zarr directory).
        output: The model file to write (``*.safetensors``).
        method: ``"npe"`` (posterior estimation) or ``"nle"`` (likelihood estimation).
        estimator: A registered estimator name (``"nsf"``, ``"maf"``, ``"realnvp"``, ...).
        config: A :class:`~sbitk.inference.training.TrainConfig`.
        force: Replace an existing model file.
        **estimator_kwargs: Passed to the estimator's constructor.

    Returns:
        The trained posterior (a ``DirectPosterior`` or an ``MCMCPosterior``).
    """
    from sbitk.inference.nle import NLE
    from sbitk.inference.npe import NPE
    from sbitk.io.atomic import check_output
    from sbitk.io.modelfile import save_model
    from sbitk.models.registry import get_estimator

    if method not in METHODS:
        raise SbitkError(f"method must be one of {METHODS}, got {method!r}")
    get_estimator(estimator)  # an unknown name fails before the bank is opened
    output = check_output(output, force=force)
    source = _open_bank(bank)
    if len(source) == 0:
        raise SbitkError(f"the bank at {bank} holds no rows to train on")
    cls = NPE if method == "npe" else NLE
    kwargs = {"invalid": "exclude"} if method == "nle" else {}
    inference = cls(estimator=estimator, config=config, **kwargs, **estimator_kwargs)
    posterior = inference.fit(source)
    save_model(output, posterior)
    return posterior


# ---- sample ----------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """What :func:`sample` wrote: the file, the data, and the flagged observations.

    ``verdicts`` has one misspecification verdict per observation (one for i.i.d. trials);
    ``flagged`` the indices of the flagged ones; ``misspecification`` the raw test result.
    """

    path: Path
    idata: Any
    flagged: list[int] = field(default_factory=list)
    misspecification: Any = None
    verdicts: list = field(default_factory=list)


def _combine_trials(verdicts: list):
    """One verdict for i.i.d. trials of one observation, from a test of each trial.

    Each trial on its own is a draw of the prior predictive when the model is right, so each is
    tested; the trials are then one observation, flagged by the Bonferroni-corrected smallest
    p-value (a set test against the prior predictive would flag correct data, since trials that
    share one θ are closer to each other than prior-predictive draws are).
    """
    from sbitk.diagnostics.misspecification import ObservationVerdict

    worst = min(verdicts, key=lambda v: v.p_value)
    p_value = min(1.0, worst.p_value * len(verdicts))
    flagged = p_value < worst.alpha
    return ObservationVerdict(
        index=0,
        test=worst.test,
        statistic=worst.statistic,
        p_value=p_value,
        alpha=worst.alpha,
        flagged=flagged,
        verdict=f"trial {worst.index} atypical" if flagged else "well-specified",
    )


def _mcmc_config(posterior, progress: bool):
    return dataclasses.replace(posterior.config, progress=progress)


def _draw(posterior, x, n: int, *, iid: bool, seed: int, progress: bool) -> dict:
    """Posterior draws for every observation in ``x`` as (chains, draws, B, D) and stats."""
    import torch

    from sbitk.models.contract import NONE

    if posterior.amortized:
        theta = posterior.sample(n, x, seed=seed)  # (n, B, D)
        if posterior.density == NONE:
            return {"posterior": theta[None].numpy(), "log_prob": None}
        with torch.no_grad():
            lp = posterior.log_prob(theta, x).cpu()  # (n, B)
        return {"posterior": theta[None].numpy(), "log_prob": lp[None].numpy()}
    config = _mcmc_config(posterior, progress)
    # Enough draws per chain for R-hat and ESS to mean something (ArviZ wants 4 at least), as
    # many chains as the model's settings allow otherwise: chains run in parallel, draws do not.
    chains = max(1, min(config.num_chains, n // DRAWS_PER_CHAIN))
    config = dataclasses.replace(config, num_chains=chains)
    groups = [x] if iid else [row for row in x]
    chains, lps, rhat, ess = [], [], [], []
    for b, xb in enumerate(groups):
        posterior.sample(n, xb, seed=seed + b, config=config)
        result = posterior.last_result
        samples = result.samples  # (C, draws, D)
        c, d, dim = samples.shape
        with torch.no_grad():
            lp = posterior.log_prob(samples.reshape(-1, dim), xb).reshape(c, d).cpu()
        chains.append(samples)
        lps.append(lp)
        rhat.append(result.rhat.cpu())
        ess.append(result.ess.cpu())
    return {
        "posterior": torch.stack(chains, 2).numpy(),
        "log_prob": torch.stack(lps, 2).numpy(),
        "r_hat": torch.stack(rhat).numpy(),
        "ess": torch.stack(ess).numpy(),
    }


def _reference_simulations(bank, simulator, n: int, seed: int):
    """Prior-predictive simulations for the misspecification test: the bank's, else fresh."""
    if bank is not None:
        return _valid_rows(bank, n)[1]
    if simulator is None:
        return None
    from sbitk.simulation.runner import simulate

    fresh = simulate(
        simulator, n, seed=_derived_seed(seed, "reference"), workers=1, progress=False
    )
    return _valid_rows(fresh)[1]


def _simulate_rows(simulator, theta, seed: int):
    """x for every θ row (N, D) with failures as NaN rows."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return simulator.run_batch(theta, gen).x


def sample(
    model: str | os.PathLike,
    observed: str | os.PathLike,
    output: str | os.PathLike,
    *,
    n: int = 1000,
    iid: bool = False,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    predictive: bool = False,
    bank: str | os.PathLike | None = None,
    simulator=None,
    check_misspecification: bool = True,
    progress: bool = False,
) -> SampleResult:
    """Sample the posterior of a model file at observed data; write ArviZ InferenceData.

    Args:
        model: The model file.
        observed: CSV or Parquet file, one column per simulator output.
        output: The NetCDF file to write.
        n: Draws per observation (for MCMC: rounded up to a multiple of the chains).
        iid: The rows are i.i.d. trials of one observation (an NLE model).
        seed: Seeds the draws, the predictive simulations and the misspecification test.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        force: Replace an existing output.
        predictive: Simulate x for every draw (``posterior_predictive`` group).
        bank: The training bank, for prior draws and the misspecification reference.
        simulator: A :class:`~sbitk.Simulator` (default: the registered one the model names).
        check_misspecification: Run the MMD misspecification test against prior-predictive
            simulations, warn for flagged observations and record the result.
        progress: Show progress bars.

    Returns:
        A :class:`SampleResult`.
    """
    import torch

    from sbitk.diagnostics.misspecification import mmd_test
    from sbitk.io.arviz import file_sha256, to_inference_data, write_inference_data
    from sbitk.io.atomic import check_output
    from sbitk.io.modelfile import load_model
    from sbitk.io.observed import read_observed_data

    output = check_output(output, force=force)
    posterior = load_model(model, device=device)
    source = None
    if bank is not None:
        source = _open_bank(bank)
        _check_same_simulator(posterior.simulator_name, source.simulator_name, f"bank {bank}")
    if simulator is None and posterior.simulator_name:
        try:
            simulator = _load_simulator(posterior.simulator_name)
        except SimulatorError:
            simulator = None
    if simulator is not None:
        _check_same_simulator(posterior.simulator_name, simulator.name, "the simulator given")
    obs = read_observed_data(observed, posterior.output_names, iid=iid)
    if iid and not posterior.iid_trials and obs.x.shape[0] > 1:
        raise SbitkError(
            f"--iid treats the {obs.x.shape[0]} rows of {observed} as trials of one "
            "observation, which needs an NLE model (its likelihoods multiply); this model is "
            f"{posterior.role.upper()}"
        )
    draws = _draw(posterior, obs.x, n, iid=iid, seed=seed, progress=progress)
    n_chain, n_draw, n_obs, dim = draws["posterior"].shape

    if source is not None:
        prior = _valid_rows(source, MAX_PRIOR_DRAWS)[0].numpy()
    else:
        gen = torch.Generator().manual_seed(_derived_seed(seed, "prior"))
        prior = posterior.prior.sample(MAX_PRIOR_DRAWS, gen).numpy()

    mis = None
    verdicts = None
    flagged: list[int] = []
    if check_misspecification:
        reference = _reference_simulations(source, simulator, MAX_REFERENCE_SIMULATIONS, seed)
        if reference is None or reference.shape[0] < 20:
            warnings.warn(
                "misspecification check skipped: no bank given and simulator "
                f"{posterior.simulator_name!r} is not available to simulate a reference",
                stacklevel=2,
            )
        else:
            mis = mmd_test(obs.x, reference, seed=seed)
            verdicts = list(mis.observations)
            if iid:
                verdicts = [_combine_trials(verdicts)]
            flagged = [i for i, v in enumerate(verdicts) if v.flagged]

    pp = None
    if predictive:
        if simulator is None:
            raise SbitkError(
                f"--predictive needs the simulator {posterior.simulator_name!r}, which is not "
                "registered here; pass --simulator FILE.py:NAME"
            )
        flat = torch.as_tensor(draws["posterior"]).reshape(-1, dim)
        x_pp = _simulate_rows(simulator, flat, _derived_seed(seed, "predictive"))
        pp = x_pp.reshape(n_chain, n_draw, n_obs, -1).numpy()

    model_hash = file_sha256(model)
    idata = to_inference_data(
        draws["posterior"],
        posterior.parameter_names,
        observed=obs.x.numpy(),
        output_names=list(obs.output_names),
        iid=iid,
        prior=prior,
        log_prob=draws["log_prob"],
        r_hat=draws.get("r_hat"),
        ess=draws.get("ess"),
        posterior_predictive=pp,
        misspecification=verdicts,
        simulator=posterior.simulator_name,
        seed=seed,
        model_sha256=model_hash,
        method=posterior.role,
        attrs={"model_file": Path(model).name, "observed_file": Path(observed).name},
    )
    write_inference_data(idata, output, force=force)
    return SampleResult(
        path=output, idata=idata, flagged=flagged, misspecification=mis, verdicts=verdicts or []
    )


# ---- diagnose --------------------------------------------------------------------------------
@dataclass
class DiagnoseResult:
    """What :func:`diagnose` found and wrote."""

    path: Path
    checks: list
    status: str | None

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _batched_draws(posterior, x, n: int, seed: int, progress: bool):
    """Posterior draws (n, B, D) for every row of x (B, D_x)."""
    import torch

    if posterior.amortized:
        parts = [
            posterior.sample(n, xb, seed=seed + k) for k, xb in enumerate(x.split(500))
        ]  # bounded memory per call
        return torch.cat(parts, 1)
    config = _mcmc_config(posterior, progress=False)
    chains = max(1, min(config.num_chains, n // DRAWS_PER_CHAIN))
    config = dataclasses.replace(config, num_chains=chains)
    out = []
    rows = x
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(x, desc="MCMC per simulation", leave=False)
    for b, xb in enumerate(rows):
        out.append(posterior.sample(n, xb, seed=seed + b, config=config))
    return torch.stack(out, 1)


def _batched_log_prob(posterior) -> Callable | None:
    """log q(θ | x) for θ (n, B, D) and x (B, D_x); ``None`` when the posterior has no density."""
    import torch

    from sbitk.models.contract import NONE

    if posterior.density == NONE:
        return None
    if posterior.amortized:

        @torch.no_grad()
        def log_prob_npe(theta, x):
            return posterior.log_prob(theta, x).cpu()

        return log_prob_npe

    @torch.no_grad()
    def log_prob(theta, x):
        cols = [posterior.log_prob(theta[:, b], x[b]).cpu() for b in range(x.shape[0])]
        return torch.stack(cols, 1)

    return log_prob


def diagnose(
    model: str | os.PathLike,
    bank: str | os.PathLike,
    output: str | os.PathLike,
    *,
    observed: str | os.PathLike | None = None,
    iid: bool = False,
    n_simulations: int = 300,
    n_posterior_samples: int = 500,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    simulator=None,
    progress: bool = False,
) -> DiagnoseResult:
    """Run the calibration checks (and, with observed data, predictive and misspecification
    checks), and write the HTML report.

    SBC, expected coverage, TARP and z-score/contraction run on ``n_simulations`` fresh
    simulations from the bank's simulator, drawn with a seed derived from ``seed`` and distinct
    from the bank's: a model file does not record which bank rows it was trained on, and
    calibration on training rows would look better than it is.

    Args:
        model: The model file.
        bank: The bank the model was trained on (simulator, prior draws, reference data).
        output: The HTML report to write.
        observed: Observed data, for the posterior pair plots, predictive checks and the
            misspecification test.
        iid: The observed rows are i.i.d. trials of one observation (an NLE model).
        n_simulations: Fresh simulations for the calibration checks.
        n_posterior_samples: Posterior draws per simulation and per observation.
        seed: Seeds everything random here.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        force: Replace an existing report.
        simulator: A :class:`~sbitk.Simulator` (default: the registered one the bank names).
        progress: Show progress bars.

    Returns:
        A :class:`DiagnoseResult`; ``status`` is the worst check's (``"fail"``, ``"warn"`` or
        ``"pass"``).
    """
    from sbitk import __version__
    from sbitk.diagnostics import (
        expected_coverage,
        mmd_test,
        posterior_predictive_check,
        sbc,
        tarp,
        zscore_contraction,
    )
    from sbitk.io.arviz import file_sha256
    from sbitk.io.atomic import check_output
    from sbitk.io.modelfile import load_model
    from sbitk.io.observed import read_observed_data
    from sbitk.report import report_sections, write_report
    from sbitk.report.checks import overall_status
    from sbitk.simulation.runner import simulate

    output = check_output(output, force=force)
    posterior = load_model(model, device=device)
    source = _open_bank(bank)
    _check_same_simulator(posterior.simulator_name, source.simulator_name, f"bank {bank}")
    if simulator is None:
        try:
            simulator = _load_simulator(source.simulator_name)
        except SimulatorError as exc:
            raise SimulatorError(
                f"diagnose simulates fresh data with the bank's simulator: {exc}; pass "
                "--simulator FILE.py:NAME"
            ) from exc
    _check_same_simulator(source.simulator_name, simulator.name, "the simulator given")
    obs = None
    if observed is not None:
        obs = read_observed_data(observed, posterior.output_names, iid=iid)
        if iid and not posterior.iid_trials and obs.x.shape[0] > 1:
            raise SbitkError(f"--iid needs an NLE model; this model is {posterior.role.upper()}")

    fresh_seed = _derived_seed(seed, "diagnose")
    if fresh_seed == source.seed:
        fresh_seed += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are counted below
        fresh = simulate(simulator, n_simulations, seed=fresh_seed, workers=1, progress=False)
    theta, x = _valid_rows(fresh)
    if theta.shape[0] < 10:
        raise SbitkError(
            f"only {theta.shape[0]} of {n_simulations} fresh simulations succeeded; the "
            "calibration checks need at least 10"
        )
    names = list(posterior.parameter_names)
    draws = _batched_draws(posterior, x, n_posterior_samples, seed, progress)  # (L, N, D)
    log_prob = _batched_log_prob(posterior)
    sbc_result = sbc(theta, x, draws, parameter_names=names, seed=seed, progress=False)
    skipped = {}
    if log_prob is None:
        cov = None
        skipped["coverage"] = (
            "HPD coverage ranks draws by their density, and this estimator offers samples only"
        )
    else:
        cov = expected_coverage(theta, x, draws, log_prob, seed=seed, progress=False)
    tarp_result = tarp(theta, x, draws, seed=seed, progress=False)
    contraction = zscore_contraction(
        theta, x, draws, parameter_names=names, prior_variance=_prior_variance(source),
        progress=False,
    )  # fmt: skip

    posterior_draws = ppc = mis = None
    if obs is not None:
        if iid or obs.x.shape[0] == 1:
            one = _draw_for_report(posterior, obs.x, n_posterior_samples, seed, iid)
            posterior_draws = one
            per_obs = [(obs.x if iid else obs.x[0], one)]
        else:
            posterior_draws = _batched_draws(posterior, obs.x, n_posterior_samples, seed, False)
            per_obs = [(obs.x[b], posterior_draws[:, b]) for b in range(obs.x.shape[0])]
        ppc = [
            posterior_predictive_check(
                xb if xb.dim() == 1 else xb[0],
                th,
                simulator,
                output_names=list(obs.output_names),
                seed=seed,
            )
            for xb, th in per_obs
        ]
        reference = _valid_rows(source, MAX_REFERENCE_SIMULATIONS)[1]
        if reference.shape[0] >= 20:
            mis = mmd_test(obs.x, reference, seed=seed)
        posterior_draws = posterior_draws.numpy()

    sections = report_sections(
        history=posterior.history,
        posterior=posterior_draws,
        parameter_names=names,
        sbc=sbc_result,
        coverage=cov,
        tarp=tarp_result,
        contraction=contraction,
        ppc=ppc,
        misspecification=mis,
        skipped=skipped,
    )
    checks = [c for s in sections for c in s.checks]
    meta = {
        "simulator": source.simulator_name,
        "method": posterior.role,
        "model": f"{Path(model).name} (sha256 {file_sha256(model)[:16]})",
        "bank": f"{Path(bank).name} ({len(source)} rows)",
        "fresh simulations": f"{theta.shape[0]} (seed {fresh_seed})",
        "posterior draws per simulation": n_posterior_samples,
        "seed": seed,
        "sbitk": __version__,
    }
    if observed is not None:
        meta["observed"] = Path(observed).name
    write_report(
        output, sections, title=f"sbitk report: {source.simulator_name}", meta=meta, force=force
    )
    return DiagnoseResult(path=output, checks=checks, status=overall_status(checks))


def _prior_variance(bank):
    theta, _ = _valid_rows(bank, 20_000)
    return theta.var(0) if theta.shape[0] > 1 else None


def _draw_for_report(posterior, x, n: int, seed: int, iid: bool):
    """Draws (n, D) for one observation or for i.i.d. trials of one."""
    if posterior.amortized:
        return posterior.sample(n, x[0], seed=seed)
    config = _mcmc_config(posterior, progress=False)
    return posterior.sample(n, x if iid else x[0], seed=seed, config=config)


# ---- run -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    """Options of :func:`run`; the defaults give a good two_moons posterior in a few minutes.

    On two_moons, 10,000 simulations and at most 60 epochs of NSF (early stopping ended at 56;
    about 25 s on one CPU core) give a C2ST accuracy against the exact posterior of 0.52-0.54.

    Args:
        num_simulations: Rows of the bank.
        method: ``"npe"`` or ``"nle"``.
        estimator: A registered estimator name.
        estimator_options: The estimator's constructor options, as ``(name, value)`` pairs.
        max_epochs: Training epoch limit.
        batch_size: Training batch size.
        n_samples: Posterior draws per observation in the result file.
        n_diagnose: Fresh simulations for the calibration checks.
        n_diagnose_samples: Posterior draws per simulation in the calibration checks.
        iid: The observed rows are i.i.d. trials of one observation.
        predictive: Add a posterior predictive group to the result file.
        seed: Seeds every step.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        workers: Local simulation processes (default: the available cores).
    """

    num_simulations: int = 10_000
    method: str = "npe"
    estimator: str = "nsf"
    estimator_options: tuple[tuple[str, Any], ...] = ()
    max_epochs: int = 60
    batch_size: int = 256
    n_samples: int = 2000
    n_diagnose: int = 300
    n_diagnose_samples: int = 500
    iid: bool = False
    predictive: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int | None = None

    def train_config(self, progress: bool):
        from sbitk.inference.training import TrainConfig

        return TrainConfig(
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            device=self.device,
            progress=progress,
        )


@dataclass
class RunResult:
    """Paths :func:`run` wrote, what it reused, and the diagnose result."""

    directory: Path
    bank: Path
    model: Path
    result: Path
    report: Path
    reused: dict[str, bool]
    sample: SampleResult
    diagnose: DiagnoseResult


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _bank_reusable(path: Path, recorded: dict, inputs_hash: str) -> bool:
    if recorded.get("hash") != inputs_hash or not (path / "zarr.json").is_file():
        return False
    try:
        return _open_bank(path).complete
    except SbitkError:
        return False


def _model_reusable(path: Path, recorded: dict, inputs_hash: str) -> bool:
    from sbitk.io.arviz import file_sha256

    if recorded.get("hash") != inputs_hash or not path.is_file():
        return False
    return recorded.get("sha256") == file_sha256(path)


def run(
    simulator,
    observed: str | os.PathLike,
    directory: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Simulate, train, sample and diagnose in ``directory``, reusing what is still valid.

    The directory gets ``bank.zarr``, ``model.safetensors``, ``posterior.nc``, ``report.html``
    and ``manifest.json``. The bank is reused when the manifest records the same simulator
    (name and version), number of simulations and seed; the model when, in addition, the
    training options match and the file's hash is the one recorded. The result file and report
    are always rewritten: they depend on the observed data.

    Args:
        simulator: A :class:`~sbitk.Simulator`.
        observed: The observed data file.
        directory: Where to write; created when missing.
        options: A :class:`RunOptions`.
        force: Recompute everything, replacing what is there.
        progress: Show progress bars.
        log: Called with one line per step (e.g. ``click.echo`` to stderr).

    Returns:
        A :class:`RunResult`.
    """
    from sbitk.io.arviz import file_sha256
    from sbitk.io.atomic import OutputError, check_output, write_text
    from sbitk.io.observed import read_observed_data
    from sbitk.simulation.runner import SimulationFailureWarning
    from sbitk.simulation.runner import simulate as run_simulations

    options = options or RunOptions()
    say = log or (lambda _msg: None)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"cannot write output {directory}: it is a file, expected a directory")
    check_output(directory / MANIFEST, force=True)  # creates the directory, checks writability
    if not os.access(directory, os.W_OK):
        raise OutputError(f"cannot write output {directory}: permission denied")
    # Read the observed data first: a bad file should fail before minutes of simulation.
    read_observed_data(observed, simulator.output_names, iid=options.iid)

    paths = {
        "bank": directory / "bank.zarr",
        "model": directory / "model.safetensors",
        "result": directory / "posterior.nc",
        "report": directory / "report.html",
    }
    manifest_path = directory / MANIFEST
    manifest = {} if force else _read_manifest(manifest_path)
    if not force and not manifest:
        present = [p for p in paths.values() if p.exists()]
        if present:
            raise OutputError(
                f"{directory} holds {present[0].name} but no {MANIFEST} saying how it was made; "
                "pass --force to overwrite it"
            )
    steps = manifest.get("steps", {}) if isinstance(manifest.get("steps"), dict) else {}
    reused: dict[str, bool] = {}

    bank_inputs = {
        "simulator": simulator.name,
        "simulator_version": simulator.version,
        "num_simulations": options.num_simulations,
        "seed": options.seed,
    }
    bank_hash = options_hash(bank_inputs)
    recorded = steps.get("bank", {})
    reused["bank"] = not force and _bank_reusable(paths["bank"], recorded, bank_hash)
    if reused["bank"]:
        say(f"reusing {paths['bank']} (same simulator, size and seed)")
    else:
        # Same inputs but an incomplete bank: an interrupted run, which the runner resumes.
        resume = not force and recorded.get("hash") == bank_hash
        say(f"simulating {options.num_simulations} rows into {paths['bank']}")
        steps["bank"] = {"inputs": bank_inputs, "hash": bank_hash}
        steps.pop("model", None)
        _write_manifest(manifest_path, steps, write_text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationFailureWarning)
            run_simulations(
                simulator, options.num_simulations, seed=options.seed, bank=paths["bank"],
                overwrite=not resume, progress=progress, workers=options.workers,
            )  # fmt: skip
    steps["bank"] = {"inputs": bank_inputs, "hash": bank_hash}
    _write_manifest(manifest_path, steps, write_text)

    config = options.train_config(progress)
    train_inputs = {
        "bank": bank_hash,
        "method": options.method,
        "estimator": options.estimator,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
    }
    if options.estimator_options:
        train_inputs["estimator_options"] = dict(options.estimator_options)
    model_hash = options_hash(train_inputs)
    reused["model"] = not force and _model_reusable(
        paths["model"], steps.get("model", {}), model_hash
    )
    if reused["model"]:
        say(f"reusing {paths['model']} (same bank and training options)")
    else:
        say(f"training {options.method.upper()} ({options.estimator}) into {paths['model']}")
        train(
            paths["bank"], paths["model"], method=options.method, estimator=options.estimator,
            config=config, force=True, **dict(options.estimator_options),
        )  # fmt: skip
    steps["model"] = {
        "inputs": train_inputs,
        "hash": model_hash,
        "sha256": file_sha256(paths["model"]),
    }
    _write_manifest(manifest_path, steps, write_text)

    say(f"sampling {options.n_samples} draws per observation into {paths['result']}")
    sampled = sample(
        paths["model"], observed, paths["result"], n=options.n_samples, iid=options.iid,
        seed=options.seed, device=options.device, force=True, predictive=options.predictive,
        bank=paths["bank"], simulator=simulator, progress=progress,
    )  # fmt: skip
    steps["sample"] = {"observed_sha256": file_sha256(observed), "n": options.n_samples}
    say(f"diagnosing on {options.n_diagnose} fresh simulations into {paths['report']}")
    diagnosed = diagnose(
        paths["model"], paths["bank"], paths["report"], observed=observed, iid=options.iid,
        n_simulations=options.n_diagnose, n_posterior_samples=options.n_diagnose_samples,
        seed=options.seed, device=options.device, force=True, simulator=simulator,
        progress=progress,
    )  # fmt: skip
    steps["diagnose"] = {"status": diagnosed.status}
    _write_manifest(manifest_path, steps, write_text)
    return RunResult(
        directory=directory,
        bank=paths["bank"],
        model=paths["model"],
        result=paths["result"],
        report=paths["report"],
        reused=reused,
        sample=sampled,
        diagnose=diagnosed,
    )


def _write_manifest(path: Path, steps: dict, write_text) -> None:
    from sbitk import __version__

    doc = {"format": "sbitk-run", "sbitk_version": __version__, "steps": steps}
    write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", force=True)
