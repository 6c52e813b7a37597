"""The simulator interface: X = φ(Y, η).

A :class:`Simulator` declares named parameters Y, each with a prior, named outputs X with their
shapes, and a function that maps a batch of parameters and a ``torch.Generator`` to a batch of
outputs. All noise η comes from that generator, so the same seed gives the same simulations.

Parameters and outputs are flattened to vectors: θ has shape (*, D_θ) and x (*, D_x). A
parameter ``theta`` whose prior has dimension 3 becomes the columns ``theta[0]``, ``theta[1]``,
``theta[2]``; an output ``counts`` of shape (2, 2) becomes ``counts[0,0]`` … ``counts[1,1]``.

Example:
    >>> import torch
    >>> from sbitk.simulation.priors import BoxUniform
    >>> @simulator("shifted_noise", parameters={"mu": BoxUniform(-1.0, 1.0)},
    ...            outputs={"x": (2,)}, register=False)
    ... def shifted_noise(theta, generator):
    ...     return theta + 0.1 * torch.randn(theta.shape[0], 2, generator=generator)
    >>> shifted_noise.parameter_names, shifted_noise.output_names
    (['mu'], ['x[0]', 'x[1]'])
    >>> shifted_noise(torch.zeros(4, 1), torch.Generator().manual_seed(0)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import itertools
import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sbitk.errors import SimulatorError
from sbitk.simulation.priors import Prior, Product, as_prior

#: Row status codes of a simulation, stored in a bank next to the validity mask.
#: ``STATUS_SHAPE``: the simulator returned the wrong shape (or type) for this row's θ.
STATUS_OK, STATUS_EXCEPTION, STATUS_NAN, STATUS_INF, STATUS_SHAPE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_EXCEPTION: "exception",
    STATUS_NAN: "nan",
    STATUS_INF: "inf",
    STATUS_SHAPE: "shape",
}


def _flat_names(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    idx = itertools.product(*(range(s) for s in shape))
    return [f"{name}[{','.join(map(str, i))}]" for i in idx]


@dataclass(frozen=True, eq=False)
class BatchResult:
    """The outcome of one batch: outputs, a per-row status code, and messages of failures.

    ``x`` holds NaN in every row whose status is not :data:`STATUS_OK`.
    """

    x: Tensor
    status: Tensor
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def valid(self) -> Tensor:
        return self.status == STATUS_OK


@dataclass(frozen=True, eq=False)
class Simulator:
    """A registered simulator X = φ(Y, η).

    Args:
        name: Registry name.
        parameters: Ordered mapping from parameter name to its prior (or a torch distribution).
        outputs: Ordered mapping from output name to its shape (``()`` for a scalar).
        fn: ``fn(theta, generator) -> x``. Vectorized: ``theta`` is (N, D_θ) and ``x`` is (N, D_x)
            or a mapping from output name to (N, *shape). Not vectorized: one row (D_θ,) in, one
            output (D_x,) (or a mapping) out; it is then run row by row.
        vectorized: Whether ``fn`` takes a batch.
        version: Bumped when the simulator's behaviour changes; stored in banks.
        description: One paragraph for ``sbitk simulators show``.
        reference_posterior: Optional exact sampler ``(x_o (D_x,), n, generator) -> (n, D_θ)``.
        trials: Outputs whose first axis indexes trials that are i.i.d. given θ (slcp's four
            points): their order carries no information, so training may permute them
            (:func:`trial_blocks`).
    """

    name: str
    parameters: Mapping[str, Prior]
    outputs: Mapping[str, tuple[int, ...]]
    fn: Callable
    vectorized: bool = True
    version: str = "1"
    description: str = ""
    reference_posterior: Callable | None = None
    trials: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise SimulatorError(f"a simulator needs a non-empty string name, got {self.name!r}")
        if not self.parameters:
            raise SimulatorError(f"simulator {self.name!r} declares no parameters")
        if not self.outputs:
            raise SimulatorError(f"simulator {self.name!r} declares no outputs")
        params = {str(k): as_prior(v) for k, v in self.parameters.items()}
        outs = {}
        for key, shape in self.outputs.items():
            shape_t = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
            if any(s <= 0 for s in shape_t):
                raise SimulatorError(
                    f"simulator {self.name!r}: output {key!r} has invalid shape {shape_t}"
                )
            outs[str(key)] = shape_t
        object.__setattr__(self, "parameters", params)
        object.__setattr__(self, "outputs", outs)
        trials = (self.trials,) if isinstance(self.trials, str) else tuple(self.trials)
        for key in trials:
            if key not in outs or len(outs[key]) < 1 or outs[key][0] < 2:
                raise SimulatorError(
                    f"simulator {self.name!r}: trials names {key!r}, which must be an output "
                    f"whose first axis holds at least 2 trials (outputs: {outs})"
                )
        object.__setattr__(self, "trials", trials)

    # ---- derived structure -------------------------------------------------------------------
    @property
    def prior(self) -> Prior:
        """The joint prior over θ (D_θ,), the product of the parameters' priors."""
        priors = list(self.parameters.values())
        return priors[0] if len(priors) == 1 else Product(priors)

    @property
    def parameter_names(self) -> list[str]:
        return [
            n
            for name, prior in self.parameters.items()
            for n in _flat_names(name, () if prior.dim == 1 else (prior.dim,))
        ]

    @property
    def output_names(self) -> list[str]:
        return [n for name, shape in self.outputs.items() for n in _flat_names(name, shape)]

    @property
    def theta_dim(self) -> int:
        return sum(p.dim for p in self.parameters.values())

    @property
    def x_dim(self) -> int:
        return sum(math.prod(s) for s in self.outputs.values())

    def describe(self) -> dict:
        """A JSON-serialisable description (names, priors, outputs), stored in banks and models."""
        return {
            "name": self.name,
            "version": self.version,
            "parameters": {k: p.spec() for k, p in self.parameters.items()},
            "parameter_names": self.parameter_names,
            "outputs": {k: list(s) for k, s in self.outputs.items()},
            "output_names": self.output_names,
            "prior": self.prior.spec(),
            "trials": list(self.trials),
        }

    # ---- running -----------------------------------------------------------------------------
    def _check_theta(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta)
        if theta.dim() != 2 or theta.shape[1] != self.theta_dim:
            raise SimulatorError(
                f"simulator {self.name!r} takes theta of shape (N, {self.theta_dim}), "
                f"got {tuple(theta.shape)}"
            )
        return theta

    def _to_matrix(self, out, n: int) -> Tensor:
        """Turn what ``fn`` returned into an (n, D_x) float tensor, or raise a clear error."""
        lead = (n,) if self.vectorized else ()
        if isinstance(out, Mapping):
            if set(out) != set(self.outputs):
                raise SimulatorError(
                    f"simulator {self.name!r} returned outputs {sorted(out)}, "
                    f"expected {list(self.outputs)}"
                )
            parts = []
            for key, shape in self.outputs.items():
                part = self._as_tensor(out[key], key)
                if tuple(part.shape) != lead + shape:
                    raise SimulatorError(
                        f"simulator {self.name!r}: output {key!r} has shape "
                        f"{tuple(part.shape)}, expected {lead + shape}"
                    )
                parts.append(part.reshape(*lead, math.prod(shape)))
            x = torch.cat(parts, dim=-1)
        else:
            x = self._as_tensor(out, "x")
            expected = (*lead, self.x_dim)
            if tuple(x.shape) != expected:
                if x.numel() == math.prod(expected) and len(self.outputs) == 1:
                    single = next(iter(self.outputs.values()))
                    if tuple(x.shape) == lead + single:
                        x = x.reshape(expected)
                if tuple(x.shape) != expected:
                    raise SimulatorError(
                        f"simulator {self.name!r} returned shape {tuple(x.shape)}, "
                        f"expected {expected}"
                    )
        return x.to(torch.get_default_dtype())

    def _as_tensor(self, value, key: str) -> Tensor:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise SimulatorError(
                    f"simulator {self.name!r}: output {key!r} has dtype {value.dtype}, "
                    "expected a real number type"
                )
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise SimulatorError(
                f"simulator {self.name!r}: output {key!r} is a {type(value).__name__}, "
                "expected a torch.Tensor or numpy array"
            )
        if value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_TYPES):
            raise SimulatorError(
                f"simulator {self.name!r}: output {key!r} has dtype {value.dtype}, "
                "expected a real floating point or integer type"
            )
        return value

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate x (N, D_x) for θ (N, D_θ); exceptions propagate, NaN/Inf are returned."""
        theta = self._check_theta(theta).to(torch.get_default_dtype())
        if self.vectorized:
            return self._to_matrix(self.fn(theta, generator), theta.shape[0])
        rows = [self._to_matrix(self.fn(row, generator), 1) for row in theta]
        return torch.stack(rows) if rows else theta.new_zeros(0, self.x_dim)

    def run_batch(self, theta: Tensor, generator: torch.Generator) -> BatchResult:
        """Simulate with failures caught per row: each becomes a status code and a message.

        An exception, NaN, Inf, or an output of the wrong shape or type for some θ: a vectorized
        simulator that raises or returns the wrong shape on the batch is rerun row by row to
        find the rows at fault (the others keep their values). When every row of a batch of at
        least :data:`MISDECLARED_ROWS` has the wrong shape or type, the simulator is
        mis-declared: that is a
        :class:`~sbitk.errors.SimulatorError` naming the expected and the found shape.
        """
        theta = self._check_theta(theta).to(torch.get_default_dtype())
        status = torch.zeros(theta.shape[0], dtype=torch.int8)
        errors: dict[int, str] = {}
        if self.vectorized:
            state = generator.get_state()
            try:
                x = self(theta, generator)
            except SimulatorError as exc:  # the wrong shape or type, for some θ or for all
                generator.set_state(state)
                x, status, errors = self._rows(theta, generator, batched_fn=True)
                self._raise_if_misdeclared(theta, status, errors, exc)
            except Exception:
                generator.set_state(state)
                x, status, errors = self._rows(theta, generator, batched_fn=True)
        else:
            x, status, errors = self._rows(theta, generator, batched_fn=False)
            self._raise_if_misdeclared(theta, status, errors, None)
        if not errors and _all_finite(x):  # the common case, without per-row passes
            return BatchResult(x=x, status=status, errors=errors)
        finite = torch.isfinite(x)
        nan_rows = torch.isnan(x).any(-1) & (status == STATUS_OK)
        inf_rows = (~finite).any(-1) & ~torch.isnan(x).any(-1) & (status == STATUS_OK)
        status[nan_rows] = STATUS_NAN
        status[inf_rows] = STATUS_INF
        x[status != STATUS_OK] = math.nan
        return BatchResult(x=x, status=status, errors=errors)

    def _rows(self, theta: Tensor, generator, batched_fn: bool):
        n = theta.shape[0]
        x = torch.full((n, self.x_dim), math.nan)
        status = torch.zeros(n, dtype=torch.int8)
        errors: dict[int, str] = {}
        for i in range(n):
            try:
                if batched_fn:
                    out = self._to_matrix(self.fn(theta[i : i + 1], generator), 1)[0]
                else:
                    out = self._to_matrix(self.fn(theta[i], generator), 1)
            except SimulatorError as exc:
                status[i] = STATUS_SHAPE
                errors[i] = f"wrong output: {exc}"
                continue
            except Exception as exc:
                status[i] = STATUS_EXCEPTION
                errors[i] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                continue
            x[i] = out
        return x, status, errors

    def _raise_if_misdeclared(
        self, theta: Tensor, status: Tensor, errors: dict[int, str], batch_error
    ) -> None:
        """A batch of at least :data:`MISDECLARED_ROWS` rows, every one with the wrong output, is
        a mis-declared simulator: raise. A shorter batch (a run's tail) keeps them as invalid."""
        if len(status) < MISDECLARED_ROWS or not bool((status == STATUS_SHAPE).all()):
            return
        message = batch_error or errors[0].removeprefix("wrong output: ")
        row = [round(float(v), 6) for v in theta[0]]
        raise SimulatorError(
            f"{message}, for every row of a batch of {len(status)} (the first at θ = {row}); "
            f"check the outputs declared for simulator {self.name!r}"
        )


def _all_finite(x: Tensor) -> bool:
    """Whether every value of ``x`` is finite. A sum is NaN or ±Inf whenever a value is, and
    costs a tenth of :func:`torch.isfinite`'s pass for a cheap simulator's batch; only a sum
    that is not finite (a value that is not, or an overflow) takes the exact check."""
    if not x.is_floating_point():
        return True
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


#: Fewest rows of a batch whose every row has the wrong output that :meth:`Simulator.run_batch`
#: takes as a mis-declared simulator: a simulator wrong for a fraction f of θ fails that way
#: with probability f**10, while a short tail batch of a sound run can be wrong in every row.
MISDECLARED_ROWS = 10

_INT_TYPES = {torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool}


def simulator(
    name: str | None = None,
    *,
    parameters: Mapping[str, Prior],
    outputs: Mapping[str, tuple[int, ...] | int],
    vectorized: bool = True,
    version: str = "1",
    description: str = "",
    reference_posterior: Callable | None = None,
    trials: Sequence[str] = (),
    register: bool = True,
) -> Callable[[Callable], Simulator]:
    """Decorator that turns a function into a :class:`Simulator` and registers it.

    Args:
        name: Registry name; the function's name when omitted.
        parameters, outputs, vectorized, version, description, reference_posterior, trials:
            As in :class:`Simulator`.
        register: Add it to the in-process registry (an existing name is an error).
    """

    def wrap(fn: Callable) -> Simulator:
        sim = Simulator(
            name=name or fn.__name__,
            parameters=parameters,
            outputs=outputs,
            fn=fn,
            vectorized=vectorized,
            version=version,
            description=description or (fn.__doc__ or "").strip(),
            reference_posterior=reference_posterior,
            trials=tuple(trials),
        )
        if register:
            from sbitk.simulation.registry import register as _register

            _register(sim)
        return sim

    return wrap


def trial_blocks(description: Mapping) -> list[tuple[int, int, int]]:
    """Where the i.i.d. trials of a simulator's flat x lie: one ``(offset, trials, width)`` per
    output it declares as trials, from its :meth:`Simulator.describe` (as banks store it).

    Example:
        >>> trial_blocks({"outputs": {"s": [], "x": [4, 2]}, "trials": ["x"]})
        [(1, 4, 2)]
    """
    blocks, offset = [], 0
    trials = set(description.get("trials") or ())
    for key, shape in description["outputs"].items():
        size = math.prod(shape)
        if key in trials:
            blocks.append((offset, int(shape[0]), size // int(shape[0])))
        offset += size
    return blocks


def sort_trials(x: Tensor, blocks: Sequence[tuple[int, int, int]]) -> Tensor:
    """``x`` (*, D_x) with the i.i.d. trials of each block in one canonical order: ascending
    by their first value, ties broken by the next ones (lexicographic).

    The trials' order carries no information, and their values in this order (the order
    statistics) hold all that they do: a model of x in this order is blind to the order
    without learning it. ``blocks`` holds ``(offset, trials, width)`` per output of trials
    (:func:`trial_blocks`).

    Example:
        >>> x = torch.tensor([[9.0, 3.0, 1.0, 1.0, 2.0, 1.0, 0.0]])
        >>> sort_trials(x, [(1, 3, 2)]).tolist()
        [[9.0, 1.0, 0.0, 1.0, 2.0, 3.0, 1.0]]
    """
    if not blocks:
        return x
    x = x.clone()
    for offset, trials, width in blocks:
        stop = offset + trials * width
        part = x[..., offset:stop].reshape(*x.shape[:-1], trials, width)
        for column in reversed(range(width)):  # stable sorts, the last key first
            order = part[..., column].argsort(dim=-1, stable=True)
            part = part.gather(-2, order[..., None].expand(part.shape))
        x[..., offset:stop] = part.reshape(*x.shape[:-1], trials * width)
    return x


__all__ = [
    "STATUS_EXCEPTION",
    "STATUS_INF",
    "STATUS_NAMES",
    "STATUS_NAN",
    "STATUS_OK",
    "STATUS_SHAPE",
    "BatchResult",
    "Simulator",
    "simulator",
    "sort_trials",
    "trial_blocks",
]
