r"""The classifier two-sample test (C2ST): held-out accuracy of a classifier telling two
samples apart.

A classifier learns to tell samples of :math:`p` (label 0) from samples of :math:`q` (label 1);
the Bayes-optimal one reaches, with equal class sizes,

.. math::

    \mathrm{acc} = \tfrac12 + \tfrac12\,\mathrm{TV}(p, q),

so 0.5 means the samples cannot be told apart and 1.0 means they do not overlap. The protocol
is sbibm's: both samples are z-scored with the first one's mean and standard deviation, an
``MLPClassifier`` with two ReLU hidden layers of ``10 * D`` units is trained with Adam, and the
accuracy is averaged over shuffled K-fold cross-validation. scikit-learn is imported on first
use. The test with its verdict and p-value is :func:`sbitk.diagnostics.c2st`.

References:
    Lopez-Paz & Oquab (2017), "Revisiting classifier two-sample tests", arXiv:1610.06545.
    Lueckmann et al. (2021), "Benchmarking simulation-based inference", arXiv:2101.04653.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sbitk.errors import SbitkError

#: Classifiers :func:`c2st_folds` knows by name.
CLASSIFIERS = ("mlp", "sbibm", "rf")


def make_classifier(classifier: str | Any, dim: int, seed: int) -> Any:
    """A fresh scikit-learn classifier: one of :data:`CLASSIFIERS`, or a clone of the one given.

    ``"mlp"`` is the configuration sbi's ``c2st(classifier="mlp")`` uses (early stopping);
    ``"sbibm"`` the original sbibm script (up to 10,000 epochs, slow); ``"rf"`` a random forest.
    """
    from sklearn.base import clone
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    hidden = (10 * dim, 10 * dim)
    if classifier == "mlp":
        return MLPClassifier(
            activation="relu",
            hidden_layer_sizes=hidden,
            max_iter=1000,
            solver="adam",
            random_state=seed,
            early_stopping=True,
            n_iter_no_change=50,
        )
    if classifier == "sbibm":
        return MLPClassifier(
            activation="relu",
            hidden_layer_sizes=hidden,
            max_iter=10000,
            solver="adam",
            random_state=seed,
        )
    if classifier == "rf":
        return RandomForestClassifier(random_state=seed)
    if isinstance(classifier, str):
        raise SbitkError(
            f"classifier must be 'mlp', 'sbibm', 'rf' or a scikit-learn classifier, "
            f"found {classifier!r}"
        )
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict")):
        raise SbitkError(
            f"classifier must have fit and predict methods, found {type(classifier).__name__}"
        )
    return clone(classifier)


def _as_rows(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise SbitkError(f"c2st: {name} must have shape (N, D), found {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise SbitkError(f"c2st: {name} must be finite")
    return array


def c2st_folds(
    x: Any,
    y: Any,
    *,
    seed: int = 0,
    n_folds: int = 5,
    z_score: bool = True,
    classifier: str | Any = "mlp",
    threads: int | None = 1,
) -> np.ndarray:
    """Held-out accuracy of each cross-validation fold of a classifier telling ``x`` from ``y``.

    Args:
        x: Samples (N, D) of one distribution (label 0; the z-scoring reference).
        y: Samples (M, D) of the other (label 1).
        seed: Seeds the classifier's initialisation and the fold shuffling.
        n_folds: Number of cross-validation folds.
        z_score: Standardise both with ``x``'s mean and standard deviation (features with no
            spread are left unscaled).
        classifier: One of :data:`CLASSIFIERS` or a scikit-learn classifier (cloned).
        threads: BLAS threads while the classifier trains (``None``: as they are).

    Returns:
        The (n_folds,) accuracies, float64.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 3.0
        >>> bool(c2st_folds(a, b).mean() > 0.9)
        True
    """
    x, y = _as_rows(x, "x"), _as_rows(y, "y")
    if x.shape[1] != y.shape[1]:
        raise SbitkError(f"c2st: x and y must have the same D, found {x.shape[1]}, {y.shape[1]}")
    if int(n_folds) < 2 or min(len(x), len(y)) < int(n_folds):
        raise SbitkError(
            f"c2st: needs n_folds >= 2 and at least n_folds rows a side, found n_folds="
            f"{n_folds} with {len(x)} and {len(y)} rows"
        )
    if z_score:
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
        std[std < 1e-14] = 1.0
        x = (x - mean) / std
        y = (y - mean) / std

    from sklearn.model_selection import KFold, cross_val_score
    from threadpoolctl import threadpool_limits

    data = np.concatenate([x, y])
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    clf = make_classifier(classifier, x.shape[1], seed)
    _check_early_stopping(clf, len(data), int(n_folds))
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with threadpool_limits(threads):
        scores = cross_val_score(clf, data, target, cv=folds, scoring="accuracy")
    return np.asarray(scores, dtype=np.float64)


def _check_early_stopping(clf, rows: int, n_folds: int) -> None:
    """A classifier that stops early holds out a share of each training fold (rounded up),
    which needs a row of each class: at least 2 rows."""
    if not getattr(clf, "early_stopping", False):
        return
    share = float(getattr(clf, "validation_fraction", 0.1))
    needed = math.floor(1 / share) + 1  # the fewest rows whose share rounds up to 2
    smallest = rows - math.ceil(rows / n_folds)  # the training rows of the largest test fold
    if math.ceil(share * smallest) < 2:
        raise SbitkError(
            f"c2st: the classifier holds out {share:g} of each training fold to stop early, "
            f"which needs training folds of at least {needed} rows; {rows} rows in {n_folds} "
            f"folds give {smallest}: pass more samples (or classifier='sbibm')"
        )


def c2st(x: Any, y: Any, **options: Any) -> float:
    """The C2ST accuracy: the mean of :func:`c2st_folds` (same arguments).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
        >>> abs(c2st(a, b) - 0.5) < 0.1
        True
    """
    return float(np.mean(c2st_folds(x, y, **options)))


__all__ = ["CLASSIFIERS", "c2st", "c2st_folds", "make_classifier"]
