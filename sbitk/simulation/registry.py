"""Where simulators are found by name.

Two sources, looked up in this order:

1. the in-process registry, filled by the :func:`~sbitk.simulation.simulator.simulator`
   decorator or :func:`register`;
2. the entry-point group ``sbitk.simulators``, through which any installed package (sbitk's own
   built-in simulators included) offers simulators without touching sbitk. An entry point names a
   :class:`~sbitk.simulation.simulator.Simulator` object, or a callable that returns one.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from sbitk.errors import SimulatorError, UnknownSimulatorError
from sbitk.simulation.simulator import Simulator

ENTRY_POINT_GROUP = "sbitk.simulators"

_REGISTRY: dict[str, Simulator] = {}


def register(sim: Simulator, *, overwrite: bool = False) -> Simulator:
    """Add a simulator to the in-process registry."""
    if not isinstance(sim, Simulator):
        raise SimulatorError(f"only Simulator objects can be registered, got {type(sim).__name__}")
    existing = _REGISTRY.get(sim.name)
    if existing is not None and existing is not sim and not overwrite:
        raise SimulatorError(
            f"a simulator named {sim.name!r} is already registered; pass overwrite=True to replace"
        )
    _REGISTRY[sim.name] = sim
    return sim


def unregister(name: str) -> None:
    """Remove a simulator from the in-process registry (entry points are unaffected)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(ep) -> Simulator:
    try:
        obj = ep.load()
        if not isinstance(obj, Simulator) and callable(obj):
            obj = obj()
    except SimulatorError:
        raise
    except Exception as exc:  # a broken third-party package must not hide the others
        raise SimulatorError(
            f"simulator {ep.name!r} from entry point {ep.value!r} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, Simulator):
        raise SimulatorError(
            f"entry point {ep.name!r} ({ep.value}) gave a {type(obj).__name__}, not a Simulator"
        )
    return obj


def available() -> list[str]:
    """Names of every simulator that can be looked up, sorted."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_simulator(name_or_simulator: str | Simulator) -> Simulator:
    """Look a simulator up by name, or pass a :class:`Simulator` through unchanged.

    Raises:
        UnknownSimulatorError: for a name that is not registered; the message lists the names.
    """
    if isinstance(name_or_simulator, Simulator):
        return name_or_simulator
    name = str(name_or_simulator)
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return _load(eps[name])
    names = ", ".join(available()) or "(none)"
    raise UnknownSimulatorError(f"unknown simulator {name!r}; available: {names}")


__all__ = ["ENTRY_POINT_GROUP", "available", "get_simulator", "register", "unregister"]
