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

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbitk.errors import SbitkError, SimulatorError

__all__ = [
    "ABCRunResult",
    "DiagnoseResult",
    "RunOptions",
    "RunResult",
    "SampleResult",
    "abc",
    "check_posterior",
    "diagnose",
    "options_hash",
    "run",
    "sample",
    "train",
    "train_config",
]

METHODS = ("npe", "nle", "nre")
#: The key of each method's default estimator (:func:`~sbitk.models.registry.default_estimator`).
METHOD_ROLES = {"npe": "posterior", "nle": "likelihood", "nre": "ratio"}


def _method_class(method: str) -> tuple[type, dict]:
    """The inference class of ``method`` and the options the workflow gives it: NLE and NRE
    drop failed simulations with a warning rather than refuse the bank."""
    from sbitk.inference.nle import NLE
    from sbitk.inference.npe import NPE
    from sbitk.inference.nre import NRE

    if method not in METHODS:
        raise SbitkError(f"method must be one of {METHODS}, got {method!r}")
    cls = {"npe": NPE, "nle": NLE, "nre": NRE}[method]
    return cls, ({} if method == "npe" else {"invalid": "exclude"})


#: Arguments of the inference classes that the workflow sets itself: an option of that name is
#: the estimator's (a CVAE's ``prior``).
_WORKFLOW_ARGS = frozenset(
    {"prior", "estimator", "config", "invalid", "estimator_options", "parameter_names",
     "output_names", "simulator_name"}
)  # fmt: skip


def _method(method: str, estimator: str | None, config, options: Mapping[str, Any]):
    """The inference object of ``method``: the options its class takes as arguments of its own
    (``log_x``, ``trials``, ...) go to it, the others to the estimator's constructor."""
    import inspect

    cls, kwargs = _method_class(method)
    own = set(inspect.signature(cls).parameters) - _WORKFLOW_ARGS
    mine = {k: v for k, v in options.items() if k in own}
    theirs = {k: v for k, v in options.items() if k not in own}
    return cls(estimator=estimator, config=config, **kwargs, **mine, estimator_options=theirs)


def _method_of(posterior) -> str:
    """``"npe"``, ``"nle"`` or ``"nre"``: sbitk's posteriors say it as ``method``, another
    library's (the posterior protocol) as ``role``."""
    return getattr(posterior, "method", None) or posterior.role


#: Rows of the bank used as prior draws in a result file, and as the misspecification reference.
MAX_PRIOR_DRAWS = 4000
MAX_REFERENCE_SIMULATIONS = 4000
MANIFEST = "manifest.json"
#: Fewest MCMC draws per chain in a result file.
DRAWS_PER_CHAIN = 20


def _limited_threads(step: Callable) -> Callable:
    """:func:`sbitk.nn.threads.limited_threads`, importing torch only when ``step`` runs (this
    module stays light to import, for the command line's start-up)."""

    @functools.wraps(step)
    def limited(*args, **kwargs):
        from sbitk.nn.threads import thread_limit

        with thread_limit():
            return step(*args, **kwargs)

    return limited


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


#: Bytes per posterior draw value held while sampling and writing: the draws, their log
#: densities and ranks, and the NumPy and xarray copies on the way to the file.
DRAW_BYTES_PER_VALUE = 4 * 4
MODEL_SUFFIX = ".safetensors"


def _check_draws(draws: int, dim: int, what: str, fix: str) -> None:
    """Refuse, before any work, ``draws`` posterior draws of ``dim`` values that cannot be
    held in memory."""
    from sbitk.simulation.resources import check_memory

    check_memory(draws * max(dim, 1) * DRAW_BYTES_PER_VALUE, what, fix)


def _check_model_output(output: str | os.PathLike) -> None:
    """A model file is written as ``*.safetensors``: the suffix is how ``inspect``, ``sample``
    and a reader tell it from a result file or a bank."""
    if not str(output).endswith(MODEL_SUFFIX):
        raise SbitkError(
            f"model output {output} must end in {MODEL_SUFFIX!r} (a safetensors model file); "
            f"for example {Path(output).with_suffix(MODEL_SUFFIX).name}"
        )


