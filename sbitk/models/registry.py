"""Where estimators are found by name, like simulators.

Two sources, looked up in this order:

1. the in-process registry, filled by the :func:`estimator` decorator;
2. the entry-point group ``sbitk.estimators``, through which any installed package offers
   estimator classes without touching sbitk. sbitk's own estimators are registered the same way
   (``[project.entry-points."sbitk.estimators"]`` in its ``pyproject.toml``), so that a new
   family is one module plus one line there.

Listing names (:func:`available_estimators`) reads entry-point metadata only and imports no
estimator module, so the command line's ``--help`` needs no torch. Model files store the name;
loading one builds the class registered under it, and nothing else.

Example:
    >>> "nsf" in available_estimators() and "gaussian" in available_estimators()
    True
    >>> get_estimator("gaussian").__name__
    'ConditionalGaussian'
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from sbitk.errors import SbitkError
from sbitk.models.contract import ContractError, density_kind
from sbitk.models.options import check_options

ENTRY_POINT_GROUP = "sbitk.estimators"

#: The estimator each role uses when none is named, decided here only (API, ``train`` and
#: ``run`` read it). As a posterior, the ensemble of three spline flows: one flow's
#: highest-density regions fall short of their level on two_moons (by up to 0.09 over 1,000
#: fresh simulations; the crescents' weights are off) and three are calibrated, at three times
#: the training (3 to 6 times on a loaded machine); C2ST over the 10 reference observations was
#: 0.553 against 0.566 (two_moons) and 0.844 against 0.855 (slcp). As a likelihood the spline
#: flow: NLE's MCMC evaluates every member at every step.
#: NRE's classifier of (θ, x) pairs, under the key ``"ratio"``, is the ratio estimator with
#: the NRE-C loss.
DEFAULT_ESTIMATORS = {"posterior": "ensemble", "likelihood": "nsf", "ratio": "ratio"}


def default_estimator(role: str) -> str:
    """The estimator name used by default for ``role``: ``"posterior"`` (NPE),
    ``"likelihood"`` (NLE) or ``"ratio"`` (NRE).

    Example:
        >>> default_estimator("likelihood")
        'nsf'
    """
    try:
        return DEFAULT_ESTIMATORS[role]
    except KeyError:
        raise SbitkError(
            f"role must be one of {sorted(DEFAULT_ESTIMATORS)}, got {role!r}"
        ) from None


_REGISTRY: dict[str, type] = {}


class UnknownEstimatorError(SbitkError, KeyError):
    """No estimator is registered under the name asked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _check_class(cls: Any, name: str) -> None:
    if not isinstance(cls, type):
        raise ContractError(f"estimator {name!r} must be a class, got {type(cls).__name__}")
    if not callable(getattr(cls, "from_config", None)) or not callable(getattr(cls, "loss", None)):
        raise ContractError(f"estimator class {cls.__name__} ({name!r}) lacks from_config or loss")
    density_kind(cls)


def estimator(name: str, *, overwrite: bool = False):
    """Class decorator: register an estimator class under ``name`` in this process.

    Example:
        >>> from sbitk.models.gaussian import ConditionalGaussian
        >>> @estimator("my_gaussian")
        ... class MyGaussian(ConditionalGaussian):
        ...     pass
        >>> get_estimator("my_gaussian") is MyGaussian
        True
        >>> unregister("my_gaussian")
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise SbitkError(f"an estimator name must be an identifier, got {name!r}")

    def register(cls: type) -> type:
        _check_class(cls, name)
        existing = _REGISTRY.get(name) or _entry_class(name)
        if existing is not None and existing is not cls and not overwrite:
            raise SbitkError(
                f"an estimator named {name!r} is already registered ({existing.__name__}); "
                "pass overwrite=True to replace it"
            )
        _REGISTRY[name] = cls
        return cls

    return register


def unregister(name: str) -> None:
    """Remove an estimator from the in-process registry (entry points are unaffected)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _entry_class(name: str) -> type | None:
    ep = _entry_points().get(name)
    return None if ep is None else _load(ep)


