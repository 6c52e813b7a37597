"""Every registered estimator's options are checked by name and kind before it is built, and
building one may not take more memory than there is."""

import dataclasses

import pytest

from sbitk.errors import SbitkError
from sbitk.models.registry import (
    available_estimators,
    build_estimator,
    check_estimator_options,
    get_estimator,
)
from sbitk.simulation import resources

NAMES = available_estimators()


@pytest.mark.parametrize("name", NAMES)
def test_every_estimator_names_its_config_and_its_defaults_pass_the_check(name):
    model = build_estimator(name, 2, 3)
    assert isinstance(model.config, get_estimator(name).config_class)
    options = dataclasses.asdict(model.config)
    del options["features"], options["context"]
    rebuilt = build_estimator(name, 2, 3, **options)
    assert dataclasses.asdict(rebuilt.config) == dataclasses.asdict(model.config)


BAD = [
    ("features", 5, "features is set by the data"),
    ("context", 5, "context is set by the data"),
    ("bogus_key", 1, "has no option 'bogus_key'; its options: "),
    ("hidden_features", "abc", "option hidden_features takes"),
]


def _has(name: str, key: str) -> bool:
    fields = {f.name for f in dataclasses.fields(get_estimator(name).config_class)}
    return key in fields or key != "hidden_features"


@pytest.mark.parametrize(
    ("name", "key", "value", "fragment"),
    [(name, *bad) for name in NAMES for bad in BAD if _has(name, bad[0])],
)
def test_every_estimator_refuses_a_bad_option_in_one_line(name, key, value, fragment):
    with pytest.raises(SbitkError, match=fragment) as caught:
        check_estimator_options(name, {key: value})  # what NPE, NLE and NRE call first
    if key not in ("features", "context"):  # given twice to build_estimator: a TypeError
        with pytest.raises(SbitkError, match=fragment):
            build_estimator(name, 2, 3, **{key: value})
    assert repr(value) in str(caught.value) or key in ("features", "context", "bogus_key")


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("flow_matching", {"hidden_features": 5}, "list of sizes (positive integers), got 5"),
        ("gaussian", {"hidden_features": [0]}, "list of sizes (positive integers), got [0]"),
        ("gaussian", {"hidden_features": [1.5, 2]}, "got [1.5, 2]"),
        ("gaussian", {"full_covariance": "maybe"}, "takes true or false, got 'maybe'"),
        ("diffusion", {"beta_max": float("inf")}, "takes a finite number, got inf"),
        ("flow_matching", {"time_exponent": float("nan")}, "takes a finite number, got nan"),
        ("flow_matching", {"steps": True}, "takes an integer or a string, got True"),
        ("ensemble", {"members": 1.5}, "option members takes an integer, got 1.5"),
        ("ensemble", {"options": 3}, "takes a mapping of names to values, got 3"),
        ("ensemble", {"box": 7}, "option box takes true or false, got 7"),
        ("ensemble", {"trials": 5}, "option trials takes a list or null, got 5"),
        ("nsf", {"transforms": "abc"}, "option transforms takes an integer, got 'abc'"),
        ("ensemble", {"options": {"transforms": "abc"}}, "estimator 'nsf': option transforms"),
    ],
)
def test_a_value_of_the_wrong_kind_names_the_option_the_kind_and_the_value(
    name, options, fragment
):
    with pytest.raises(SbitkError) as caught:
        build_estimator(name, 2, 3, **options)
    assert fragment in str(caught.value)


def test_numbers_stand_for_floats_and_lists_for_tuples():
    model = build_estimator("diffusion", 2, 3, beta_max=10, hidden_features=[32, 32])
    assert model.config.beta_max == 10 and model.config.hidden_features == (32, 32)


def test_layers_too_large_for_memory_are_refused_before_they_are_allocated(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 10**8)  # 100 MB
    build_estimator("gaussian", 2, 3, hidden_features=[64, 64])  # well within
    with pytest.raises(SbitkError, match="would take more than 50 MB of memory"):
        build_estimator("gaussian", 2, 3, hidden_features=[10_000, 10_000])


def test_an_ensemble_too_large_for_memory_is_refused_after_one_member(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 10**9)  # 1 GB
    calls = []
    import sbitk.models.ensemble as ensemble

    real = ensemble.build_estimator
    monkeypatch.setattr(
        ensemble, "build_estimator", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with pytest.raises(SbitkError, match="an ensemble of 1000000 'nsf' members needs about"):
        build_estimator("ensemble", 2, 3, members=10**6)
    assert len(calls) == 1
    build_estimator("ensemble", 2, 3, members=2)
    assert len(calls) == 3


def test_an_ensemble_of_members_with_unnormalised_densities_is_refused():
    with pytest.raises(SbitkError, match="member 'ebm' has a density known up to a constant"):
        build_estimator("ensemble", 2, 3, member="ebm")


def test_an_option_of_a_kind_the_check_does_not_know_is_left_to_the_estimator():
    from sbitk.nn.embeddings import MLPEmbedding

    embedding = MLPEmbedding(4, 3, (8,))  # the flows' `embedding` takes a module or a dict
    check_estimator_options("nsf", {"embedding": embedding})
    assert build_estimator("nsf", 2, 4, embedding=embedding).embedding is embedding


def test_the_allocation_budget_counts_factories_called_with_keywords_only():
    import torch

    from sbitk.nn.allocation import AllocationBudget

    with AllocationBudget(100, lambda used: SbitkError(f"{used} values")):
        torch.full(size=(5, 5), fill_value=1.0)
        with pytest.raises(SbitkError, match="125 values"):
            torch.full(size=(10, 10), fill_value=1.0)