# ---- train -----------------------------------------------------------------------------------
def train(
    bank: str | os.PathLike,
    output: str | os.PathLike,
    *,
    method: str = "npe",
    estimator: str | None = None,
    config=None,
    force: bool = False,
    **estimator_kwargs,
):
    """Train an NPE or NLE estimator on a bank and write the model file.

    Args:
        bank: The simulation bank (a Zarr directory).
        output: The model file to write (``*.safetensors``).
        method: ``"npe"`` (posterior estimation), ``"nle"`` (likelihood estimation) or
            ``"nre"`` (ratio estimation).
        estimator: A registered estimator name (``"nsf"``, ``"maf"``, ``"realnvp"``, ...);
            ``None``: the method's default (:data:`sbitk.models.registry.DEFAULT_ESTIMATORS`).
        config: A :class:`~sbitk.inference.training.TrainConfig`.
        force: Replace an existing model file.
        **estimator_kwargs: Passed to the estimator's constructor.

    Returns:
        The trained posterior (a ``DirectPosterior`` or an ``MCMCPosterior``).
    """
    from sbitk.io.atomic import check_not_input, check_output
    from sbitk.io.modelfile import save_model
    from sbitk.models.registry import default_estimator, get_estimator

    if method not in METHODS:
        raise SbitkError(f"method must be one of {METHODS}, got {method!r}")
    estimator = estimator or default_estimator(METHOD_ROLES[method])
    get_estimator(estimator)  # an unknown name fails before the bank is opened
    _check_model_output(output)
    check_not_input(output, bank=bank)
    output = check_output(output, force=force)
    source = _open_bank(bank)
    if len(source) == 0:
        raise SbitkError(f"the bank at {bank} holds no rows to train on")
    inference = _method(method, estimator, config, estimator_kwargs)
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

    from sbitk.io.arviz import iid_chains
    from sbitk.models.contract import NONE

    if posterior.amortized:
        theta = posterior.sample(n, x, seed=seed)  # (n, B, D), independent draws
        if posterior.density == NONE:
            return {"posterior": iid_chains(theta.numpy()), "log_prob": None}
        with torch.no_grad():
            lp = posterior.log_prob(theta, x).cpu()  # (n, B)
        return {"posterior": iid_chains(theta.numpy()), "log_prob": iid_chains(lp.numpy())}
    config = _mcmc_config(posterior, progress)
    # Enough draws per chain for R-hat and ESS to mean something (ArviZ wants 4 at least), as
    # many chains as the model's settings allow otherwise: chains run in parallel, draws do not.
    chains = max(1, min(config.num_chains, n // DRAWS_PER_CHAIN))
    config = dataclasses.replace(config, num_chains=chains)
    groups = [x] if iid else [row for row in x]
    chains, lps = [], []
    for b, xb in enumerate(groups):
        posterior.sample(n, xb, seed=seed + b, config=config)
        samples = posterior.last_result.samples  # (C, draws, D)
        c, d, dim = samples.shape
        with torch.no_grad():
            lp = posterior.log_prob(samples.reshape(-1, dim), xb).reshape(c, d).cpu()
        chains.append(samples)
        lps.append(lp)
    return {"posterior": torch.stack(chains, 2).numpy(), "log_prob": torch.stack(lps, 2).numpy()}


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


@_limited_threads
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
    from sbitk.io.arviz import (
        Provenance,
        file_sha256,
        to_inference_data,
        write_inference_data,
    )
    from sbitk.io.atomic import check_not_input, check_output
    from sbitk.io.modelfile import load_model
    from sbitk.io.observed import read_observed_data

    check_not_input(output, model_file=model, observed_data_file=observed, bank=bank)
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
    obs = read_observed_data(
        observed, posterior.output_names, iid=iid, absent=posterior.absent_columns
    )
    if iid and not posterior.iid_trials and obs.x.shape[0] > 1:
        raise SbitkError(
            f"--iid treats the {obs.x.shape[0]} rows of {observed} as trials of one "
            "observation, which needs an NLE or NRE model (its likelihoods multiply); this model "
            f"is {posterior.method.upper()}"
        )
    groups = 1 if iid else obs.x.shape[0]
    _check_draws(
        n * groups, len(posterior.parameter_names),
        f"sampling {n} draws for each of {groups} observation(s)", "ask for fewer draws (-n)",
    )  # fmt: skip
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
        posterior_predictive=pp,
        misspecification=verdicts,
        provenance=Provenance(
            simulator=posterior.simulator_name,
            seed=seed,
            model_sha256=model_hash,
            method=posterior.method,
            extra={"model_file": Path(model).name, "observed_file": Path(observed).name},
        ),
    )
    write_inference_data(idata, output, force=force)
    return SampleResult(
        path=output, idata=idata, flagged=flagged, misspecification=mis, verdicts=verdicts or []
    )


# ---- diagnose --------------------------------------------------------------------------------
#: The family-wise false-alarm rate of the verdict of :func:`diagnose`: the probability that a
#: calibrated posterior fails at least one check. Each of the m statistical checks runs at
#: ``FAMILY_ALPHA / m`` (Bonferroni; Holm would need a p-value from every check, and SBC's
#: simultaneous band and the coverage grid give thresholds).
FAMILY_ALPHA = 0.05


def _statistical_checks(density: bool, observed: bool, amortized: bool = True) -> list[str]:
    """The checks of :func:`diagnose` that test a null hypothesis, and so raise false alarms."""
    names = ["SBC", "coverage", "TARP", "z-score / contraction"] if amortized else []
    if not density and amortized:
        names.remove("coverage")
    return names + (["predictive check", "misspecification"] if observed else [])


def sequential_observation(posterior) -> list | None:
    """The observation a sequentially trained posterior is for (its training history records
    it: :mod:`sbitk.inference.sequential`), or None for an amortized one."""
    history = getattr(posterior, "history", None)
    if isinstance(history, dict):
        return history.get("observation")
    return getattr(history, "observation", None)


def _calibration(
    posterior, simulator, source, n: int, n_draws: int, log_prob, *, alpha: float, seed: int,
    progress: bool,
) -> tuple[dict, dict, str]:  # fmt: skip
    """SBC, coverage, TARP and z-score/contraction on ``n`` fresh simulations, drawn with a seed
    distinct from the bank's: the results by :func:`report_sections` argument, the checks
    skipped with their reason, and a line saying which simulations were used."""
    from sbitk.diagnostics import expected_coverage, sbc, tarp, zscore_contraction
    from sbitk.simulation.runner import simulate

    fresh_seed = _derived_seed(seed, "diagnose")
    if fresh_seed == source.seed:
        fresh_seed += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are counted below
        fresh = simulate(simulator, n, seed=fresh_seed, workers=1, progress=False)
    theta, x = _valid_rows(fresh)
    if theta.shape[0] < 10:
        raise SbitkError(
            f"only {theta.shape[0]} of {n} fresh simulations succeeded; the calibration checks "
            "need at least 10"
        )
    names = list(posterior.parameter_names)
    draws = _batched_draws(posterior, x, n_draws, seed, progress)  # (L, N, D)
    out, skipped = {}, {}
    out["sbc"] = sbc(theta, x, draws, parameter_names=names, alpha=alpha, seed=seed,
                     progress=False)  # fmt: skip
    if log_prob is None:
        skipped["coverage"] = (
            "HPD coverage ranks draws by their density, and this estimator offers samples only"
        )
    else:
        out["coverage"] = expected_coverage(theta, x, draws, log_prob, alpha=alpha, seed=seed,
                                            progress=False)  # fmt: skip
    out["tarp"] = tarp(theta, x, draws, alpha=alpha, seed=seed, progress=False)
    out["contraction"] = zscore_contraction(
        theta, x, draws, parameter_names=names, prior_variance=_prior_variance(source),
        alpha=alpha, progress=False,
    )  # fmt: skip
    return out, skipped, f"{theta.shape[0]} (seed {fresh_seed})"


def per_check_alpha(m: int) -> float:
    """The level of each of ``m`` checks for a family-wise level of :data:`FAMILY_ALPHA`."""
    return FAMILY_ALPHA / max(m, 1)


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


@_limited_threads
def diagnose(
    model: str | os.PathLike | Any,
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
        model: The model file, or a posterior object as :func:`sbitk.load_model` returns
            (``sample``, ``log_prob`` unless its ``density`` is ``"none"``, ``amortized``,
            ``iid_trials``, ``role``, ``parameter_names``, ``output_names``,
            ``simulator_name`` and ``history``, which may be ``None``).
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
    from sbitk.diagnostics import mmd_test, posterior_predictive_check
    from sbitk.io.arviz import file_sha256
    from sbitk.io.atomic import check_not_input, check_output
    from sbitk.io.modelfile import load_model
    from sbitk.io.observed import read_observed_data
    from sbitk.report import report_sections, write_report
    from sbitk.report.checks import overall_status

    check_not_input(output, model_file=model, bank=bank, observed_data_file=observed)
    output = check_output(output, force=force)
    is_file = isinstance(model, (str, os.PathLike))
    posterior = load_model(model, device=device) if is_file else model
    _check_draws(
        n_simulations * n_posterior_samples, len(posterior.parameter_names),
        f"diagnosing with {n_posterior_samples} draws for each of {n_simulations} simulations",
        "ask for fewer simulations (--num-simulations) or draws (--num-posterior-samples)",
    )  # fmt: skip
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
        obs = read_observed_data(
            observed, posterior.output_names, iid=iid, absent=posterior.absent_columns
        )
        if iid and not posterior.iid_trials and obs.x.shape[0] > 1:
            raise SbitkError(
                f"--iid needs an NLE or NRE model; this model is {_method_of(posterior).upper()}"
            )

    names = list(posterior.parameter_names)
    log_prob = _batched_log_prob(posterior)
    trained_for = sequential_observation(posterior)
    n_checks = len(_statistical_checks(log_prob is not None, obs is not None, trained_for is None))
    alpha = per_check_alpha(n_checks)
    if trained_for is None:
        calibration, skipped, fresh = _calibration(
            posterior, simulator, source, n_simulations, n_posterior_samples, log_prob,
            alpha=alpha, seed=seed, progress=progress,
        )  # fmt: skip
    else:
        reason = (
            "the posterior was trained in sequential rounds for one observation, and "
            "calibration over the prior predictive does not apply to it"
        )
        calibration, fresh = {}, "none (a sequential posterior)"
        skipped = dict.fromkeys(("SBC", "coverage", "TARP", "contraction"), reason)

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
                alpha=alpha,
                seed=seed,
            )
            for xb, th in per_obs
        ]
        reference = _valid_rows(source, MAX_REFERENCE_SIMULATIONS)[1]
        rows, need = reference.shape[0], math.ceil(1 / alpha)  # calibration rows for α
        if rows >= 20 and rows - need >= 2:
            n_ref = min(rows // 2, rows - need)
            mis = mmd_test(obs.x, reference, alpha=alpha, n_reference=n_ref, seed=seed)
        else:
            skipped["misspecification"] = (
                f"the bank has {rows} valid rows; the MMD test at α = {alpha:.3g} needs at "
                f"least {max(20, need + 2)}"
            )
        posterior_draws = posterior_draws.numpy()

    sections = report_sections(
        history=posterior.history,
        posterior=posterior_draws,
        parameter_names=names,
        **calibration,
        ppc=ppc,
        misspecification=mis,
        skipped=skipped,
    )
    checks = [c for s in sections for c in s.checks]
    meta = {
        "simulator": source.simulator_name,
        "method": _method_of(posterior),
        "model": f"{Path(model).name} (sha256 {file_sha256(model)[:16]})"
        if is_file
        else type(model).__name__,
        "bank": f"{Path(bank).name} ({len(source)} rows)",
        "fresh simulations": fresh,
        "posterior draws per simulation": n_posterior_samples,
        "false alarms": f"at most {FAMILY_ALPHA:.0%} of runs for a calibrated posterior: each "
        f"of the {n_checks} statistical checks at α = {alpha:.3g} "
        f"(Bonferroni)",
        "seed": seed,
        "sbitk": __version__,
    }
    if observed is not None:
        meta["observed"] = Path(observed).name
    write_report(
        output, sections, title=f"sbitk report: {source.simulator_name}", meta=meta, force=force
    )
    return DiagnoseResult(path=output, checks=checks, status=overall_status(checks))


def check_posterior(
    posterior: Any,
    simulator,
    output: str | os.PathLike,
    *,
    observed: str | os.PathLike | None = None,
    bank: str | os.PathLike | None = None,
    n_simulations: int = 300,
    n_posterior_samples: int = 500,
    n_reference: int = 1000,
    seed: int = 0,
    force: bool = False,
) -> DiagnoseResult:
    """Check a posterior made anywhere, an sbi posterior say, with sbitk's diagnostics and
    report: :func:`diagnose` for objects that are not sbitk model files.

    Args:
        posterior: An sbitk posterior, or any object with ``sample(shape, x=...)`` and
            ``log_prob(theta, x=...)``, sbi's for one
            (:func:`sbitk.posteriors.external.wrap_posterior`).
        simulator: The :class:`~sbitk.Simulator` it was trained for (or its registered name).
        output: The HTML report to write.
        observed: Observed data, as for :func:`diagnose`.
        bank: A bank of the simulator for the reference data; ``None``: ``n_reference``
            simulations into a temporary one.
        n_simulations, n_posterior_samples, seed, force: As for :func:`diagnose`.
        n_reference: Simulations of the temporary bank.

    Example:
        >>> from sbitk.simulation.registry import get_simulator
        >>> import torch, tempfile, pathlib
        >>> sim = get_simulator("two_moons")
        >>> class Exact:  # the simulator's own reference sampler as a posterior
        ...     def sample(self, shape, x):
        ...         return sim.reference_posterior(x, shape[0], None)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.html"
        >>> result = check_posterior(Exact(), sim, out, n_simulations=30, n_posterior_samples=50,
        ...                          n_reference=200)
        >>> [c.name for c in result.checks if c.status == "skip"]
        ['coverage']
    """
    import tempfile

    from sbitk.posteriors.external import wrap_posterior
    from sbitk.simulation.runner import simulate

    if isinstance(simulator, str):
        simulator = _load_simulator(simulator)
    if not hasattr(posterior, "amortized"):
        posterior = wrap_posterior(
            posterior, simulator.parameter_names, simulator.output_names, simulator.name
        )
    with tempfile.TemporaryDirectory(prefix="sbitk-check-") as tmp:
        if bank is None:
            bank = Path(tmp) / "reference.zarr"
            simulate(simulator, n_reference, seed=_derived_seed(seed, "reference"), bank=bank,
                     workers=1, progress=False)  # fmt: skip
        return diagnose(
            posterior, bank, output, observed=observed, n_simulations=n_simulations,
            n_posterior_samples=n_posterior_samples, seed=seed, force=force,
            simulator=simulator,
        )  # fmt: skip


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

    Training settings left ``None`` follow the one rule of
    :class:`~sbitk.inference.training.TrainConfig` (with the estimator's and the method's
    defaults), as in the Python API and ``sbitk train``: the network trains until its
    validation loss stops improving.

    Args:
        num_simulations: Rows of the bank.
        method: ``"npe"``, ``"nle"`` or ``"nre"``.
        estimator: A registered estimator name; ``None``: the method's default
            (:data:`sbitk.models.registry.DEFAULT_ESTIMATORS`), recorded by name in the
            manifest.
        estimator_options: The estimator's constructor options, as ``(name, value)`` pairs.
        max_epochs: Training epoch limit (``None``: TrainConfig's).
        batch_size: Training batch size (``None``: TrainConfig's rule).
        learning_rate: Initial learning rate (``None``: TrainConfig's rule).
        train_options: Further :class:`~sbitk.inference.training.TrainConfig` fields, as
            ``(name, value)`` pairs (``schedule``, ``patience``, ``ema_decay``...), checked by
            :func:`~sbitk.inference.training.config_with`.
        n_samples: Posterior draws per observation in the result file.
        n_diagnose: Fresh simulations for the calibration checks.
        n_diagnose_samples: Posterior draws per simulation in the calibration checks.
        iid: The observed rows are i.i.d. trials of one observation.
        predictive: Add a posterior predictive group to the result file.
        seed: Seeds every step.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        workers: Local simulation processes (default: the available cores).
        rounds: Sequential rounds for one observation (:mod:`sbitk.inference.sequential`);
            1 trains an amortized posterior on prior draws.
        sequential_npe: Sequential NPE's variant, ``"truncated"`` or ``"atomic"`` (APT);
            ``None``: :data:`~sbitk.inference.sequential.SEQUENTIAL_NPE`'s first.
    """

    num_simulations: int = 10_000
    method: str = "npe"
    estimator: str | None = None
    estimator_options: tuple[tuple[str, Any], ...] = ()
    max_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    train_options: tuple[tuple[str, Any], ...] = ()
    n_samples: int = 2000
    n_diagnose: int = 300
    n_diagnose_samples: int = 500
    iid: bool = False
    predictive: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    rounds: int = 1
    sequential_npe: str | None = None

    def train_config(self, progress: bool):
        """The :class:`~sbitk.inference.training.TrainConfig` these options ask for."""
        return train_config(
            self.train_options, max_epochs=self.max_epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, seed=self.seed, device=self.device,
            progress=progress,
        )  # fmt: skip


def train_config(
    train_options: Iterable[tuple[str, Any]] = (),
    *,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
):
    """The :class:`~sbitk.inference.training.TrainConfig` of ``sbitk train`` and ``sbitk run``:
    the flags' settings (``None``: the one defaults rule) and further named fields, checked by
    :func:`~sbitk.inference.training.config_with`."""
    from sbitk.inference.training import config_with

    given = {"max_epochs": max_epochs} if max_epochs is not None else {}
    return config_with(
        dict(train_options), batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        device=device, progress=progress, **given,
    )  # fmt: skip


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
    if options.estimator is None:  # the default by name, so that the manifest records it
        from sbitk.models.registry import default_estimator

        role = METHOD_ROLES.get(options.method, "posterior")
        options = dataclasses.replace(options, estimator=default_estimator(role))
    say = log or (lambda _msg: None)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"cannot write output {directory}: it is a file, expected a directory")
    # Check every input and option first: a bad one should fail before minutes of simulation,
    # and before the directory is made.
    obs = read_observed_data(observed, simulator.output_names, iid=options.iid)
    _check_run_options(simulator, options, obs.x.shape[0], directory / "bank.zarr")
    check_output(directory / MANIFEST, force=True)  # creates the directory, checks writability
    if not os.access(directory, os.W_OK):
        raise OutputError(f"cannot write output {directory}: permission denied")

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

    from sbitk.inference.sequential import round_sizes

    prior_rows = round_sizes(options.num_simulations, options.rounds)[0]
    bank_inputs = {
        "simulator": simulator.name,
        "simulator_version": simulator.version,
        "num_simulations": prior_rows,
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
        say(f"simulating {prior_rows} rows into {paths['bank']}")
        steps["bank"] = {"inputs": bank_inputs, "hash": bank_hash}
        steps.pop("model", None)
        _write_manifest(manifest_path, steps, write_text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulationFailureWarning)
            run_simulations(
                simulator, prior_rows, seed=options.seed, bank=paths["bank"],
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
    if options.rounds > 1:  # the model then depends on the observation and on every round
        train_inputs["rounds"] = options.rounds
        train_inputs["num_simulations"] = options.num_simulations
        train_inputs["observed_sha256"] = file_sha256(observed)
        if options.sequential_npe is not None:
            train_inputs["sequential_npe"] = options.sequential_npe
    model_hash = options_hash(train_inputs)
    reused["model"] = not force and _model_reusable(
        paths["model"], steps.get("model", {}), model_hash
    )
    if reused["model"]:
        say(f"reusing {paths['model']} (same bank and training options)")
    elif options.rounds > 1:
        say(f"training {options.method.upper()} ({options.estimator}) in {options.rounds} "
            f"rounds into {paths['model']}")  # fmt: skip
        _train_rounds(simulator, obs.x, paths, options, config, progress, say)
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
    if options.rounds > 1:
        say(f"diagnosing the sequential posterior at the observation into {paths['report']}")
    else:
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


def _train_rounds(simulator, x_o, paths: dict, options: RunOptions, config, progress, say):
    """Sequential training for the one observation (or i.i.d. trials) ``x_o``: the bank is
    round 1, later rounds go into ``rounds/`` next to it; writes the model file."""
    from sbitk.inference.sequential import fit_rounds
    from sbitk.io.modelfile import save_model
    from sbitk.simulation.bank import Bank

    method = _method(options.method, options.estimator, config, dict(options.estimator_options))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # excluded failed rows are in the history
        posterior = fit_rounds(
            method, simulator, x_o if options.iid else x_o[0], options.num_simulations,
            rounds=options.rounds, seed=options.seed, workers=options.workers,
            banks=paths["bank"].parent / "rounds", first_round=Bank.open(paths["bank"]),
            sequential_npe=options.sequential_npe, progress=progress, log=say,
        )  # fmt: skip
    save_model(paths["model"], posterior)


def _check_run_options(simulator, options: RunOptions, n_observed: int, bank: Path) -> None:
    """Every option of :func:`run` that a later step would refuse, refused before the first."""
    from sbitk.inference.training import resolve_device
    from sbitk.simulation.runner import check_sizes, existing_batch_size, simulator_batch_size

    if options.method not in METHODS:
        raise SbitkError(f"method must be one of {METHODS}, got {options.method!r}")
    if options.iid and options.method == "npe" and n_observed > 1:
        raise SbitkError(
            f"--iid treats the {n_observed} observed rows as trials of one observation, which "
            "needs an NLE or NRE model (their likelihoods multiply); pass --method nle or nre"
        )
    if options.rounds > 1:
        from sbitk.inference.sequential import round_sizes

        round_sizes(options.num_simulations, options.rounds)  # checks both
        if n_observed > 1 and not options.iid:
            raise SbitkError(
                f"--rounds trains for one observation; the observed file has {n_observed} rows "
                "(pass --iid if they are trials of one observation, or one row per run)"
            )
    resolve_device(options.device)
    config = options.train_config(progress=False)  # checks the training settings
    method = _method(options.method, options.estimator, config, dict(options.estimator_options))
    if options.rounds > 1:
        from sbitk.inference.sequential import check_method

        check_method(method, options.sequential_npe)
    existing = existing_batch_size(bank)
    size = existing or simulator_batch_size(simulator, options.num_simulations)
    check_sizes(simulator, options.num_simulations, size, bank, new_rows=existing is None)
    dim = simulator.theta_dim
    groups = 1 if options.iid else n_observed
    _check_draws(
        options.n_samples * groups, dim,
        f"sampling {options.n_samples} draws for each of {groups} observation(s)",
        "ask for fewer draws (--num-samples)",
    )  # fmt: skip
    _check_draws(
        options.n_diagnose * options.n_diagnose_samples, dim,
        f"diagnosing with {options.n_diagnose_samples} draws for each of {options.n_diagnose} "
        "simulations", "ask for fewer (--diagnose-simulations, --diagnose-samples)",
    )  # fmt: skip


def _write_manifest(path: Path, steps: dict, write_text) -> None:
    from sbitk import __version__

    doc = {"format": "sbitk-run", "sbitk_version": __version__, "steps": steps}
    write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", force=True)


# ---- abc -------------------------------------------------------------------------------------
#: Rows per simulator call in :func:`abc`, each call with its own seed. Fixed by the simulator
#: (vectorized or not), never by the workers, so the result does not depend on them.
ABC_CHUNK_ROWS = {True: 10_000, False: 100}
#: The simulator a worker process of :func:`abc` runs (set by :func:`_abc_init_worker`).
_ABC_WORKER_SIMULATOR = None


@dataclass
class ABCRunResult:
    """What :func:`abc` wrote: the file, its data, and the ABC result of every observation."""

    path: Path
    idata: Any
    results: list
    num_simulations: int
    failed_simulations: int


def _abc_chunk(simulator, theta, seed: int):
    """x (N, D_x) for θ (N, D_θ) with its own generator; failed rows are NaN."""
    import torch

    return simulator.run_batch(theta, torch.Generator().manual_seed(seed)).x


def _abc_init_worker(payload: bytes) -> None:
    import signal

    import cloudpickle
    import torch

    global _ABC_WORKER_SIMULATOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C
    torch.set_num_threads(1)
    _ABC_WORKER_SIMULATOR = cloudpickle.loads(payload)


def _abc_worker_chunk(theta, seed: int):
    import torch

    return _abc_chunk(_ABC_WORKER_SIMULATOR, torch.from_numpy(theta), seed).numpy()


class _ABCSimulator:
    """The simulator as ABC calls it: ``(θ (N, D_θ), generator) -> x (N, D_x)``.

    θ goes in chunks of :data:`ABC_CHUNK_ROWS`, each simulated with a generator seeded from the
    one ABC passes, so the draws are the same in-process and over any number of worker
    processes. Failed simulations come back as NaN rows, which ABC never keeps; they are
    counted, and the progress bar counts every simulation.
    """

    def __init__(self, simulator, executor, bar) -> None:
        self.simulator, self.executor, self.bar = simulator, executor, bar
        self.failed = 0

    def __call__(self, theta, generator):
        import torch

        chunks = theta.split(ABC_CHUNK_ROWS[bool(self.simulator.vectorized)])
        seeds = torch.randint(0, 2**62, (len(chunks),), generator=generator).tolist()
        if self.executor is None:
            results = (_abc_chunk(self.simulator, t, s) for t, s in zip(chunks, seeds))
        else:
            futures = [
                self.executor.submit(_abc_worker_chunk, t.numpy(), s)
                for t, s in zip(chunks, seeds)
            ]
            results = (torch.from_numpy(f.result()) for f in futures)
        parts = []
        for x in results:
            parts.append(x)
            self.failed += int((~torch.isfinite(x).all(-1)).sum())
            self.bar.update(x.shape[0])
        return torch.cat(parts)


def _abc_executor(simulator, workers: int):
    """A pool of ``workers`` processes that hold the simulator."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from sbitk.simulation.runner import dumps_simulator

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["sbitk.workflow"])  # torch once, not in every worker
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_abc_init_worker,
        initargs=(dumps_simulator(simulator),),
    )


def _abc_each_observation(simulator, x, config, workers: int, progress: bool):
    """One ABC result per row of ``x`` (observation ``b`` seeded ``config.seed + b``)."""
    from tqdm.auto import tqdm

    total = config.num_simulations * x.shape[0]
    desc = f"ABC ({config.method})"
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=total, desc=desc, unit="sim", disable=None if progress else True)
        )
        executor = None
        if workers > 1:
            executor = _abc_executor(simulator, workers)
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        simulate = _ABCSimulator(simulator, executor, bar)
        results = [
            config.run(simulate, xb, prior=simulator.prior, seed=config.seed + b)
            for b, xb in enumerate(x)
        ]
    return results, simulate.failed


