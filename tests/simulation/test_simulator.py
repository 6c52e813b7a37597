"""The Simulator interface: declarations, output checks, per-row failures, registry."""

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from sbitk.errors import SimulatorError, UnknownSimulatorError
from sbitk.simulation import registry
from sbitk.simulation.priors import BoxUniform, LogNormal, MultivariateNormal, Normal
from sbitk.simulation.simulator import (
    MISDECLARED_ROWS,
    STATUS_EXCEPTION,
    STATUS_INF,
    STATUS_NAN,
    STATUS_OK,
    STATUS_SHAPE,
    Simulator,
    simulator,
)


def shifted(theta, generator):
    return theta + torch.randn(theta.shape, generator=generator)


def make(fn=shifted, **kwargs):
    defaults = dict(
        name="toy",
        parameters={"a": Normal(0.0, 1.0), "b": BoxUniform(0.0, 1.0)},
        outputs={"x": (2,)},
        fn=fn,
    )
    return Simulator(**{**defaults, **kwargs})


def test_names_and_dimensions_are_flattened_in_order():
    sim = Simulator(
        name="structured",
        parameters={
            "w": MultivariateNormal(torch.zeros(3), torch.eye(3)),
            "s": LogNormal(0.0, 1.0),
        },
        outputs={"counts": (2, 2), "total": ()},
        fn=lambda t, g: {"counts": torch.zeros(t.shape[0], 2, 2), "total": torch.ones(t.shape[0])},
    )
    assert sim.parameter_names == ["w[0]", "w[1]", "w[2]", "s"]
    assert sim.output_names == [
        "counts[0,0]",
        "counts[0,1]",
        "counts[1,0]",
        "counts[1,1]",
        "total",
    ]
    assert (sim.theta_dim, sim.x_dim) == (4, 5)
    x = sim(torch.zeros(3, 4))
    assert x.shape == (3, 5)
    assert x[:, -1].eq(1).all() and x[:, :4].eq(0).all()
    assert sim(torch.zeros(0, 4)).shape == (0, 5)  # an empty batch keeps its columns
    description = sim.describe()
    assert description["parameter_names"] == sim.parameter_names
    assert description["prior"]["type"] == "product"


def test_same_seed_same_simulations():
    sim = make()
    theta = sim.prior.sample(10, torch.Generator().manual_seed(0))
    a = sim(theta, torch.Generator().manual_seed(1))
    b = sim(theta, torch.Generator().manual_seed(1))
    c = sim(theta, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (
            lambda t, g: torch.zeros(t.shape[0], 3),
            rf"'toy' returned shape \({MISDECLARED_ROWS}, 3\), expected \({MISDECLARED_ROWS}, 2\)",
        ),
        (
            lambda t, g: torch.zeros(t.shape[0]),
            rf"'toy' returned shape \({MISDECLARED_ROWS},\), expected \({MISDECLARED_ROWS}, 2\)",
        ),
        (lambda t, g: {"y": torch.zeros(t.shape[0], 2)}, r"'toy' returned outputs \['y'\]"),
        (lambda t, g: torch.zeros(t.shape[0], 2, dtype=torch.complex64), "dtype torch.complex64"),
        (lambda t, g: np.array([["a", "b"]] * t.shape[0]), "dtype <U1"),
        (lambda t, g: [[0.0, 0.0]] * t.shape[0], "is a list, expected a torch.Tensor"),
    ],
)
def test_wrong_shape_or_dtype_is_a_clear_error(fn, message):
    sim = make(fn=fn)
    with pytest.raises(SimulatorError, match=message):
        sim(torch.zeros(MISDECLARED_ROWS, 2))
    # a mis-declared simulator is never hidden as a per-row failure
    with pytest.raises(SimulatorError, match=message):
        sim.run_batch(torch.zeros(MISDECLARED_ROWS, 2), torch.Generator())
    # ... but a shorter batch (a run's tail) wrong in every row is kept as invalid rows
    short = sim.run_batch(torch.zeros(MISDECLARED_ROWS - 1, 2), torch.Generator())
    assert (short.status == STATUS_SHAPE).all() and torch.isnan(short.x).all()


def test_wrong_theta_shape_is_a_clear_error():
    with pytest.raises(SimulatorError, match=r"theta of shape \(N, 2\), got \(4, 3\)"):
        make()(torch.zeros(4, 3))


def test_integer_and_numpy_outputs_become_float():
    sim = make(fn=lambda t, g: np.ones((t.shape[0], 2), dtype=np.int64))
    x = sim(torch.zeros(3, 2))
    assert x.dtype == torch.float32 and x.eq(1).all()


def failing(theta, generator):
    """Raises whenever any a > 2; NaN where a < -1; +Inf where 0.5 < b < 0.6."""
    if (theta[:, 0] > 2).any():
        raise RuntimeError("solver diverged")
    x = theta + torch.randn(theta.shape, generator=generator)
    x[theta[:, 0] < -1, 0] = math.nan
    x[(theta[:, 1] > 0.5) & (theta[:, 1] < 0.6), 1] = math.inf
    return x


