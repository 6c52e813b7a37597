"""Model files: a trained posterior or likelihood in one safetensors file, never a pickle.

The file is an ordinary safetensors file. Its tensors are the estimator's ``state_dict``
(weights and the standardisation buffers); its ``__metadata__`` header holds one JSON document
under the key ``"sbitk"``:

========================  ===================================================================
``format``                ``"sbitk-model"``
``format_version``        integer, :data:`FORMAT_VERSION` for files this version writes
``sbitk_version``         the package version that wrote it
``role``                  ``"npe"`` (a direct posterior) or ``"nle"`` (a surrogate likelihood)
``estimator``             ``{"name": <registered name>, "config": {...}, "package": <the
                          distribution that registers it, or null>}`` (``package`` is optional)
``unconstrained``         NPE: whether the estimator models the prior's unconstrained θ;
                          NLE: whether its context is the unconstrained θ (rather than θ)
``prior``                 the prior's JSON spec
``parameter_names``       names of θ's columns
``output_names``          names of x's columns
``simulator_name``        the simulator of the training data, or null
``training``              training summary and loss curves, or null
``mcmc``                  NLE: the posterior's MCMC settings
``trials``                NLE: how many i.i.d. trials of the estimator's x make one x (1: the
                          estimator models x whole)
``x_bijection``           the transform of (the estimator's) x that it learned on: the spec of
                          an ``identity``, a ``log``, or a ``stack`` of them, column by column
``missing_trials``        NPE: ``[offset, trials, width]``, the block of x's i.i.d. trials an x
                          may leave some of out (trained with ``variable_trials``), or null
``sorted_trials``         NPE: ``[[offset, trials, width], ...]``, the blocks of x's i.i.d.
                          trials that the estimator sees sorted (``trial_order="sort"``)
``tensors``               name → ``[dtype, shape]`` of every tensor
``checksum``              SHA-256 over the JSON above and every tensor's bytes
========================  ===================================================================

Loading parses the header with safetensors (no code runs), checks the JSON against this schema,
the checksum against the content, and every tensor's name, dtype and shape against a model
rebuilt from the estimator registry (:mod:`sbitk.models.registry`), so a truncated, corrupted or
hand-edited file is refused with a :class:`~sbitk.errors.ModelFileError` saying what is wrong.
Files of an older readable version are brought to this version's meaning on reading
(:func:`_upgrade`). Files are written to a temporary file next to the target and renamed into
place, so a crash never leaves half a file.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> from sbitk.posteriors.direct import DirectPosterior
    >>> from sbitk.simulation.priors import Normal
    >>> posterior = DirectPosterior(ConditionalGaussian(2, 3), Normal(0.0, 1.0, dim=2))
    >>> path = Path(tempfile.mkdtemp()) / "posterior.safetensors"
    >>> save_model(path, posterior)
    >>> loaded = load_model(path)
    >>> theta, x = torch.zeros(4, 2), torch.ones(3)
    >>> torch.equal(loaded.log_prob(theta, x=x), posterior.log_prob(theta, x=x))
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from sbitk.errors import ModelFileError, SbitkError
from sbitk.nn.allocation import AllocationBudget

FORMAT = "sbitk-model"
#: Format version this sbitk writes; it reads this one and the versions in READABLE_VERSIONS.
FORMAT_VERSION = 10
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
METADATA_KEY = "sbitk"

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _version() -> str:
    from sbitk import __version__

    return __version__


def _checksum(header: dict, tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _history_json(history) -> dict | None:
    if history is None:
        return None
    if isinstance(history, dict):
        return history
    out = dict(history.summary())
    out["train_loss"] = list(history.train_loss)
    out["val_loss"] = list(history.val_loss)
    out["learning_rate"] = list(history.learning_rate)
    return out


def _parts(obj) -> tuple[str, nn.Module, dict]:
    """The role, estimator and descriptive fields of a posterior or likelihood."""
    from sbitk.posteriors.direct import DirectPosterior
    from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood

    if isinstance(obj, DirectPosterior):
        extra = {"unconstrained": obj.unconstrained, "source": obj}
        missing = None if obj.missing_trials is None else list(obj.missing_trials)
        extra["missing_trials"] = missing
        extra["sorted_trials"] = [list(block) for block in obj.sorted_trials]
        return "npe", obj.estimator, {**extra, "x_bijection": obj.x_bijection.spec()}
    if isinstance(obj, MCMCPosterior | SurrogateLikelihood):
        mcmc = dataclasses.asdict(obj.config) if isinstance(obj, MCMCPosterior) else None
        likelihood = obj.likelihood if isinstance(obj, MCMCPosterior) else obj
        extra = {"unconstrained": likelihood.unconstrained, "mcmc": mcmc, "source": likelihood}
        extra["trials"] = likelihood.trials
        extra["x_bijection"] = likelihood.x_bijection.spec()
        return "nle", likelihood.estimator, extra
    raise SbitkError(
        "save_model takes a DirectPosterior (NPE), an MCMCPosterior or a SurrogateLikelihood "
        f"(NLE), got {type(obj).__name__}"
    )


def save_model(path: str | os.PathLike, posterior_or_likelihood) -> None:
    """Write a trained posterior or likelihood to ``path`` as one safetensors file.

    Args:
        path: Target file (conventionally ``*.safetensors``); replaced atomically if it exists.
        posterior_or_likelihood: A :class:`~sbitk.posteriors.direct.DirectPosterior`, an
            :class:`~sbitk.posteriors.likelihood.MCMCPosterior` or a
            :class:`~sbitk.posteriors.likelihood.SurrogateLikelihood`.

    Raises:
        ModelFileError: The estimator is not in the estimator table or cannot be rebuilt from
            its config (for example it holds a user-defined embedding net).
    """
    from safetensors.torch import save

    from sbitk.io.atomic import write_bytes
    from sbitk.models.registry import estimator_config, estimator_name, estimator_package

    role, estimator, extra = _parts(posterior_or_likelihood)
    source = extra.pop("source")
    try:
        name = estimator_name(estimator)
    except SbitkError as exc:
        raise ModelFileError(f"cannot save this model: {exc}") from exc
    config = estimator_config(estimator)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in estimator.state_dict().items()}
    _check_rebuildable(name, config, tensors)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sbitk_version": _version(),
        "role": role,
        "estimator": {"name": name, "config": config, "package": estimator_package(name)},
        "prior": source.prior.spec(),
        "parameter_names": list(source.parameter_names),
        "output_names": list(source.output_names),
        "simulator_name": source.simulator_name,
        "training": _history_json(source.history),
        "tensors": {k: [_DTYPES[t.dtype], list(t.shape)] for k, t in tensors.items()},
        **extra,
    }
    header["checksum"] = _checksum(header, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(header)}), force=True)


def _check_rebuildable(name: str, config: dict, tensors: dict[str, Tensor]) -> None:
    try:
        rebuilt = _build(name, config, None)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot save this model: {exc}") from exc
    if set(rebuilt.state_dict()) != set(tensors):
        raise ModelFileError(
            "cannot save this model: an estimator rebuilt from its config has other tensors "
            "than the trained one (a user-defined embedding net?)"
        )


def _build(name: str, config: dict, package: str | None) -> nn.Module:
    from sbitk.models.registry import UnknownEstimatorError, get_estimator

    try:
        cls = get_estimator(name, package)
    except UnknownEstimatorError as exc:
        raise ModelFileError(f"cannot build the model: {exc}") from exc
    try:
        return cls.from_config(config)
    except ModelFileError:
        raise
    except (SbitkError, TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"estimator config for {name!r} is invalid: {exc}") from exc


# ---- reading ---------------------------------------------------------------------------------
_SCHEMA = {
    "format": str,
    "format_version": int,
    "sbitk_version": str,
    "role": str,
    "estimator": dict,
    "prior": dict,
    "parameter_names": list,
    "output_names": list,
    "simulator_name": (str, type(None)),
    "training": (dict, type(None)),
    "tensors": dict,
    "checksum": str,
}


def _read_header(path: Path) -> tuple[dict, dict[str, Tensor]]:
    from safetensors import safe_open

    if (path / "zarr.json").is_file():
        raise ModelFileError(
            f"{str(path)!r} is a simulation bank (a Zarr directory), not a model file; pass the "
            "model (.safetensors) that `sbitk train` wrote from it"
        )
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ModelFileError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"{str(path)!r} is a safetensors file without sbitk metadata: not an sbitk model file"
        )
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            f"{str(path)!r}: the sbitk metadata is not valid JSON: {exc}"
        ) from exc
    if not isinstance(header, dict):
        raise ModelFileError(
            f"{str(path)!r}: the sbitk metadata must be a JSON object, got {type(header).__name__}"
        )
    return header, tensors


def _validate(header: dict, where: str) -> None:
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{where}: format must be {FORMAT!r}, got {header.get('format')!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{where}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where}: written in model format version {version} by sbitk "
            f"{header.get('sbitk_version', '?')}; this sbitk ({_version()}) reads versions up to "
            f"{FORMAT_VERSION}: upgrade sbitk"
        )
    if version not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{where}: model format version {version} is no longer supported (this sbitk reads "
            f"versions {list(READABLE_VERSIONS)}); retrain the model or load it with the sbitk "
            "version that wrote it"
        )
    for key, kind in _SCHEMA.items():
        if key not in header:
            raise ModelFileError(f"{where}: the metadata lacks the field {key!r}")
        if not isinstance(header[key], kind) or (isinstance(header[key], bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ModelFileError(
                f"{where}: field {key!r} must be {names}, got {type(header[key]).__name__}"
            )
    if header["role"] not in ("npe", "nle"):
        raise ModelFileError(f"{where}: role must be 'npe' or 'nle', got {header['role']!r}")
    est = header["estimator"]
    if not isinstance(est.get("name"), str) or not isinstance(est.get("config"), dict):
        raise ModelFileError(f"{where}: estimator must be {{'name': str, 'config': object}}")
    if not isinstance(est.get("package"), str | None):
        raise ModelFileError(f"{where}: estimator.package must be a string or null")
    for key in ("parameter_names", "output_names"):
        if not all(isinstance(n, str) for n in header[key]):
            raise ModelFileError(f"{where}: {key} must be a list of strings")
    needed = header["role"] == "npe" or version >= 3
    if needed and not isinstance(header.get("unconstrained"), bool):
        raise ModelFileError(
            f"{where}: an {header['role'].upper()} model needs a boolean 'unconstrained' field"
        )
    trials = header.get("trials")
    if header["role"] == "nle" and version >= 4 and not _positive_int(trials):
        raise ModelFileError(f"{where}: an NLE model needs a positive integer 'trials' field")
    missing = header.get("missing_trials")
    if header["role"] == "npe" and version >= 6 and missing is not None and not _block(missing):
        raise ModelFileError(
            f"{where}: field 'missing_trials' must be null or [offset, trials, width], got "
            f"{missing!r}"
        )
    blocks = header.get("sorted_trials")
    listed = isinstance(blocks, list) and all(_block(b) for b in blocks)
    if header["role"] == "npe" and version >= 7 and not listed:
        raise ModelFileError(
            f"{where}: field 'sorted_trials' must be a list of [offset, trials, width], got "
            f"{blocks!r}"
        )
    if version >= 5 and not _x_bijection_spec(header.get("x_bijection")):
        raise ModelFileError(
            f"{where}: field 'x_bijection' must be the spec of an identity, a log, or a stack "
            f"of them, got {header.get('x_bijection')!r}"
        )


def _x_bijection_spec(spec, top: bool = True) -> bool:
    """Whether ``spec`` describes a transform of x this sbitk writes: the identity or the log
    of some columns (a stack of the two)."""
    if not isinstance(spec, dict):
        return False
    kind = spec.get("type")
    if kind == "stack" and top:
        parts = spec.get("parts")
        return isinstance(parts, list) and len(parts) > 0 and all(
            _x_bijection_spec(p, top=False) for p in parts
        )  # fmt: skip
    if kind not in ("identity", "log") or not _positive_int(spec.get("dim")):
        return False
    low = spec.get("low", [0.0] * spec["dim"])
    return kind == "identity" or (
        isinstance(low, list) and len(low) == spec["dim"]
        and all(isinstance(v, int | float) and math.isfinite(v) for v in low)
    )  # fmt: skip


def _block(value) -> bool:
    """Whether ``value`` has the form of a block of trials, ``[offset, trials, width]``."""
    return (
        isinstance(value, list) and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )  # fmt: skip


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _upgrade(header: dict) -> dict:
    """Bring validated metadata of an older readable version to this version's meaning.

    Version 1 to 2: the neural spline flow gained ``bin_scale`` (a factor on the unnormalised
    bin widths and heights, 1/8 by default) and ``conditioner`` (its couplings' network, a
    gated residual one by default). Version 1 splines had no factor, that is 1, and plain MLP
    conditioners. The ``format_version`` field keeps the version the file was written in.

    Version 2 to 3: an NLE surrogate may be conditioned on θ instead of the unconstrained
    :math:`f(\\theta)`, recorded in ``unconstrained``; version 2 NLE files were always
    conditioned on :math:`f(\\theta)`.

    Version 3 to 4: an NLE surrogate may model one of x's i.i.d. trials, recorded in
    ``trials``; version 3 NLE files modelled x whole (``trials`` 1).

    Version 4 to 5: the estimator may learn on the log of some of x's columns, recorded in
    ``x_bijection``; version 4 files learned on x itself (``None``: the identity).

    Version 5 to 6: an NPE posterior may take x with some i.i.d. trials left out, recorded in
    ``missing_trials``; version 5 posteriors took x whole (``None``).

    Version 6 to 7: an NPE posterior may see x's i.i.d. trials sorted, recorded in
    ``sorted_trials``; version 6 posteriors saw them in the order given (none).

    Version 7 to 8: flow matching and diffusion decide their skip from the training rows by
    default (``skip="auto"``). A version 7 file that names no skip (an ensemble's member
    options, or a config from before the option) used none for flow matching and N(0, I) for
    diffusion (:data:`_BEFORE_8`).

    Version 8 to 9: flow matching's fixed ODE steps fall on a ``grid``, finer at both ends
    (``"cosine"``) by default. A version 8 flow-matching file took equal steps, 12 where it
    names none (:data:`_BEFORE_9`).

    Version 9 to 10: flow matching chooses its fixed steps after training (``steps="auto"``)
    by default. A version 9 file that names no steps (an ensemble's member options) took 12.
    """
    if header["format_version"] < 2 and header["estimator"]["name"] == "nsf":
        config = header["estimator"]["config"]
        config.setdefault("bin_scale", 1.0)
        if not config.get("autoregressive", False):
            config.setdefault("conditioner", "mlp")
    if header["format_version"] < 3 and header["role"] == "nle":
        header.setdefault("unconstrained", True)
    if header["format_version"] < 4 and header["role"] == "nle":
        header.setdefault("trials", 1)
    if header["format_version"] < 5:
        header.setdefault("x_bijection", None)
    if header["format_version"] < 6 and header["role"] == "npe":
        header.setdefault("missing_trials", None)
    if header["format_version"] < 7 and header["role"] == "npe":
        header.setdefault("sorted_trials", [])
    if header["format_version"] < 8:
        _name_options(header["estimator"], _BEFORE_8)
    if header["format_version"] < 9:
        _name_options(header["estimator"], _BEFORE_9)
    if header["format_version"] < 10:
        _name_options(header["estimator"], _BEFORE_10)
    return header


#: The skip of flow matching and diffusion in files before version 8, which did not name it.
_BEFORE_8 = {"flow_matching": {"skip": "none"}, "diffusion": {"skip": "standard"}}
#: Flow matching's ODE grid in files before version 9: equal steps, 12 unless named.
_BEFORE_9 = {"flow_matching": {"steps": 12, "grid": "equal"}}
#: Flow matching's fixed steps in files before version 10, where a file does not name them.
_BEFORE_10 = {"flow_matching": {"steps": 12}}


def _name_options(estimator: dict, defaults: dict[str, dict]) -> None:
    """Name, in an older estimator's config (or its ensemble's member options), the options
    ``defaults`` gives for its estimator that the file does not name."""
    name, config = estimator["name"], estimator["config"]
    if name == "ensemble" and config.get("member") in defaults:
        name, config = config["member"], config.setdefault("options", {})
    for key, value in defaults.get(name, {}).items():
        config.setdefault(key, value)


def read_metadata(path: str | os.PathLike) -> dict:
    """The validated JSON metadata of a model file, without building the model."""
    path = Path(path)
    header, _ = _read_header(path)
    _validate(header, str(path))
    return _upgrade(header)


def load_model(path: str | os.PathLike, *, device: str = "cpu"):
    """Read a model file written by :func:`save_model`.

    Args:
        path: The file.
        device: Where to put the estimator (``"auto"``: CUDA when present).

    Returns:
        A :class:`~sbitk.posteriors.direct.DirectPosterior` for an NPE file, an
        :class:`~sbitk.posteriors.likelihood.MCMCPosterior` (its ``.likelihood`` is the
        surrogate) for an NLE file.

    Raises:
        ModelFileError: The file is missing, truncated, corrupted, edited by hand, of a format
            version this sbitk does not read, or inconsistent with the estimator it names.
    """
    from sbitk.inference.training import resolve_device
    from sbitk.posteriors.direct import DirectPosterior
    from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood
    from sbitk.posteriors.mcmc import MCMCConfig
    from sbitk.simulation.bijections import bijection_from_spec
    from sbitk.simulation.priors import prior_from_spec

    path = Path(path)
    where = str(path)
    header, tensors = _read_header(path)
    _validate(header, where)
    expected = header.pop("checksum")
    if _checksum(header, tensors) != expected:
        raise ModelFileError(
            f"{where}: checksum mismatch: the file's metadata or weights were changed after it "
            "was written (hand-edited or corrupted)"
        )
    _upgrade(header)
    declared = header["tensors"]
    if set(declared) != set(tensors):
        raise ModelFileError(
            f"{where}: the metadata lists tensors {sorted(set(declared) ^ set(tensors))} that "
            "the file does not hold, or the reverse"
        )
    est = header["estimator"]
    model = _build_within(est, tensors, where)
    state = model.state_dict()
    missing, extra = set(state) - set(tensors), set(tensors) - set(state)
    if missing or extra:
        raise ModelFileError(
            f"{where}: tensors do not match estimator {est['name']!r}: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    for name, ref in state.items():
        t = tensors[name]
        # Floating weights load in the precision the model is built in, this process's default
        # (a model trained in float64 serves a float32 process, and the reverse).
        floats = t.is_floating_point() and ref.is_floating_point()
        if t.shape != ref.shape or (t.dtype != ref.dtype and not floats):
            raise ModelFileError(
                f"{where}: tensor {name!r} has {t.dtype} {tuple(t.shape)}, estimator "
                f"{est['name']!r} expects {ref.dtype} {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelFileError(f"{where}: tensor {name!r} holds NaN or Inf values")
    model.load_state_dict(tensors, strict=True)
    _check_structure(model, where)
    try:
        prior = prior_from_spec(header["prior"])
    except SbitkError as exc:
        raise ModelFileError(f"{where}: invalid prior spec: {exc}") from exc
    spec = header["x_bijection"]
    common = {
        "parameter_names": header["parameter_names"],
        "output_names": header["output_names"],
        "simulator_name": header["simulator_name"],
        "history": header["training"],
        "x_bijection": None if spec is None else bijection_from_spec(spec),
    }
    try:
        if header["role"] == "npe":
            obj = DirectPosterior(
                model, prior, unconstrained=header["unconstrained"],
                missing_trials=header["missing_trials"],
                sorted_trials=header["sorted_trials"], **common,
            )  # fmt: skip
        else:
            unconstrained = header["unconstrained"]
            likelihood = SurrogateLikelihood(
                model, prior, unconstrained=unconstrained, trials=header["trials"], **common
            )
            mcmc = header.get("mcmc")
            config = MCMCConfig(**mcmc) if isinstance(mcmc, dict) else None
            obj = MCMCPosterior(likelihood, config)
    except (SbitkError, TypeError) as exc:
        raise ModelFileError(f"{where}: metadata does not fit the estimator: {exc}") from exc
    model.to(resolve_device(device))
    return obj


#: Values the estimator's constructor may allocate while a model file is loaded, beyond
#: :data:`BUILD_FACTOR` times the values the file holds: room for masks, initialisations and
#: temporaries, far below a hand-edited config's 100,000-wide layers (10^10 values).
BUILD_SLACK = 2**24
BUILD_FACTOR = 64


def _build_within(est: dict, tensors: dict[str, Tensor], where: str) -> nn.Module:
    """Build the estimator the file names, refusing a config whose sizes would allocate far
    more than the weights the file holds (validated before any memory is taken)."""
    held = sum(t.numel() for t in tensors.values())
    budget = BUILD_FACTOR * held + BUILD_SLACK
    describe = f"{where}: the config of estimator {est['name']!r} does not fit its weights"

    def refuse(used: int) -> ModelFileError:
        return ModelFileError(
            f"{describe}: building it would allocate more than {budget} values, far more "
            "than the file's weights (a hand-edited config?)"
        )

    with AllocationBudget(budget, refuse):
        return _build(est["name"], est["config"], est.get("package"))


def _is_permutation(index: Tensor) -> bool:
    n = index.numel()
    return index.dim() == 1 and torch.equal(index.sort().values, torch.arange(n))


def _is_permutation_matrix(p: Tensor) -> bool:
    if p.dim() != 2 or p.shape[0] != p.shape[1] or not ((p == 0) | (p == 1)).all():
        return False
    ones = torch.ones(p.shape[0], dtype=p.dtype)
    return torch.equal(p.sum(0), ones) and torch.equal(p.sum(1), ones)


def _check_structure(model: nn.Module, where: str) -> None:
    """Check the tensors that are structure, not weights: a permutation must be a permutation
    (with its inverse), an LU layer's permutation matrix a permutation matrix and its signs
    ±1, a MADE mask zeros and ones. A checksum only shows the file is as written, not that
    what was written makes sense."""
    from sbitk.models.flows.transforms import LULinear, Permutation
    from sbitk.nn.made import MADE

    for name, module in model.named_modules():
        problem = None
        if isinstance(module, Permutation):
            perm = module.perm.cpu()
            if not _is_permutation(perm):
                problem = f"perm is not a permutation of 0..{perm.numel() - 1}"
            elif not torch.equal(module.inverse_perm.cpu(), torch.argsort(perm)):
                problem = "inverse_perm is not the inverse of perm"
        elif isinstance(module, LULinear):
            if not _is_permutation_matrix(module.permutation.cpu()):
                problem = "permutation is not a permutation matrix"
            elif not (module.sign.abs() == 1).all():
                problem = "sign holds values other than +1 and -1"
            elif not torch.equal(module.eye.cpu(), torch.eye(len(module.eye)).to(module.eye)):
                problem = "eye is not the identity"
        elif isinstance(module, MADE):
            for key, mask in module.named_buffers(recurse=False):
                if key.startswith("mask") and not ((mask == 0) | (mask == 1)).all():
                    problem = f"{key} holds values other than 0 and 1"
        if problem:
            raise ModelFileError(f"{where}: structural tensor of {name or 'the model'}: {problem}")


__all__ = ["FORMAT_VERSION", "load_model", "read_metadata", "save_model"]
