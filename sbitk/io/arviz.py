"""Export posterior samples as ArviZ ``InferenceData`` and write them to NetCDF.

Layout of the data (every group is an :class:`xarray.Dataset`):

========================  ==========  ===============================================
group                     variable    dims
========================  ==========  ===============================================
``posterior``             ``theta``   ``(chain, draw, [observation,] parameter)``
``observed_data``         ``x``       ``([observation | trial,] output)``
``prior``                 ``theta``   ``(chain, draw, parameter)``, one chain of bank draws
``sample_stats``          ``lp``      ``(chain, draw, [observation])``: log q(θ | x_o)
                          ``r_hat``, ``ess``   ``([observation,] parameter)``: ArviZ's
``posterior_predictive``  ``x``       ``(chain, draw, [observation,] output)``
========================  ==========  ===============================================

The ``observation`` dim appears only when several observations were sampled (its coordinate is
the row index in the observed file, from 0); i.i.d. trials of one observation get a ``trial``
dim in ``observed_data`` and none in the posterior.

Independent draws (a direct posterior's, ABC's) are stored as 4 chains (:func:`iid_chains`), so
that ``arviz.summary`` runs its multi-chain diagnostics without a warning; ``r_hat`` and ``ess``
are ArviZ's own (rank-normalised split R-hat, bulk ESS), computed from the stored draws, so
``arviz.summary`` shows the same values.

Why one variable ``theta`` with a ``parameter`` dim rather than one variable per parameter: the
parameters are one joint draw, and keeping them in one array keeps the joint (pair plots,
``idata.posterior.theta.sel(parameter=...)``), takes any parameter name (a NetCDF variable name
cannot hold every character, a coordinate value can), and gives the ``observation`` dim one
place to go. ArviZ labels each parameter by its coordinate: ``arviz.summary`` rows read
``theta[mu]`` (``theta[0, mu]`` with several observations) and ``arviz.plot_posterior`` titles
each panel with the variable and the parameter name, so both work as they are.

``sample_stats.lp`` is ArviZ's conventional name for the log density of each draw: for a direct
posterior (NPE) the normalised :math:`\\log q(\\theta \\mid x_o)`, for MCMC on an NLE surrogate
the unnormalised :math:`\\log p(\\theta) + \\log q(x_o \\mid \\theta)`.

Attributes (on the file and on every group): ``sbitk_version``, ``inference_library``,
``created_at``, and when given ``simulator``, ``seed``, ``model_sha256``, ``method``, and the
misspecification result per observation (``misspecification_test``, ``misspecification_flagged``
as 0/1 per observation, ``misspecification_p_value``, ``misspecification_alpha``). NetCDF
reads a one-element array attribute back as a scalar: read them with ``np.atleast_1d``.

Example:
    >>> import numpy as np
    >>> draws = np.random.default_rng(0).normal(size=(2, 50, 2))
    >>> idata = to_inference_data(draws, ["mu", "sigma"], observed=np.array([0.1, 0.2]),
    ...                           output_names=["m", "s"], simulator="toy", seed=0)
    >>> idata.posterior.theta.dims
    ('chain', 'draw', 'parameter')
    >>> idata.posterior.parameter.values.tolist()
    ['mu', 'sigma']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sbitk.diagnostics.misspecification import MMDResult, ObservationVerdict, TypicalityResult
from sbitk.errors import SbitkError
from sbitk.io.atomic import atomic_path

if TYPE_CHECKING:
    import arviz
    import xarray

__all__ = [
    "ResultFileError",
    "file_sha256",
    "iid_chains",
    "read_inference_data",
    "to_inference_data",
    "write_inference_data",
]


class ResultFileError(SbitkError, ValueError):
    """Inputs to the result file have inconsistent shapes, or a result file cannot be read."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (the model file's hash recorded in results)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Chains that independent draws (a direct posterior's, ABC's) are split into.
IID_CHAINS = 4