def test_run_batch_catches_failures_per_row():
    sim = make(fn=failing)
    theta = torch.tensor([[0.0, 0.1], [3.0, 0.1], [-2.0, 0.1], [0.0, 0.55], [0.5, 0.9]])
    result = sim.run_batch(theta, torch.Generator().manual_seed(0))
    assert result.status.tolist() == [
        STATUS_OK,
        STATUS_EXCEPTION,
        STATUS_NAN,
        STATUS_INF,
        STATUS_OK,
    ]
    assert result.valid.tolist() == [True, False, False, False, True]
    assert torch.isnan(result.x[~result.valid]).all()
    assert torch.isfinite(result.x[result.valid]).all()
    assert "solver diverged" in result.errors[1]
    assert set(result.errors) == {1}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3e38, 3e38, -1.0], [STATUS_OK] * 3),  # finite values whose sum overflows
        ([math.inf, -math.inf, 0.0], [STATUS_INF, STATUS_INF, STATUS_OK]),  # a NaN sum
        ([1.0, math.nan, 2.0], [STATUS_OK, STATUS_NAN, STATUS_OK]),
    ],
)
def test_run_batch_finds_non_finite_rows_whatever_their_sum(values, expected):
    # The batch is checked by its sum first; a sum that is not finite takes the exact check.
    sim = make(fn=lambda t, g: torch.tensor(values).repeat_interleave(2).reshape(3, 2))
    result = sim.run_batch(torch.zeros(3, 2), torch.Generator().manual_seed(0))
    assert result.status.tolist() == expected
    assert torch.isfinite(result.x[result.valid]).all()


def test_run_batch_without_failures_equals_direct_call():
    sim = make()
    theta = sim.prior.sample(8, torch.Generator().manual_seed(0))
    direct = sim(theta, torch.Generator().manual_seed(5))
    result = sim.run_batch(theta, torch.Generator().manual_seed(5))
    assert torch.equal(result.x, direct) and result.valid.all()


def test_non_vectorized_function_runs_row_by_row():
    calls = []

    def one(theta_row, generator):
        calls.append(theta_row.shape)
        if theta_row[0] > 2:
            raise ValueError("bad row")
        return {"x": theta_row * 2}

    sim = make(fn=one, vectorized=False)
    result = sim.run_batch(torch.tensor([[1.0, 0.5], [3.0, 0.5], [0.0, 0.1]]), torch.Generator())
    assert calls == [(2,)] * 3
    assert result.status.tolist() == [STATUS_OK, STATUS_EXCEPTION, STATUS_OK]
    torch.testing.assert_close(result.x[0], torch.tensor([2.0, 1.0]))


def test_declaration_errors():
    with pytest.raises(SimulatorError, match="declares no parameters"):
        make(parameters={})
    with pytest.raises(SimulatorError, match="declares no outputs"):
        make(outputs={})
    with pytest.raises(SimulatorError, match="invalid shape"):
        make(outputs={"x": (0,)})


def test_decorator_registers_and_lookup_lists_names():
    @simulator("test_decorated_toy", parameters={"a": Normal(0.0, 1.0)}, outputs={"x": ()})
    def toy(theta, generator):
        return theta[:, 0]

    try:
        assert registry.get_simulator("test_decorated_toy") is toy
        assert "test_decorated_toy" in registry.available()
        with pytest.raises(SimulatorError, match="already registered"):
            registry.register(
                Simulator(
                    "test_decorated_toy", {"a": Normal(0.0, 1.0)}, {"x": ()}, fn=lambda t, g: t
                )
            )
        with pytest.raises(UnknownSimulatorError, match="test_decorated_toy") as err:
            registry.get_simulator("no_such_simulator")
        assert "unknown simulator 'no_such_simulator'; available:" in str(err.value)
    finally:
        registry.unregister("test_decorated_toy")
    assert "test_decorated_toy" not in registry.available()


def test_entry_point_from_another_package(tmp_path, monkeypatch):
    """A third-party package offers a simulator through the `sbitk.simulators` group."""
    (tmp_path / "thirdparty_sims.py").write_text(
        textwrap.dedent("""
        import torch
        from sbitk.simulation import Normal, simulator

        @simulator("thirdparty_line", parameters={"slope": Normal(0.0, 1.0)},
                   outputs={"y": (3,)}, register=False)
        def line(theta, generator):
            return theta * torch.arange(3.0)

        def broken():
            raise ImportError("missing optional dependency")
    """)
    )
    dist = tmp_path / "thirdparty_sims-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-sims\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sbitk.simulators]\nthirdparty_line = thirdparty_sims:line\n"
        "thirdparty_broken = thirdparty_sims:broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert {"thirdparty_line", "thirdparty_broken"} <= set(registry.available())
        sim = registry.get_simulator("thirdparty_line")
        assert sim.name == "thirdparty_line" and sim.output_names == ["y[0]", "y[1]", "y[2]"]
        torch.testing.assert_close(sim(torch.ones(1, 1)), torch.tensor([[0.0, 1.0, 2.0]]))
        with pytest.raises(SimulatorError, match=r"thirdparty_broken.*missing optional"):
            registry.get_simulator("thirdparty_broken")
    finally:
        sys.modules.pop("thirdparty_sims", None)
