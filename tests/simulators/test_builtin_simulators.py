"""Every built-in simulator: found through its entry point, shapes, names, dtype, determinism."""

import doctest
import importlib
import math

import pytest
import torch
from sbitk_simulators import observations

from sbitk import get_simulator
from sbitk.simulation.simulator import STATUS_OK, Simulator

#: name → (module, number of parameters D_θ, number of outputs D_x)
BUILTINS = {
    "gaussian_linear": ("gaussian_linear", 10, 10),
    "gaussian_linear_uniform": ("gaussian_linear", 10, 10),
    "two_moons": ("two_moons", 2, 2),
    "slcp": ("slcp", 5, 8),
    "gaussian_mixture": ("gaussian_mixture", 2, 2),
    "bernoulli_glm": ("bernoulli_glm", 10, 10),
    "sir": ("sir", 2, 10),
    "lotka_volterra": ("lotka_volterra", 4, 20),
}

MODULES = sorted({m for m, _, _ in BUILTINS.values()} | {"observations", "_ode", "_build_data"})


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_entry_point_gives_the_module_object(name):
    module, d_theta, d_x = BUILTINS[name]
    sim = get_simulator(name)
    assert isinstance(sim, Simulator)
    assert sim is getattr(importlib.import_module(f"sbitk_simulators.{module}"), name)
    assert sim.name == name
    assert (sim.theta_dim, sim.x_dim) == (d_theta, d_x)
    assert len(sim.parameter_names) == d_theta and len(set(sim.parameter_names)) == d_theta
    assert len(sim.output_names) == d_x and len(set(sim.output_names)) == d_x
    assert sim.prior.dim == d_theta


def test_meaningful_names():
    assert get_simulator("sir").parameter_names == ["beta", "gamma"]
    assert get_simulator("lotka_volterra").parameter_names == ["alpha", "beta", "gamma", "delta"]
    lv_out = get_simulator("lotka_volterra").output_names
    assert lv_out[:2] == ["prey[0]", "prey[1]"] and lv_out[10:12] == ["predator[0]", "predator[1]"]
    glm = get_simulator("bernoulli_glm")
    assert glm.parameter_names[:2] == ["offset", "filter[0]"]
    assert glm.output_names[:2] == ["num_spikes", "sta[0]"]
    assert get_simulator("slcp").output_names[-1] == "x[3,1]"
    assert get_simulator("two_moons").parameter_names == ["theta[0]", "theta[1]"]


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_batched_shapes_dtype_and_finite(name):
    sim = get_simulator(name)
    g = torch.Generator().manual_seed(1)
    theta = sim.prior.sample(500, generator=g)
    x = sim(theta, g)
    assert x.shape == (500, sim.x_dim) and x.dtype == torch.float32
    # Prior draws are ordinary inputs: none may fail silently or loudly.
    assert torch.isfinite(x).all()
    assert sim(theta[:1], g).shape == (1, sim.x_dim)
    assert sim(theta[:0], g).shape == (0, sim.x_dim)
    result = sim.run_batch(theta[:50], g)
    assert (result.status == STATUS_OK).all()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_same_seed_same_simulations_other_seed_others(name):
    sim = get_simulator(name)
    theta = sim.prior.sample(64, generator=torch.Generator().manual_seed(2))
    a = sim(theta, torch.Generator().manual_seed(3))
    b = sim(theta, torch.Generator().manual_seed(3))
    c = sim(theta, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Only the noise differs between seeds, never every row in the same way.
    assert (a != c).any(-1).float().mean() > 0.5


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_the_global_rng_is_untouched(name):
    sim = get_simulator(name)
    theta = sim.prior.sample(8, generator=torch.Generator().manual_seed(5))
    state = torch.get_rng_state()
    sim(theta, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_shipped_observations_match_the_simulator(name):
    sim = get_simulator(name)
    for k in (1, 10):
        x_o = observations.load_observation(name, k)
        theta_o = observations.load_true_parameters(name, k)
        assert x_o.shape == (sim.x_dim,) and x_o.dtype == torch.float32
        assert theta_o.shape == (sim.theta_dim,)
        assert torch.isfinite(x_o).all()
        assert bool(sim.prior.support_contains(theta_o[None])[0])


@pytest.mark.parametrize("name", ["gaussian_linear", "gaussian_linear_uniform", "two_moons"])
def test_reference_posterior_shapes_and_determinism(name):
    sim = get_simulator(name)
    x_o = observations.load_observation(name, 1)
    a = sim.reference_posterior(x_o, 300, torch.Generator().manual_seed(0))
    b = sim.reference_posterior(x_o, 300, torch.Generator().manual_seed(0))
    assert a.shape == (300, sim.theta_dim) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert bool(sim.prior.support_contains(a).all())


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    mod = importlib.import_module(f"sbitk_simulators.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert module.startswith("_") or result.attempted > 0


def test_lotka_volterra_overflow_is_a_nan_row_not_a_clipped_value():
    sim = get_simulator("lotka_volterra")
    theta = torch.tensor([[0.7, 0.1, 0.9, 0.1], [1e3, 1e-3, 1e3, 1e3]])
    result = sim.run_batch(theta, torch.Generator().manual_seed(0))
    assert result.status.tolist() == [STATUS_OK, 2]  # the second row is counted as NaN
    assert math.isnan(float(result.x[1, 0]))