def iid_chains(draws: Any, chains: int = IID_CHAINS) -> np.ndarray:
    """Independent draws ``(n, ...)`` as ``(chains, n / chains, ...)``.

    ArviZ's diagnostics compare chains, and warn on a single one; independent draws split into
    chains are as good as any chains, and ArviZ then reports R-hat near 1 and an effective size
    near n for them, as it should. The split uses the largest count up to ``chains`` that
    divides n and leaves at least 4 draws a chain (one chain when none does).

    Example:
        >>> iid_chains(np.zeros((2000, 3, 2))).shape
        (4, 500, 3, 2)
    """
    arr = np.asarray(draws)
    n = arr.shape[0]
    c = next((k for k in range(chains, 0, -1) if n % k == 0 and n // k >= 4), 1)
    return arr.reshape(c, n // c, *arr.shape[1:])


def _array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ResultFileError(f"{name} must be an array, got {type(value).__name__}") from err
    if arr.dtype.kind not in "fiub":
        raise ResultFileError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _expect(arr: np.ndarray, shape: tuple[int, ...], name: str, layout: str) -> None:
    if arr.shape != shape:
        raise ResultFileError(f"{name} must have shape {layout} = {shape}, got {arr.shape}")


def _verdicts(
    misspecification: MMDResult | TypicalityResult | Sequence[ObservationVerdict],
) -> tuple[ObservationVerdict, ...]:
    if isinstance(misspecification, (MMDResult, TypicalityResult)):
        return tuple(misspecification.observations)
    verdicts = tuple(misspecification)
    if not all(isinstance(v, ObservationVerdict) for v in verdicts):
        raise ResultFileError(
            "misspecification must be an MMDResult, a TypicalityResult or ObservationVerdicts"
        )
    return verdicts


def to_inference_data(
    posterior: Any,
    parameter_names: Sequence[str],
    *,
    observed: Any | None = None,
    output_names: Sequence[str] | None = None,
    iid: bool = False,
    prior: Any | None = None,
    log_prob: Any | None = None,
    posterior_predictive: Any | None = None,
    misspecification: MMDResult | TypicalityResult | Sequence[ObservationVerdict] | None = None,
    simulator: str | None = None,
    seed: int | None = None,
    model_sha256: str | None = None,
    method: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> arviz.InferenceData:
    """Collect posterior draws and everything around them into ArviZ ``InferenceData``.

    Args:
        posterior: draws of shape ``(chains, draws, D)`` for one observation, or
            ``(chains, draws, B, D)`` for ``B`` observations (a direct sampler's ``(n, B, D)``
            becomes ``(1, n, B, D)``). With ``B = 1`` the observation dim is dropped.
        parameter_names: ``D`` names, the ``parameter`` coordinate.
        observed: the observations, ``(B, D_x)`` or ``(D_x,)``; with ``iid`` the ``(n, D_x)``
            trials of the one observation.
        output_names: ``D_x`` names, the ``output`` coordinate (required with ``observed`` or
            ``posterior_predictive``).
        iid: the observed rows are i.i.d. trials of one observation.
        prior: prior draws from the bank, ``(N, D)``.
        log_prob: log density of each draw, ``(chains, draws[, B])``; stored as ``lp``.
        posterior_predictive: simulated data, ``(chains, draws[, B], D_x)``.
        misspecification: the misspecification result; recorded in the attributes.
        simulator: the simulator's name.
        seed: the seed of the run.
        model_sha256: hash of the model file (:func:`file_sha256`).
        method: ``"npe"``, ``"nle"``, ...
        attrs: more attributes (strings, numbers or 1-D numeric arrays).

    Returns:
        An ``arviz.InferenceData``.

    Raises:
        ResultFileError: shapes that do not agree with each other or with the names.
    """
    import arviz as az
    import xarray as xr

    import sbitk

    names = [str(n) for n in parameter_names]
    theta = _array(posterior, "posterior")
    if theta.ndim == 3:
        theta = theta[:, :, None, :]
    if theta.ndim != 4:
        raise ResultFileError(
            "posterior must have shape (chains, draws, D) or (chains, draws, B, D), "
            f"got {theta.shape}"
        )
    n_chain, n_draw, n_obs, dim = theta.shape
    if dim != len(names):
        raise ResultFileError(
            f"posterior has {dim} parameters but {len(names)} parameter names were given"
        )
    if len(set(names)) != len(names):
        raise ResultFileError(f"parameter names must be unique, got {names}")
    if iid and n_obs != 1:
        raise ResultFileError(f"i.i.d. trials are one observation, but posterior has B={n_obs}")
    several = n_obs > 1
    obs = ("observation",) if several else ()
    coords: dict[str, Any] = {
        "chain": np.arange(n_chain),
        "draw": np.arange(n_draw),
        "parameter": names,
    }
    if several:
        coords["observation"] = np.arange(n_obs)

    def per_obs(arr: np.ndarray) -> np.ndarray:
        # drops the singleton observation axis at position 2 when there is one observation
        return arr if several else arr[:, :, 0]

    provenance = {
        "sbitk_version": sbitk.__version__,
        "inference_library": "sbitk",
        "inference_library_version": sbitk.__version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for key, value in (
        ("simulator", simulator),
        ("seed", seed),
        ("model_sha256", model_sha256),
        ("method", method),
    ):
        if value is not None:
            provenance[key] = value
    if misspecification is not None:
        verdicts = _verdicts(misspecification)
        if len(verdicts) not in (1, n_obs):
            raise ResultFileError(
                f"misspecification has {len(verdicts)} verdicts for {n_obs} observations"
            )
        provenance["misspecification_test"] = verdicts[0].test if verdicts else ""
        provenance["misspecification_scope"] = (
            "per observation" if len(verdicts) == n_obs else "all observations together"
        )
        provenance["misspecification_flagged"] = np.array([int(v.flagged) for v in verdicts])
        provenance["misspecification_p_value"] = np.array([v.p_value for v in verdicts])
        provenance["misspecification_alpha"] = float(verdicts[0].alpha) if verdicts else 0.0
    for key, value in (attrs or {}).items():
        provenance[str(key)] = value

    def dataset(variables: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> xarray.Dataset:
        used = {d for dims, _ in variables.values() for d in dims}
        return xr.Dataset(
            {k: (dims, v) for k, (dims, v) in variables.items()},
            coords={k: v for k, v in local_coords.items() if k in used},
            attrs=dict(provenance),
        )

    local_coords = dict(coords)
    groups: dict[str, xarray.Dataset] = {
        "posterior": dataset({"theta": (("chain", "draw", *obs, "parameter"), per_obs(theta))})
    }

    outputs: list[str] | None = None
    if output_names is not None:
        outputs = [str(n) for n in output_names]
        local_coords["output"] = outputs

    def need_outputs(what: str, d_x: int) -> None:
        if outputs is None:
            raise ResultFileError(f"{what} needs output_names")
        if d_x != len(outputs):
            raise ResultFileError(
                f"{what} has {d_x} outputs but {len(outputs)} output names were given"
            )

    if observed is not None:
        x = _array(observed, "observed")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ResultFileError(f"observed must have shape (B, D_x), got {x.shape}")
        need_outputs("observed", x.shape[1])
        if iid:
            local_coords["trial"] = np.arange(x.shape[0])
            groups["observed_data"] = dataset({"x": (("trial", "output"), x)})
        else:
            if x.shape[0] != n_obs:
                raise ResultFileError(
                    f"observed has {x.shape[0]} observations but posterior has B={n_obs}"
                )
            groups["observed_data"] = dataset({"x": ((*obs, "output"), x if several else x[0])})

    if prior is not None:
        p = _array(prior, "prior")
        if p.ndim != 2 or p.shape[1] != dim:
            raise ResultFileError(f"prior must have shape (N, D={dim}), got {p.shape}")
        prior_coords = {"chain": np.arange(1), "draw": np.arange(p.shape[0]), "parameter": names}
        groups["prior"] = xr.Dataset(
            {"theta": (("chain", "draw", "parameter"), p[None])},
            coords=prior_coords,
            attrs=dict(provenance),
        )

    stats: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    if log_prob is not None:
        lp = _array(log_prob, "log_prob")
        lp = lp[:, :, None] if lp.ndim == 2 else lp
        _expect(lp, (n_chain, n_draw, n_obs), "log_prob", "(chains, draws[, B])")
        stats["lp"] = (("chain", "draw", *obs), per_obs(lp))
    if n_chain >= 2 and n_draw >= 4:  # ArviZ's own, so that az.summary reproduces them
        stats["r_hat"] = ((*obs, "parameter"), az.rhat(groups["posterior"])["theta"].values)
        stats["ess"] = ((*obs, "parameter"), az.ess(groups["posterior"])["theta"].values)
    if stats:
        groups["sample_stats"] = dataset(stats)

    if posterior_predictive is not None:
        pp = _array(posterior_predictive, "posterior_predictive")
        pp = pp[:, :, None, :] if pp.ndim == 3 else pp
        if pp.ndim != 4 or pp.shape[:3] != (n_chain, n_draw, n_obs):
            raise ResultFileError(
                "posterior_predictive must have shape (chains, draws[, B], D_x) with "
                f"(chains, draws, B) = {(n_chain, n_draw, n_obs)}, got {pp.shape}"
            )
        need_outputs("posterior_predictive", pp.shape[3])
        groups["posterior_predictive"] = dataset(
            {"x": (("chain", "draw", *obs, "output"), per_obs(pp))}
        )

    return az.InferenceData(attrs=dict(provenance), **groups)


def write_inference_data(
    idata: arviz.InferenceData, path: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write ``InferenceData`` to a NetCDF file (h5netcdf engine), atomically.

    Args:
        idata: the data, e.g. from :func:`to_inference_data`.
        path: the output file (``.nc``).
        force: replace an existing file.

    Returns:
        The path written.

    Raises:
        OutputExistsError: the file exists and ``force`` is false.
        OutputError: the path cannot be written.
    """
    with atomic_path(path, force=force) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    return Path(path)


def read_inference_data(path: str | os.PathLike) -> arviz.InferenceData:
    """Open a result file written by :func:`write_inference_data` (or any ArviZ NetCDF file).

    Raises:
        ResultFileError: the file is missing or not a readable NetCDF/HDF5 file.
    """
    import arviz as az

    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"result file {path}: file not found")
    try:
        return az.from_netcdf(path, engine="h5netcdf")
    except (OSError, ValueError, KeyError) as err:
        raise ResultFileError(f"result file {path}: unreadable as NetCDF ({err})") from None