def _abc_attrs(config, results: list, failed: int, observed: Path) -> dict:
    """The run's settings and every observation's simulation count and tolerance schedule."""
    import numpy as np

    attrs = {
        "abc_method": config.method,
        "abc_budget": config.num_simulations,
        "abc_quantile": config.resolved_quantile,
        "abc_regression": int(config.regression),
        "abc_num_simulations": np.array([r.num_simulations for r in results]),
        "abc_num_simulations_total": int(sum(r.num_simulations for r in results)),
        "abc_failed_simulations": failed,
        "abc_num_particles": np.array([r.samples.shape[0] for r in results]),
        "abc_effective_sample_size": np.array([r.effective_sample_size for r in results]),
        "abc_tolerance": np.array([r.tolerance for r in results]),
        "observed_file": observed.name,
    }
    for b, r in enumerate(results):
        attrs[f"abc_tolerances_{b}"] = np.array(r.tolerances)
        attrs[f"abc_acceptance_rates_{b}"] = np.array(r.acceptance_rates)
    return attrs


def abc(
    simulator,
    observed: str | os.PathLike,
    output: str | os.PathLike,
    config=None,
    *,
    force: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> ABCRunResult:
    """Approximate Bayesian computation at every observed row; write ArviZ InferenceData.

    ABC trains nothing: for each row it simulates from the prior (rejection ABC) or in SMC
    rounds, keeps the parameters whose simulations land closest to the row, and writes
    ``config.num_samples`` draws resampled by weight. Each observation gets its own budget of
    ``config.num_simulations``. Beside the usual provenance, the file's attributes record the
    simulations each observation used (``abc_num_simulations``, and
    ``abc_num_simulations_total``), its final tolerance (``abc_tolerance``) and its schedule of
    tolerances and acceptance rates, one round each (``abc_tolerances_<b>``,
    ``abc_acceptance_rates_<b>`` for observation ``b``; SMC's first, the prior population, has
    tolerance ``inf``).

    Args:
        simulator: A :class:`~sbitk.Simulator`, or a registered simulator's name.
        observed: CSV or Parquet file, one column per simulator output, one row per observation.
        output: The NetCDF file to write; never the observed file.
        config: An :class:`~sbitk.inference.abc.ABCConfig` (default: SMC-ABC, 20,000
            simulations).
        force: Replace an existing output.
        workers: Local processes that simulate (default 1: in this process). The draws do not
            depend on it.
        progress: Show a progress bar over the simulations.

    Returns:
        An :class:`ABCRunResult`.
    """
    import torch

    from sbitk.inference.abc import ABCConfig
    from sbitk.io.arviz import Provenance, iid_chains, to_inference_data, write_inference_data
    from sbitk.io.atomic import check_not_input, check_output
    from sbitk.io.observed import read_observed_data

    config = ABCConfig() if config is None else config
    sim = _load_simulator(simulator) if isinstance(simulator, str) else simulator
    workers = 1 if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise SbitkError(f"workers must be a positive integer, got {workers!r}")
    observed, output = Path(observed), Path(output)
    check_not_input(output, observed_data_file=observed)
    output = check_output(output, force=force)
    obs = read_observed_data(observed, sim.output_names)
    results, failed = _abc_each_observation(sim, obs.x, config, workers, progress)
    draws = torch.stack(
        [r.sample(config.num_samples, seed=config.seed + b) for b, r in enumerate(results)], 1
    )  # (n, B, D)
    gen = torch.Generator().manual_seed(_derived_seed(config.seed, "prior"))
    idata = to_inference_data(
        iid_chains(draws.numpy()),
        sim.parameter_names,
        observed=obs.x.numpy(),
        output_names=list(obs.output_names),
        prior=sim.prior.sample(MAX_PRIOR_DRAWS, gen).numpy(),
        provenance=Provenance(
            simulator=sim.name,
            seed=config.seed,
            method=f"abc-{config.method}",
            extra=_abc_attrs(config, results, failed, observed),
        ),
    )
    write_inference_data(idata, output, force=force)
    return ABCRunResult(
        path=output,
        idata=idata,
        results=results,
        num_simulations=int(sum(r.num_simulations for r in results)),
        failed_simulations=failed,
    )
