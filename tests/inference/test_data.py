"""The one check of (θ, x) pairs: what training, NPE/NLE and the diagnostics all refuse."""

import math

import numpy as np
import pytest
import torch

from sbitk.diagnostics import sbc
from sbitk.diagnostics._checks import DiagnosticInputError
from sbitk.errors import SbitkError
from sbitk.inference.data import check_pair, non_finite_rows
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig, train
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.simulation.priors import Normal

THETA, X = torch.zeros(10, 2), torch.zeros(10, 3)


@pytest.mark.parametrize(
    ("theta", "x", "kwargs", "message"),
    [
        (THETA, X[:9], {}, r"^theta and x must have the same number of rows, found 10 and 9$"),
        (THETA[:, 0], X, {}, r"^theta must have 2 dimension\(s\), found shape \(10,\)$"),
        (THETA, X[None], {}, r"^x must have 2 dimension\(s\), found shape \(1, 10, 3\)$"),
        (THETA, X, {"dim": 3}, r"^theta must have 3 columns, found shape \(10, 2\)$"),
        ("abc", X, {}, r"^theta must be a numeric array, found str$"),
        (THETA, X, {"minimum": 11, "what": "sbc"}, r"^sbc needs at least 11 samples, found 10$"),
        (
            THETA,
            X.index_fill(0, torch.tensor([2, 5]), math.inf),
            {},
            r"^x must be finite, found 2 row\(s\) with NaN or Inf; drop them$",
        ),
        (
            THETA.index_fill(0, torch.tensor([0]), math.nan),
            X,
            {"names": ("inputs", "context")},
            r"^inputs must be finite, found 1 row\(s\) with NaN or Inf",
        ),
    ],
)
def test_each_fault_is_named_in_one_line(theta, x, kwargs, message):
    with pytest.raises(SbitkError, match=message) as info:
        check_pair(theta, x, **kwargs)
    assert "\n" not in str(info.value)


def test_the_error_type_is_the_callers_and_good_pairs_come_back_as_floats():
    with pytest.raises(DiagnosticInputError):
        check_pair(THETA, X[:3], error=DiagnosticInputError)
    theta, x = check_pair(np.ones((4, 2), dtype=np.int64), torch.ones(4, 1, dtype=torch.float64))
    assert theta.dtype == torch.get_default_dtype() and x.dtype == torch.float64
    assert check_pair(THETA, None)[1] is None
    nan = THETA.clone()
    nan[1, 1] = math.nan
    assert torch.equal(check_pair(nan, X, finite=False)[0].isnan(), nan.isnan())


def test_non_finite_rows_counts_rows_not_values():
    rows = torch.zeros(6, 3)
    rows[1] = math.nan
    rows[4, 2] = -math.inf
    assert non_finite_rows(rows) == 2
    assert non_finite_rows(torch.full((3, 2), 3e38)) == 0  # the sum overflows, the rows are fine
    assert non_finite_rows(torch.zeros(0, 2)) == 0


def test_training_npe_and_the_diagnostics_share_the_check():
    """The same fault gives the same sentence wherever the pair enters."""
    sentence = "must have the same number of rows, found 10 and 9"
    with pytest.raises(SbitkError, match=f"inputs and context {sentence}"):
        train(ConditionalGaussian(2, 3), THETA, X[:9], TrainConfig(progress=False))
    with pytest.raises(SbitkError, match=f"theta and x {sentence}"):
        NPE(Normal(0.0, 1.0, dim=2), "gaussian").fit(THETA, X[:9])
    with pytest.raises(DiagnosticInputError, match=f"theta and x {sentence}"):
        sbc(THETA, X[:9], lambda x, n: torch.zeros(n, len(x), 2))
    with pytest.raises(SbitkError, match=r"theta must have 2 columns, found shape \(10, 3\)"):
        NPE(Normal(0.0, 1.0, dim=2), "gaussian").fit(torch.zeros(10, 3), X)
