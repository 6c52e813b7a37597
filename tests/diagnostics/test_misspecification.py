"""Misspecification: MMD and typicality tests keep their level and flag what theory says."""

import numpy as np
import pytest
import torch
from scipy import stats

from sbitk.diagnostics import DiagnosticInputError, mmd_test, typicality_test

DIM = 3


def _simulate(n: int, g: torch.Generator) -> torch.Tensor:
    """Prior predictive of θ ~ N(0, I), x = θ + N(0, I): x ~ N(0, 2 I)."""
    return np.sqrt(2.0) * torch.randn(n, DIM, generator=g, dtype=torch.float64)


def _rate_bounds(alpha: float, n_obs: int, n_cal: int, n_splits: int, q: float = 0.9995):
    # Given the shared (reference, calibration) split, the false-alarm rate of the per-
    # observation test fluctuates around alpha with variance ≈ alpha(1-alpha)/n_cal; on top of
    # it comes the binomial error of n_obs observations. Splits are independent.
    var = alpha * (1 - alpha) * (1 / (n_obs * n_splits) + 1 / (n_cal * n_splits))
    z = stats.norm.ppf(q)
    return alpha - z * np.sqrt(var), alpha + z * np.sqrt(var)


def test_mmd_false_alarm_rate_over_many_observations_is_nominal():
    alpha, n_splits, n_obs, n_sims = 0.05, 10, 1000, 1000
    flagged = []
    for seed in range(n_splits):
        g = torch.Generator().manual_seed(seed)
        sims, obs = _simulate(n_sims, g), _simulate(n_obs, g)
        flagged.append(mmd_test(obs, sims, alpha=alpha, seed=seed).flagged_fraction)
    lo, hi = _rate_bounds(alpha, n_obs, n_sims // 2, n_splits)
    assert lo <= np.mean(flagged) <= hi, np.mean(flagged)


def test_mmd_flags_shifted_and_contaminated_observations():
    g = torch.Generator().manual_seed(1)
    sims = _simulate(2000, g)
    shifted = _simulate(200, g) + 4.0
    contaminated = _simulate(200, g)
    contaminated[:, 0] = 12.0  # one output replaced by a gross outlier
    for obs in (shifted, contaminated):
        assert mmd_test(obs, sims).flagged_fraction > 0.95


def test_mmd_set_test_level_and_power():
    alpha, repeats, flags = 0.05, 100, 0
    for seed in range(repeats):
        g = torch.Generator().manual_seed(100 + seed)
        sims, obs = _simulate(300, g), _simulate(20, g)
        r = mmd_test(obs, sims, per_observation=False, n_permutations=200, seed=seed)
        flags += r.observations[0].flagged
        assert r.method == "permutation" and len(r.observations) == 1
    lo, hi = stats.binom.ppf([0.0005, 0.9995], repeats, alpha)
    assert lo <= flags <= hi, flags
    # A 20% contamination of the set by a shifted component is caught as a set.
    g = torch.Generator().manual_seed(0)
    sims, obs = _simulate(300, g), _simulate(50, g)
    obs[:10] += 4.0
    assert mmd_test(obs, sims, per_observation=False, n_permutations=200).observations[0].flagged


def test_mmd_in_a_learned_summary_space():
    def embedding(x):  # summary statistics: mean and mean square of the outputs
        return torch.stack([x.mean(-1), (x**2).mean(-1)], dim=-1)

    g = torch.Generator().manual_seed(2)
    sims = _simulate(2000, g).float()
    obs = torch.cat([_simulate(200, g).float(), _simulate(200, g).float() + 4.0])
    r = mmd_test(obs, sims, embedding=embedding)
    assert r.space == "embedding"
    p = r.p_values
    lo, hi = _rate_bounds(0.05, 200, 1000, 1)
    assert lo <= np.mean(p[:200] < 0.05) <= hi
    assert np.mean(p[200:] < 0.05) > 0.95


def test_mmd_input_errors():
    sims = torch.zeros(100, 2)
    with pytest.raises(DiagnosticInputError, match="same dimension"):
        mmd_test(torch.zeros(3), sims)
    with pytest.raises(DiagnosticInputError, match="n_reference"):
        mmd_test(torch.zeros(2), sims, n_reference=99)
    with pytest.raises(DiagnosticInputError, match="finite"):
        mmd_test(torch.tensor([float("inf"), 0.0]), sims)


MODEL = torch.distributions.MultivariateNormal(torch.zeros(20), torch.eye(20))


def test_typicality_false_alarm_rate_is_nominal():
    torch.manual_seed(0)
    samples, obs = MODEL.sample((4000,)), MODEL.sample((4000,))
    r = typicality_test(obs, MODEL.log_prob, samples)
    lo, hi = _rate_bounds(0.05, 4000, 4000, 1)
    assert lo <= r.flagged_fraction <= hi, r.flagged_fraction


def test_typicality_is_two_sided():
    torch.manual_seed(1)
    samples = MODEL.sample((2000,))
    # In 20 dimensions the mode is far too typical: |x|² = 0 where the model puts |x|² ≈ 20.
    too_typical = torch.zeros(20)
    too_atypical = torch.full((20,), 2.0)
    outside = torch.full((20,), float("nan"))
    r = typicality_test(torch.stack([too_typical, too_atypical]), MODEL.log_prob, samples)
    assert [o.verdict for o in r.observations] == [
        "too typical (density too high)",
        "atypical (density too low)",
    ]
    assert all(o.p_value == pytest.approx(2 / 2001) for o in r.observations)
    with pytest.raises(DiagnosticInputError, match="finite"):
        typicality_test(outside, MODEL.log_prob, samples)


def test_typicality_treats_minus_infinity_as_atypical():
    samples = torch.rand(1000, 1)
    log_prob = torch.distributions.Uniform(0.0, 1.0).log_prob

    def safe(x):
        inside = (x > 0) & (x < 1)
        return torch.where(inside, log_prob(x.clamp(1e-6, 1 - 1e-6)), -torch.inf)[:, 0]

    r = typicality_test(torch.tensor([[2.0]]), safe, samples)
    assert r.observations[0].flagged


def test_mmd_tests_an_observation_with_absent_values_on_the_columns_it_has():
    g = torch.Generator().manual_seed(3)
    sims, obs = _simulate(1000, g), _simulate(4, g)
    obs[1, 2] = 6.0  # far out in the column it keeps
    obs[1:, 0] = float("nan")
    obs[3, 1] = float("nan")
    p = mmd_test(obs, sims, bandwidth=1.3, seed=4).p_values
    # The same test on the columns present: the same split, statistic and null draws.
    for rows, cols in (([0], [0, 1, 2]), ([1, 2], [1, 2]), ([3], [2])):
        alone = mmd_test(obs[rows][:, cols], sims[:, cols], bandwidth=1.3, seed=4).p_values
        assert np.array_equal(p[rows], alone), (rows, p[rows], alone)
    assert p[1] < 0.01 and p[0] > 0.05 and p[2] > 0.05
    with pytest.raises(DiagnosticInputError, match="at least one value present"):
        mmd_test(torch.full((DIM,), float("nan")), sims)
    with pytest.raises(DiagnosticInputError, match="finite"):  # the set test takes no gaps
        mmd_test(obs, sims, per_observation=False)
