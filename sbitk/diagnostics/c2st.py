r"""Classifier two-sample test (C2ST) following the sbibm protocol.

A classifier learns to tell reference samples (label 0) from candidate samples (label 1); its
held-out accuracy estimates

.. math::

    \mathrm{acc} = \tfrac12 + \tfrac12 \,\mathrm{TV}(p, q) \quad\text{(Bayes-optimal classifier)},

so 0.5 means the two sets cannot be told apart and 1.0 means they do not overlap.

Protocol (Lueckmann et al. 2021, the sbibm benchmark): both sets are z-scored with the
*reference's* mean and standard deviation, an ``MLPClassifier`` with two ReLU hidden layers of
``10 * D`` units is trained with Adam, and the accuracy is averaged over shuffled 5-fold cross
validation.

References:
    Lopez-Paz & Oquab (2017), "Revisiting classifier two-sample tests", arXiv:1610.06545.
    Lueckmann et al. (2021), "Benchmarking simulation-based inference", arXiv:2101.04653.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from sbitk.diagnostics._checks import (
    DiagnosticInputError,
    as_numpy,
    check_finite,
    check_level,
    check_min_count,
)

__all__ = ["C2STResult", "c2st"]


@dataclass(frozen=True)
class C2STResult:
    """Outcome of a classifier two-sample test.

    Attributes:
        accuracy: mean held-out accuracy over the folds (0.5 = indistinguishable).
        fold_accuracies: held-out accuracy of each fold.
        n_reference: number of reference samples.
        n_samples: number of candidate samples.
        chance: accuracy of always guessing the larger set, ``max(n_ref, n_samples) / n``.
        threshold: accuracy above which the sets are declared different at level ``alpha``
            (one-sided normal approximation of the binomial error of a chance-level classifier).
        p_value: one-sided p-value of ``accuracy`` under "the classifier is at chance".
        alpha: level of the test.
        verdict: ``"indistinguishable"`` or ``"distinguishable"``.
    """

    accuracy: float
    fold_accuracies: tuple[float, ...]
    n_reference: int
    n_samples: int
    chance: float
    threshold: float
    p_value: float
    alpha: float
    verdict: str

    @property
    def n(self) -> int:
        """Total number of samples the classifier was evaluated on."""
        return self.n_reference + self.n_samples


def _classifier(classifier: str | Any, dim: int, seed: int):
    from sklearn.base import clone
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier

    if classifier == "mlp":
        # The configuration sbi's ``c2st(classifier="mlp")`` uses for the sbibm metric.
        return MLPClassifier(
            activation="relu",
            hidden_layer_sizes=(10 * dim, 10 * dim),
            max_iter=1000,
            solver="adam",
            random_state=seed,
            early_stopping=True,
            n_iter_no_change=50,
        )
    if classifier == "sbibm":
        # The original sbibm script: no early stopping, up to 10,000 epochs (slow).
        return MLPClassifier(
            activation="relu",
            hidden_layer_sizes=(10 * dim, 10 * dim),
            max_iter=10000,
            solver="adam",
            random_state=seed,
        )
    if classifier == "rf":
        return RandomForestClassifier(random_state=seed)
    if isinstance(classifier, str):
        raise DiagnosticInputError(
            f"classifier must be 'mlp', 'sbibm', 'rf' or a scikit-learn classifier, "
            f"found {classifier!r}"
        )
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict")):
        raise DiagnosticInputError(
            f"classifier must have fit and predict methods, found {type(classifier).__name__}"
        )
    return clone(classifier)


def c2st(
    reference: Any,
    samples: Any,
    *,
    seed: int = 0,
    n_folds: int = 5,
    z_score: bool = True,
    classifier: str | Any = "mlp",
    alpha: float = 0.05,
    threads: int | None = 1,
) -> C2STResult:
    """Classifier two-sample test accuracy between reference samples and candidate samples.

    Args:
        reference: reference samples, shape ``(N, D)`` (e.g. draws of the true posterior);
            torch tensor or numpy array.
        samples: candidate samples, shape ``(M, D)`` (e.g. draws of the learned posterior).
        seed: seeds the classifier's initialisation and the fold shuffling.
        n_folds: number of cross-validation folds.
        z_score: standardise both sets with the reference's mean and standard deviation
            (features with zero spread are left unscaled).
        classifier: ``"mlp"`` (sbibm architecture with early stopping, as in sbi),
            ``"sbibm"`` (the original script: 10,000 epochs, no early stopping), ``"rf"``
            (random forest), or any scikit-learn classifier (cloned before use).
        alpha: level of the test behind the verdict.
        threads: BLAS threads while the classifier trains. The sbibm MLP is small, so one
            thread is fastest; on a busy machine more were measured 15 times slower. ``None``
            leaves the BLAS settings as they are.

    Returns:
        A :class:`C2STResult`.

    Raises:
        DiagnosticInputError: for non-2-D inputs, mismatched dimensions, non-finite values or
            fewer samples than folds.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(200, 2)), rng.normal(3.0, 1.0, size=(200, 2))
        >>> c2st(a, b).accuracy > 0.9
        True
    """
    x = as_numpy(reference, "reference", ndim=2)
    y = as_numpy(samples, "samples", ndim=2)
    if x.shape[1] != y.shape[1]:
        raise DiagnosticInputError(
            f"reference and samples must have the same dimension D, found "
            f"{x.shape[1]} and {y.shape[1]}"
        )
    check_finite(x, "reference")
    check_finite(y, "samples")
    if int(n_folds) < 2:
        raise DiagnosticInputError(f"n_folds must be at least 2, found {n_folds}")
    check_min_count(len(x), n_folds, "reference")
    check_min_count(len(y), n_folds, "samples")
    check_level(alpha)

    if z_score:
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
        std[std < 1e-14] = 1.0
        x = (x - mean) / std
        y = (y - mean) / std

    from sklearn.model_selection import KFold, cross_val_score

    data = np.concatenate([x, y])
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    clf = _classifier(classifier, x.shape[1], seed)
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        scores = cross_val_score(clf, data, target, cv=folds, scoring="accuracy")

    n = len(data)
    chance = max(len(x), len(y)) / n
    accuracy = float(np.mean(scores))
    # Every sample is held out exactly once, so under "no signal" the mean accuracy has the
    # binomial standard error of n coin flips biased at `chance`.
    se = np.sqrt(chance * (1.0 - chance) / n)
    threshold = chance + float(stats.norm.ppf(1.0 - alpha)) * se
    p_value = float(stats.norm.sf((accuracy - chance) / se))
    return C2STResult(
        accuracy=accuracy,
        fold_accuracies=tuple(float(s) for s in scores),
        n_reference=len(x),
        n_samples=len(y),
        chance=chance,
        threshold=float(threshold),
        p_value=p_value,
        alpha=float(alpha),
        verdict="distinguishable" if accuracy > threshold else "indistinguishable",
    )
