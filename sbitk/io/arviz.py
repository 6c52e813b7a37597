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
``created_at``; the fields of a :class:`Provenance` when given (``simulator``, ``seed``,
``model_sha256``, ``method`` and any ``extra`` ones); and the misspecification result per
observation (``misspecification_test``, ``misspecification_flagged`` as 0/1 per observation,
``misspecification_p_value``, ``misspecification_alpha``). NetCDF reads a one-element array
attribute back as a scalar: read them with ``np.atleast_1d``.

Example:
    >>> import numpy as np
    >>> draws = np.random.default_rng(0).normal(size=(2, 50, 2))
    >>> idata = to_inference_data(draws, ["mu", "sigma"], observed=np.array([0.1, 0.2]),
    ...                           output_names=["m", "s"],
    ...                           provenance=Provenance(simulator="toy", seed=0))
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
from dataclasses import dataclass, field
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
    "Provenance",
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
    arr = np.asarray(draws.detach().cpu() if hasattr(draws, "detach") else draws)
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


@dataclass(frozen=True)
class Provenance:
    """Where a result comes from, recorded as attributes of the file and of every group.

    Args:
        simulator: The simulator's name.
        seed: The seed of the run.
        model_sha256: Hash of the model file (:func:`file_sha256`).
        method: ``"npe"``, ``"nle"``, ...
        extra: More attributes (strings, numbers or 1-D numeric arrays).
    """

    simulator: str | None = None
    seed: int | None = None
    model_sha256: str | None = None
    method: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        """sbitk's version and the time, then the named fields that are set (``extra`` is
        added by :func:`to_inference_data` after the misspecification result)."""
        import sbitk

        attrs: dict[str, Any] = {
            "sbitk_version": sbitk.__version__,
            "inference_library": "sbitk",
            "inference_library_version": sbitk.__version__,
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        for key in ("simulator", "seed", "model_sha256", "method"):
            if getattr(self, key) is not None:
                attrs[key] = getattr(self, key)
        return attrs


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
    provenance: Provenance | None = None,
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
        provenance: the simulator, seed, model hash, method and more attributes.

    Returns:
        An ``arviz.InferenceData``.

    Raises:
        ResultFileError: shapes that do not agree with each other or with the names.
    """
    import arviz as az

    names = [str(n) for n in parameter_names]
    theta = _posterior_draws(posterior, names, iid)
    provenance = provenance or Provenance()
    attrs = provenance.attrs()
    if misspecification is not None:
        attrs |= _misspecification_attrs(misspecification, theta.shape[2])
    attrs |= {str(k): v for k, v in provenance.extra.items()}
    layout = _Layout(theta.shape, names, output_names, attrs)
    dims = ("chain", "draw", *layout.obs, "parameter")
    groups = {"posterior": layout.dataset({"theta": (dims, layout.per_obs(theta))})}
    if observed is not None:
        groups["observed_data"] = layout.observed(_array(observed, "observed"), iid)
    if prior is not None:
        groups["prior"] = layout.prior(_array(prior, "prior"))
    stats = layout.log_prob(log_prob)
    if layout.n_chain >= 2 and layout.n_draw >= 4:  # ArviZ's own, so that az.summary agrees
        stats["r_hat"] = ((*layout.obs, "parameter"), az.rhat(groups["posterior"])["theta"].values)
        stats["ess"] = ((*layout.obs, "parameter"), az.ess(groups["posterior"])["theta"].values)
    if stats:
        groups["sample_stats"] = layout.dataset(stats)
    if posterior_predictive is not None:
        pp = _array(posterior_predictive, "posterior_predictive")
        groups["posterior_predictive"] = layout.predictive(pp)
    return az.InferenceData(attrs=dict(attrs), **groups)


def _posterior_draws(posterior: Any, names: list[str], iid: bool) -> np.ndarray:
    """The draws as ``(chains, draws, B, D)``, checked against the names."""
    theta = _array(posterior, "posterior")
    if theta.ndim == 3:
        theta = theta[:, :, None, :]
    if theta.ndim != 4:
        raise ResultFileError(
            "posterior must have shape (chains, draws, D) or (chains, draws, B, D), "
            f"got {theta.shape}"
        )
    n_obs, dim = theta.shape[2:]
    if dim != len(names):
        raise ResultFileError(
            f"posterior has {dim} parameters but {len(names)} parameter names were given"
        )
    if len(set(names)) != len(names):
        raise ResultFileError(f"parameter names must be unique, got {names}")
    if iid and n_obs != 1:
        raise ResultFileError(f"i.i.d. trials are one observation, but posterior has B={n_obs}")
    return theta


def _misspecification_attrs(
    misspecification: MMDResult | TypicalityResult | Sequence[ObservationVerdict], n_obs: int
) -> dict[str, Any]:
    """The misspecification verdicts as attributes (0/1 flags and p-values per observation)."""
    verdicts = _verdicts(misspecification)
    if len(verdicts) not in (1, n_obs):
        raise ResultFileError(
            f"misspecification has {len(verdicts)} verdicts for {n_obs} observations"
        )
    return {
        "misspecification_test": verdicts[0].test if verdicts else "",
        "misspecification_scope": (
            "per observation" if len(verdicts) == n_obs else "all observations together"
        ),
        "misspecification_flagged": np.array([int(v.flagged) for v in verdicts]),
        "misspecification_p_value": np.array([v.p_value for v in verdicts]),
        "misspecification_alpha": float(verdicts[0].alpha) if verdicts else 0.0,
    }


class _Layout:
    """The dims, coordinates and attributes that the groups of one result share, and the checks
    of each group's array against them."""

    def __init__(
        self,
        shape: tuple[int, ...],
        names: list[str],
        output_names: Sequence[str] | None,
        attrs: dict[str, Any],
    ):
        self.n_chain, self.n_draw, self.n_obs, self.dim = shape
        self.names, self.attrs = names, attrs
        # The observation dim exists only with several observations.
        self.several = self.n_obs > 1
        self.obs = ("observation",) if self.several else ()
        self.coords: dict[str, Any] = {
            "chain": np.arange(self.n_chain),
            "draw": np.arange(self.n_draw),
            "parameter": names,
        }
        if self.several:
            self.coords["observation"] = np.arange(self.n_obs)
        self.outputs = None if output_names is None else [str(n) for n in output_names]
        if self.outputs is not None:
            self.coords["output"] = self.outputs

    def dataset(self, variables: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> xarray.Dataset:
        import xarray as xr

        used = {d for dims, _ in variables.values() for d in dims}
        return xr.Dataset(
            {k: (dims, v) for k, (dims, v) in variables.items()},
            coords={k: v for k, v in self.coords.items() if k in used},
            attrs=dict(self.attrs),
        )

    def per_obs(self, arr: np.ndarray) -> np.ndarray:
        """A per-draw array ``(chains, draws, B, ...)`` without its observation axis when there
        is one observation."""
        return arr if self.several else arr[:, :, 0]

    def need_outputs(self, what: str, d_x: int) -> None:
        if self.outputs is None:
            raise ResultFileError(f"{what} needs output_names")
        if d_x != len(self.outputs):
            raise ResultFileError(
                f"{what} has {d_x} outputs but {len(self.outputs)} output names were given"
            )

    def observed(self, x: np.ndarray, iid: bool) -> xarray.Dataset:
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ResultFileError(f"observed must have shape (B, D_x), got {x.shape}")
        self.need_outputs("observed", x.shape[1])
        if iid:
            self.coords["trial"] = np.arange(x.shape[0])
            return self.dataset({"x": (("trial", "output"), x)})
        if x.shape[0] != self.n_obs:
            raise ResultFileError(
                f"observed has {x.shape[0]} observations but posterior has B={self.n_obs}"
            )
        return self.dataset({"x": ((*self.obs, "output"), x if self.several else x[0])})

    def prior(self, p: np.ndarray) -> xarray.Dataset:
        """Prior draws ``(N, D)`` as one chain."""
        import xarray as xr

        if p.ndim != 2 or p.shape[1] != self.dim:
            raise ResultFileError(f"prior must have shape (N, D={self.dim}), got {p.shape}")
        coords = {"chain": np.arange(1), "draw": np.arange(p.shape[0]), "parameter": self.names}
        return xr.Dataset(
            {"theta": (("chain", "draw", "parameter"), p[None])},
            coords=coords,
            attrs=dict(self.attrs),
        )

    def log_prob(self, log_prob: Any | None) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """``{"lp": ...}`` for the sample stats, or nothing without a log density."""
        if log_prob is None:
            return {}
        lp = _array(log_prob, "log_prob")
        lp = lp[:, :, None] if lp.ndim == 2 else lp
        _expect(lp, (self.n_chain, self.n_draw, self.n_obs), "log_prob", "(chains, draws[, B])")
        return {"lp": (("chain", "draw", *self.obs), self.per_obs(lp))}

    def predictive(self, pp: np.ndarray) -> xarray.Dataset:
        pp = pp[:, :, None, :] if pp.ndim == 3 else pp
        if pp.ndim != 4 or pp.shape[:3] != (self.n_chain, self.n_draw, self.n_obs):
            raise ResultFileError(
                "posterior_predictive must have shape (chains, draws[, B], D_x) with "
                f"(chains, draws, B) = {(self.n_chain, self.n_draw, self.n_obs)}, got {pp.shape}"
            )
        self.need_outputs("posterior_predictive", pp.shape[3])
        return self.dataset({"x": (("chain", "draw", *self.obs, "output"), self.per_obs(pp))})


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
