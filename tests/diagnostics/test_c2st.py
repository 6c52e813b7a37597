"""C2ST: the sbibm protocol, verdicts on known cases, and input errors."""

import numpy as np
import pytest
import torch

from sbitk.diagnostics import DiagnosticInputError, c2st
from sbitk.errors import SbitkError


def _gaussians(shift: float, n: int = 400, dim: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(shift, 1.0, size=(n, dim))


def test_matches_sbi_reference_implementation():
    sbi_metrics = pytest.importorskip("sbi.utils.metrics")
    a, b = _gaussians(0.3)
    ours = c2st(a, b, seed=3).accuracy
    theirs = float(
        sbi_metrics.c2st(torch.as_tensor(a), torch.as_tensor(b), seed=3, classifier="mlp")
    )
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_tensor_and_numpy_inputs_agree():
    a, b = _gaussians(0.5)
    r_np = c2st(a, b)
    r_t = c2st(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    assert r_np == r_t
    assert len(r_np.fold_accuracies) == 5
    assert r_np.n == 800


def test_same_distribution_is_indistinguishable():
    a, b = _gaussians(0.0)
    result = c2st(a, b)
    # Chance level 0.5 with binomial standard error sqrt(0.25 / 800) ≈ 0.018.
    assert abs(result.accuracy - 0.5) < 4 * 0.018
    assert result.verdict == "indistinguishable"
    assert result.p_value > result.alpha


def test_separated_distributions_reach_bayes_accuracy():
    # Unit Gaussians 2 apart per axis in 2-D: Bayes accuracy Φ(|Δ|/2) with |Δ| = 2√2.
    from scipy.stats import norm

    a, b = _gaussians(2.0)
    result = c2st(a, b)
    bayes = norm.cdf(np.sqrt(8) / 2)
    assert result.verdict == "distinguishable"
    assert result.accuracy == pytest.approx(bayes, abs=4 * np.sqrt(bayes * (1 - bayes) / 800))


def test_custom_classifier_and_random_forest():
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    a, b = _gaussians(1.0, n=200)
    assert c2st(a, b, classifier=LogisticRegression()).verdict == "distinguishable"
    assert c2st(a, b, classifier="rf").verdict == "distinguishable"
    # the classifier given is the one used: one that ignores its inputs cannot tell them apart
    blind = c2st(a, b, classifier=DummyClassifier(strategy="prior"))
    assert blind.accuracy == pytest.approx(0.5, abs=0.05)
    assert blind.verdict == "indistinguishable"


@pytest.mark.parametrize(
    ("reference", "samples", "match"),
    [
        (np.zeros((50, 2)), np.zeros((50, 3)), "same dimension"),
        (np.zeros(50), np.zeros((50, 1)), "2 dimension"),
        (np.full((50, 2), np.nan), np.zeros((50, 2)), "finite"),
        (np.zeros((3, 2)), np.zeros((50, 2)), "at least 5"),
    ],
)
def test_bad_inputs_raise_package_errors(reference, samples, match):
    with pytest.raises(DiagnosticInputError, match=match) as info:
        c2st(reference, samples)
    assert isinstance(info.value, SbitkError)


def test_unknown_classifier_name_raises():
    a, b = _gaussians(0.0, n=20)
    with pytest.raises(SbitkError, match="classifier"):
        c2st(a, b, classifier="svm")


def test_too_few_samples_for_the_early_stopping_classifier_is_an_input_error():
    # 6 a side in 5 folds leave training folds of 9 rows, whose held-out tenth (1 row) cannot
    # hold both classes; 7 a side leave 11, whose tenth rounds up to 2.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    with pytest.raises(DiagnosticInputError, match="training folds of at least 11 rows"):
        c2st(a[:6], b[:6])
    assert 0 <= c2st(a, b).accuracy <= 1
    assert 0 <= c2st(a[:6], b[:6], classifier="sbibm").accuracy <= 1  # no early stopping
