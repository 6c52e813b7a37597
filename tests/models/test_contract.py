"""The estimator contract, run over every registered estimator: shapes batched and unbatched,
gradients that reach every parameter, save → load with identical outputs, and a declared density
kind that matches what the object does."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from sbitk.errors import ModelFileError, SbitkError
from sbitk.io.modelfile import load_model, save_model
from sbitk.models.contract import (
    DENSITY_KINDS,
    ESTIMATED,
    EXACT,
    NONE,
    RATIO,
    UNNORMALISED,
    ContractError,
    can_sample,
    check_estimator,
    density_kind,
)
from sbitk.models.registry import (
    UnknownEstimatorError,
    available_estimators,
    build_estimator,
    estimator,
    estimator_config,
    estimator_name,
    get_estimator,
    unregister,
)
from sbitk.posteriors.direct import DirectPosterior
from sbitk.posteriors.likelihood import SurrogateLikelihood
from sbitk.simulation.priors import Normal

NAMES = available_estimators()
D, C = 2, 3


def trained_a_little(name: str, features: int = D, context: int = C):
    """The estimator ``name`` after its standardisation and three optimiser steps."""
    torch.manual_seed(0)
    model = build_estimator(name, features, context)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, features, generator=g) * 1.5 + 0.5
    ctx = torch.randn(256, context, generator=g) if context else None
    if hasattr(model, "fit_standardization"):
        model.fit_standardization(inputs, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model.loss(inputs, ctx).mean().backward()
        opt.step()
    return model.eval(), inputs, ctx


def test_the_built_in_estimators_are_registered():
    assert {"nsf", "maf", "realnvp", "glow", "nice", "gaussian"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_follows_the_contract_and_declares_a_density_kind(name):
    model, _, _ = trained_a_little(name)
    assert check_estimator(model) is model
    assert density_kind(model) in DENSITY_KINDS
    assert dataclasses.is_dataclass(model.config) and model.config.__dataclass_params__.frozen
    assert (model.config.features, model.config.context) == (D, C)
    assert estimator_name(model) == name


@pytest.mark.parametrize("name", NAMES)
def test_shapes_batched_and_unbatched(name):
    model, inputs, ctx = trained_a_little(name)
    with torch.no_grad():
        assert model.loss(inputs[:7], ctx[:7]).shape == (7,)
        batched = model(ctx[:4])
        single = model(ctx[0])
        if can_sample(model):
            assert batched.sample((5,)).shape == (5, 4, D)
            assert single.sample((5,)).shape == (5, D)
        else:
            with pytest.raises(SbitkError, match="draws no"):
                batched.sample((5,))
        if density_kind(model) != NONE:
            assert batched.log_prob(inputs[:4]).shape == (4,)
            assert batched.log_prob(inputs[:12].reshape(3, 4, D)).shape == (3, 4)
            assert single.log_prob(inputs[:6]).shape == (6,)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    """Within a few training steps: a model may update its parts in turn (a GAN's players)."""
    model, inputs, ctx = trained_a_little(name)
    model.train()
    model.zero_grad()
    for _ in range(8):
        model.loss(inputs[:64], ctx[:64]).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(bool((p.grad != 0).any()) for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_rebuilt_from_its_config_gives_identical_outputs(name):
    model, inputs, ctx = trained_a_little(name)
    copy = get_estimator(name).from_config(estimator_config(model))
    copy.load_state_dict(model.state_dict())
    copy.eval()
    with torch.no_grad():
        if can_sample(model):
            torch.manual_seed(3)
            a = model(ctx[:4]).sample((6,))
            torch.manual_seed(3)
            b = copy(ctx[:4]).sample((6,))
            assert torch.equal(a, b)
        if density_kind(model) != NONE:
            assert torch.equal(
                model(ctx[:4]).log_prob(inputs[:4]), copy(ctx[:4]).log_prob(inputs[:4])
            )


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_through_a_model_file(name, tmp_path):
    model, inputs, ctx = trained_a_little(name)
    if not can_sample(model):  # a ratio is no posterior: it goes into a file as a likelihood
        with pytest.raises(SbitkError, match="no posterior"):
            DirectPosterior(model, Normal(0.0, 1.0, dim=D))
        likelihood = SurrogateLikelihood(model, Normal(0.0, 1.0, dim=C), unconstrained=False)
        save_model(tmp_path / "m.safetensors", likelihood)
        loaded = load_model(tmp_path / "m.safetensors").likelihood
        theta = ctx[:3]
        expected = likelihood.log_prob(inputs[:5], theta)
        assert torch.equal(loaded.log_prob(inputs[:5], theta), expected)
        return
    posterior = DirectPosterior(model, Normal(0.0, 1.0, dim=D))
    save_model(tmp_path / "m.safetensors", posterior)
    loaded = load_model(tmp_path / "m.safetensors")
    x = ctx[:3]
    assert torch.equal(loaded.sample(20, x, seed=5), posterior.sample(20, x, seed=5))
    assert loaded.density == posterior.density == density_kind(model)
    if posterior.density != NONE:
        theta = posterior.sample(4, x, seed=1)
        assert torch.equal(loaded.log_prob(theta, x), posterior.log_prob(theta, x))
    else:
        with pytest.raises(SbitkError, match="samples only"):
            loaded.log_prob(torch.zeros(4, 3, D), x)


@pytest.mark.parametrize("name", NAMES)
def test_the_declared_density_kind_is_what_log_prob_gives(name):
    """exact: integrates to one on a grid (1-D, float64); estimated: a Monte Carlo estimate of
    a normalised density, within its spread of one; unnormalised: a finite positive mass of any
    size; ratio: a finite log-ratio, and sampling refused; none: no log_prob at all."""
    model, _, ctx = trained_a_little(name, features=1, context=1)
    model = model.double()
    kind = density_kind(model)
    dist = model(ctx[:1].double())
    if kind == NONE:
        assert not callable(getattr(dist, "log_prob", None))
        return
    grid = torch.linspace(-20, 20, 2_001, dtype=torch.float64).reshape(-1, 1, 1)
    with torch.no_grad():
        density = dist.log_prob(grid).exp().squeeze()
    mass = float(torch.trapezoid(density, grid.squeeze()))
    assert math.isfinite(mass)
    if kind == EXACT:
        assert mass == pytest.approx(1.0, abs=2e-3)
    elif kind == ESTIMATED:
        assert mass == pytest.approx(1.0, abs=0.1)
    elif kind == UNNORMALISED:
        assert mass > 0
    elif kind == RATIO:
        with pytest.raises(SbitkError, match="draws no x"):
            dist.sample((1,))
    else:
        pytest.fail(f"density kind {kind!r} is not checked here")


OWN = [n for n in NAMES if get_estimator(n).__module__.startswith("sbitk.")]


@pytest.mark.parametrize("name", OWN)
def test_log_prob_refuses_inputs_of_the_wrong_shape_with_a_message(name):
    """A last dimension other than D, or rows that do not broadcast with the contexts, is one
    SbitkError that says so, not a tensor error from deep inside the model. sbitk's own
    estimators do this; the contract does not ask it of a third party's."""
    model, _, ctx = trained_a_little(name)
    dist = model(ctx[:4])
    if density_kind(model) == NONE:
        return
    for wrong in (torch.zeros(4, D + 1), torch.zeros(3, D)):
        with torch.no_grad(), pytest.raises(SbitkError) as caught:
            dist.log_prob(wrong)
        assert str(tuple(wrong.shape)) in str(caught.value)


def test_a_class_without_a_density_kind_is_refused():
    from torch import nn

    class NoKind(nn.Module):
        @classmethod
        def from_config(cls, config):
            return cls()

        def loss(self, inputs, context=None):
            return inputs.sum(-1)

    with pytest.raises(ContractError, match="density"):
        estimator("no_kind")(NoKind)
    assert "no_kind" not in available_estimators()


def test_the_decorator_registers_and_refuses_a_second_class_under_one_name():
    from sbitk.models.gaussian import ConditionalGaussian

    @estimator("contract_test_gaussian")
    class Mine(ConditionalGaussian):
        pass

    try:
        assert get_estimator("contract_test_gaussian") is Mine
        assert "contract_test_gaussian" in available_estimators()
        assert estimator_name(Mine(2, 1)) == "contract_test_gaussian"
        with pytest.raises(SbitkError, match="already registered"):

            @estimator("contract_test_gaussian")
            class Other(ConditionalGaussian):
                pass

        with pytest.raises(SbitkError, match="already registered"):
            estimator("nsf")(Mine)  # an entry point's name is taken too
    finally:
        unregister("contract_test_gaussian")


def test_an_unknown_estimator_is_one_line_naming_it_and_its_package():
    with pytest.raises(UnknownEstimatorError) as info:
        get_estimator("no_such_estimator", package="sbitk-extra")
    text = str(info.value)
    assert "'no_such_estimator'" in text and "'sbitk-extra'" in text and "\n" not in text
    assert "nsf" in text  # what is known


def test_a_model_file_whose_estimator_is_not_installed_names_it(tmp_path):
    from sbitk.models.gaussian import ConditionalGaussian

    @estimator("contract_test_gone")
    class Gone(ConditionalGaussian):
        pass

    try:
        save_model(
            tmp_path / "m.safetensors", DirectPosterior(Gone(D, C), Normal(0.0, 1.0, dim=D))
        )
    finally:
        unregister("contract_test_gone")
    with pytest.raises(ModelFileError, match="'contract_test_gone' is not installed"):
        load_model(tmp_path / "m.safetensors")


def test_listing_estimators_imports_no_estimator_module():
    code = (
        "import sys; from sbitk.models.registry import available_estimators; "
        "names = available_estimators(); assert 'nsf' in names, names; "
        "loaded = [m for m in sys.modules if m.startswith(('sbitk.models.flows', "
        "'sbitk.models.gaussian'))]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_docs_list_every_estimator_sbitk_registers():
    from pathlib import Path

    from sbitk.models.registry import estimator_package

    page = (Path(__file__).resolve().parents[2] / "docs" / "estimators.md").read_text()
    own = [n for n in NAMES if estimator_package(n) == "sbitk"]
    assert len(own) >= 6
    missing = [n for n in own if f"| `{n}` |" not in page]
    assert not missing, f"docs/estimators.md does not list {missing}"
