r"""Local classifier two-sample test (L-C2ST) of a posterior at one observation.

A classifier :math:`d(\theta, x)` learns to tell joint pairs :math:`(\theta_i, x_i)`,
:math:`\theta_i \sim p(\theta)`, :math:`x_i \sim p(x \mid \theta_i)` (class 0) from pairs
:math:`(\theta'_i, x_i)`, :math:`\theta'_i \sim q(\theta \mid x_i)` (class 1). Its optimum is
:math:`d^\star(\theta, x) = p(\theta \mid x) / (p(\theta \mid x) + q(\theta \mid x))`, which
equals :math:`\tfrac12` for every :math:`\theta` exactly when :math:`q(\cdot \mid x) =
p(\cdot \mid x)`. At an observation :math:`x_o` the test statistic is

.. math::

    T_{\mathrm{MSE}}(x_o) = \frac1M \sum_{m=1}^M \left( d(\theta_m, x_o) - \tfrac12 \right)^2,
    \qquad \theta_m \sim q(\theta \mid x_o),

and its null distribution comes from retraining the classifier on the same pooled pairs with
the class labels permuted (exchangeable when :math:`q` is the true posterior, Linhart et al.
2023, Sec. 3.2). The classifier is trained once on the calibration set and can be reused at
many observations; only the null retraining costs ``n_null`` fits.

References:
    Linhart, Gramfort & Rodrigues (2023), "L-C2ST: Local diagnostics for posterior
    approximations in simulation-based inference", arXiv:2306.03580.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sbitk.diagnostics._checks import (
    DiagnosticInputError,
    as_numpy,
    check_finite,
    check_level,
    check_min_count,
)
from sbitk.diagnostics._sampling import BatchedSampler, as_tensor, check_finite_tensor

__all__ = ["LocalC2STResult", "local_c2st", "local_c2st_from_samples"]


@dataclass(frozen=True)
class LocalC2STResult:
    """Outcome of L-C2ST at one observation.

    Attributes:
        statistic: :math:`T_{\\mathrm{MSE}}(x_o)`.
        accuracy: fraction of evaluation draws classified as coming from the joint
            (0.5 = indistinguishable).
        probabilities: ``d(θ_m, x_o)`` for each evaluation draw, shape ``(M,)``.
        null: statistics under permuted labels, shape ``(n_null,)``.
        p_value: ``(1 + #{null >= statistic}) / (1 + n_null)``.
        alpha: level of the test.
        verdict: ``"consistent"`` (no local difference found) or ``"inconsistent"``.
    """

    statistic: float
    accuracy: float
    probabilities: np.ndarray
    null: np.ndarray
    p_value: float
    alpha: float
    verdict: str


def _quadratic_features(f: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(f.shape[1], f.shape[1])
    return torch.cat([torch.ones(f.shape[0], 1, dtype=f.dtype), f, f[:, i] * f[:, j]], dim=1)


def _quadratic_logistic(
    feats: np.ndarray, labels: np.ndarray, eval_feats: np.ndarray, ridge: float = 1e-3
) -> np.ndarray:
    """Fit one quadratic logistic regression per row of ``labels`` at once; P(class 0).

    Newton's method (IRLS) on the ridge-penalised log-likelihood, batched over label sets, so
    that a whole permutation null costs about as much as one fit.
    """
    q = _quadratic_features(torch.as_tensor(feats, dtype=torch.float64))
    q_eval = _quadratic_features(torch.as_tensor(eval_feats, dtype=torch.float64))
    y = torch.as_tensor(labels, dtype=torch.float64)
    n_sets, k = y.shape[0], q.shape[1]
    penalty = ridge * q.shape[0] * torch.eye(k, dtype=torch.float64)
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    w = torch.zeros(n_sets, k, dtype=torch.float64)
    for _ in range(100):
        mu = torch.sigmoid(w @ q.T)
        grad = (y - mu) @ q - w @ penalty
        hess = torch.einsum("pn,ni,nj->pij", mu * (1 - mu), q, q) + penalty
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        w = w + step
        if float(step.abs().max()) < 1e-9:
            break
    return (1.0 - torch.sigmoid(w @ q_eval.T)).numpy()


def _make_classifier(classifier: str | Any, n_features: int, seed: int):
    from sklearn.base import clone
    from sklearn.neural_network import MLPClassifier

    if isinstance(classifier, str) and classifier == "mlp":
        return MLPClassifier(
            activation="relu",
            hidden_layer_sizes=(10 * n_features, 10 * n_features),
            max_iter=1000,
            solver="adam",
            random_state=seed,
            early_stopping=True,
            n_iter_no_change=50,
        )
    if isinstance(classifier, str):
        raise DiagnosticInputError(
            f"classifier must be 'mlp', 'quadratic' or a scikit-learn classifier, found "
            f"{classifier!r}"
        )
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")):
        raise DiagnosticInputError(
            f"classifier must have fit and predict_proba, found {type(classifier).__name__}"
        )
    clf = clone(classifier)
    if "random_state" in clf.get_params():
        clf.set_params(random_state=seed)
    return clf


def local_c2st_from_samples(
    theta: Any,
    x: Any,
    posterior_theta: Any,
    x_o: Any,
    samples_o: Any,
    *,
    classifier: str | Any = "mlp",
    n_null: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
) -> LocalC2STResult:
    """L-C2ST from precomputed draws.

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)``.
        posterior_theta: one draw of ``q(θ | x_i)`` per row, shape ``(N, D)``.
        x_o: the observation, shape ``(D_x,)``.
        samples_o: draws of ``q(θ | x_o)``, shape ``(M, D)``.
        classifier: ``"mlp"`` (two ReLU layers of ``10 (D + D_x)`` units, as in C2ST),
            ``"quadratic"`` (logistic regression on all degree-2 monomials of the standardised
            ``(θ, x)``, fitted by Newton's method for the observed and all permuted labels at
            once: fast, and Bayes-optimal when both joints are Gaussian), or any scikit-learn
            classifier with ``predict_proba`` (cloned before each fit).
        n_null: permutations for the null distribution.
        alpha: level of the test.
        seed: seeds the classifiers and the permutations.

    Returns:
        A :class:`LocalC2STResult`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(300, 1))
        >>> x = theta + rng.normal(size=(300, 1))
        >>> biased = x / 2 + 1.0 + np.sqrt(0.5) * rng.normal(size=(300, 1))
        >>> draws = 0.0 / 2 + 1.0 + np.sqrt(0.5) * rng.normal(size=(200, 1))
        >>> r = local_c2st_from_samples(
        ...     theta, x, biased, np.zeros(1), draws, classifier="quadratic", n_null=99
        ... )
        >>> r.verdict
        'inconsistent'
    """
    th = as_numpy(theta, "theta", ndim=2)
    xs = as_numpy(x, "x", ndim=2)
    th_q = as_numpy(posterior_theta, "posterior_theta", ndim=2)
    xo = as_numpy(x_o, "x_o").reshape(-1)
    th_o = as_numpy(samples_o, "samples_o", ndim=2)
    n, dim = th.shape
    if xs.shape[0] != n or th_q.shape != th.shape:
        raise DiagnosticInputError(
            f"theta {th.shape}, x {xs.shape} and posterior_theta {th_q.shape} must have the "
            f"same number of rows and theta's dimension"
        )
    if xo.shape[0] != xs.shape[1]:
        raise DiagnosticInputError(f"x_o must have {xs.shape[1]} values, found {xo.shape[0]}")
    if th_o.shape[1] != dim:
        raise DiagnosticInputError(f"samples_o must have {dim} columns, found {th_o.shape[1]}")
    for arr, name in ((th, "theta"), (xs, "x"), (th_q, "posterior_theta"), (xo, "x_o")):
        check_finite(arr, name)
    check_finite(th_o, "samples_o")
    check_min_count(n, 10, "local_c2st calibration set")
    check_min_count(th_o.shape[0], 1, "samples_o")
    check_level(alpha)
    if int(n_null) < 1:
        raise DiagnosticInputError(f"n_null must be positive, found {n_null}")

    # Standardise features with the joint's statistics so that the MLP sees unit scales.
    feats = np.concatenate([np.concatenate([th, xs], 1), np.concatenate([th_q, xs], 1)], axis=0)
    mean, std = feats[:n].mean(0), feats[:n].std(0)
    std[std < 1e-14] = 1.0
    feats = (feats - mean) / std
    labels = np.concatenate([np.zeros(n), np.ones(n)])
    eval_feats = (np.concatenate([th_o, np.repeat(xo[None], len(th_o), 0)], 1) - mean) / std

    def statistic(y: np.ndarray, fit_seed: int) -> tuple[float, np.ndarray]:
        clf = _make_classifier(classifier, feats.shape[1], fit_seed)
        clf.fit(feats, y)
        classes = list(clf.classes_)
        prob = clf.predict_proba(eval_feats)[:, classes.index(0.0)]
        return float(np.mean((prob - 0.5) ** 2)), prob

    rng = np.random.default_rng(int(seed))
    permuted = np.stack([rng.permutation(labels) for _ in range(int(n_null))])
    if isinstance(classifier, str) and classifier == "quadratic":
        probs = _quadratic_logistic(feats, np.concatenate([labels[None], permuted]), eval_feats)
        prob = probs[0]
        t_obs = float(np.mean((prob - 0.5) ** 2))
        null = np.mean((probs[1:] - 0.5) ** 2, axis=1)
    else:
        t_obs, prob = statistic(labels, int(seed))
        null = np.array([statistic(y, int(seed) + 1 + i)[0] for i, y in enumerate(permuted)])
    p_value = float((1 + np.sum(null >= t_obs)) / (1 + len(null)))
    return LocalC2STResult(
        statistic=t_obs,
        accuracy=float(np.mean(prob > 0.5)),
        probabilities=prob,
        null=null,
        p_value=p_value,
        alpha=float(alpha),
        verdict="inconsistent" if p_value < alpha else "consistent",
    )


def local_c2st(
    theta: Any,
    x: Any,
    x_o: Any,
    posterior: BatchedSampler,
    *,
    n_eval: int = 1000,
    classifier: str | Any = "mlp",
    n_null: int = 100,
    alpha: float = 0.05,
    batch_size: int = 1000,
    seed: int = 0,
) -> LocalC2STResult:
    """L-C2ST at ``x_o`` drawing from a batched posterior sampler.

    Args:
        theta: parameters drawn from the prior, shape ``(N, D)``.
        x: their simulations, shape ``(N, D_x)`` (not used to train the posterior).
        x_o: the observation, shape ``(D_x,)``.
        posterior: a batched sampler ``sample(x (B, D_x), n) -> (n, B, D)``.
        n_eval: draws of ``q(θ | x_o)`` the classifier is evaluated on.
        classifier: see :func:`local_c2st_from_samples`.
        n_null: permutations for the null distribution.
        alpha: level of the test.
        batch_size: observations per sampler call.
        seed: seeds the classifiers and the permutations.

    Returns:
        A :class:`LocalC2STResult`.
    """
    if not callable(posterior):
        raise DiagnosticInputError(
            f"posterior must be a batched sampler, found {type(posterior).__name__}; use "
            f"local_c2st_from_samples for precomputed draws"
        )
    x_t = as_tensor(x, "x", ndim=2)
    check_finite_tensor(x_t, "x")
    xo = as_tensor(x_o, "x_o").reshape(1, -1).to(x_t.dtype)
    parts = []
    with torch.no_grad():
        for s in range(0, x_t.shape[0], batch_size):
            draw = as_tensor(posterior(x_t[s : s + batch_size], 1), "posterior sampler output")
            parts.append(draw[0])
        draws_o = as_tensor(posterior(xo, int(n_eval)), "posterior sampler output")[:, 0]
    return local_c2st_from_samples(
        theta,
        x_t,
        torch.cat(parts),
        xo[0],
        draws_o,
        classifier=classifier,
        n_null=n_null,
        alpha=alpha,
        seed=seed,
    )