def _load(ep) -> type:
    try:
        cls = ep.load()
    except Exception as exc:  # a broken third-party package must not hide the others
        raise SbitkError(
            f"estimator {ep.name!r} from entry point {ep.value!r} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _check_class(cls, ep.name)
    return cls


def available_estimators() -> list[str]:
    """Names of every estimator that can be looked up, sorted (imports no estimator)."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_estimator(name: str, package: str | None = None) -> type:
    """The estimator class registered as ``name``.

    Args:
        name: The registered name.
        package: The distribution that provided it where known (from a model file), named in
            the error when it is not installed.

    Raises:
        UnknownEstimatorError: one line naming the estimator, the package and what is known.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return _load(eps[name])
    hint = f" (it comes from the package {package!r}: install it)" if package else ""
    raise UnknownEstimatorError(
        f"estimator {name!r} is not installed{hint}; known: {', '.join(available_estimators())}"
    )


def estimator_name(model: Any) -> str:
    """The name ``model``'s class is registered under."""
    cls = type(model)
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    eps = _entry_points()
    # An entry point names its class as "module:Qualname": match without importing the others.
    where = f"{cls.__module__}:{cls.__qualname__}"
    for name, ep in eps.items():
        if ep.value.replace(" ", "") == where:
            return name
    raise UnknownEstimatorError(
        f"estimator class {cls.__name__} is not registered; register it with "
        "@sbitk.models.registry.estimator(NAME) or the entry-point group 'sbitk.estimators'"
    )


def estimator_package(name: str) -> str | None:
    """The installed distribution that registers ``name`` through an entry point, if any."""
    ep = _entry_points().get(name)
    dist = getattr(ep, "dist", None)
    return None if dist is None else dist.metadata["Name"]


def check_estimator_options(name: str, options: Mapping[str, Any]) -> type:
    """The class of estimator ``name``, once ``options`` are known to be its options, each of
    the kind its config takes (where the class names its config as ``config_class``), and have
    passed the class's own ``check_options(options)`` where it has one."""
    cls = get_estimator(name)
    config_class = getattr(cls, "config_class", None)
    if config_class is not None:
        check_options(config_class, options, name)
    more = getattr(cls, "check_options", None)  # what else the class can check without data
    if callable(more):
        more(options)
    return cls


def build_estimator(name: str, features: int, context: int, **options) -> Any:
    """Build the estimator registered as ``name`` for ``features`` given ``context`` sizes.

    Its options are checked first (:func:`check_estimator_options`), and building it may
    allocate at most half the memory available now (in float32 values): larger layers are
    refused in one line before anything is allocated."""
    from sbitk.nn.allocation import AllocationBudget  # torch: not for listing names
    from sbitk.simulation.resources import MEMORY_FRACTION, available_memory, format_bytes

    cls = check_estimator_options(name, options)
    budget = MEMORY_FRACTION * available_memory() / 4

    def refuse(used: int) -> SbitkError:
        return SbitkError(
            f"estimator {name!r} with these options would take more than "
            f"{format_bytes(4 * budget)} of memory, half of what is available; ask for "
            "smaller layers or fewer of them"
        )

    try:
        with AllocationBudget(budget, refuse):
            return cls(features, context, **options)
    except TypeError as exc:
        raise SbitkError(f"bad options for estimator {name!r}: {exc}") from exc


def estimator_config(model: Any) -> dict:
    """The JSON-ready config of ``model`` (its ``config`` dataclass, tuples as lists)."""
    from dataclasses import asdict

    def plain(value):
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in asdict(model.config).items()}


__all__ = [
    "DEFAULT_ESTIMATORS",
    "ENTRY_POINT_GROUP",
    "UnknownEstimatorError",
    "available_estimators",
    "build_estimator",
    "check_estimator_options",
    "default_estimator",
    "estimator",
    "estimator_config",
    "estimator_name",
    "estimator_package",
    "get_estimator",
    "unregister",
]
