"""A posterior trained by sbi, checked by sbitk: diagnostics, report and the batched calls."""

import pytest
import torch

sbi_inference = pytest.importorskip("sbi.inference")

from sbitk import check_posterior  # noqa: E402
from sbitk.posteriors.external import wrap_posterior  # noqa: E402
from sbitk.simulation.registry import get_simulator  # noqa: E402


@pytest.fixture(scope="module")
def sbi_posterior():
    """sbi's NPE on 2,000 two_moons simulations, a few epochs (a rough posterior is enough)."""
    from sbi.utils import BoxUniform

    torch.manual_seed(0)
    sim = get_simulator("two_moons")
    g = torch.Generator().manual_seed(0)
    theta = sim.prior.sample(2000, g)
    x = sim(theta, g)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    inference = sbi_inference.NPE(prior=prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=5, show_train_summary=False)
    return sim, inference.build_posterior()


@pytest.mark.slow
def test_an_sbi_posterior_gets_the_checks_and_the_report(sbi_posterior, tmp_path):
    sim, posterior = sbi_posterior
    out = tmp_path / "report.html"
    result = check_posterior(posterior, sim, out, n_simulations=60, n_posterior_samples=100,
                             n_reference=300)  # fmt: skip
    names = {c.name for c in result.checks}
    assert {"SBC", "coverage", "TARP", "z-score / contraction"} <= names
    assert all(c.status != "skip" for c in result.checks)  # sbi's log_prob gives coverage
    html = out.read_text()
    assert "sbitk report: two_moons" in html and "ExternalPosterior" in html


def test_the_wrapper_batches_sbi_and_keeps_its_draws(sbi_posterior):
    sim, posterior = sbi_posterior
    wrapped = wrap_posterior(posterior, sim.parameter_names, sim.output_names, sim.name)
    x = sim(sim.prior.sample(3, torch.Generator().manual_seed(1)), None)
    draws = wrapped.sample(50, x, seed=7)
    assert draws.shape == (50, 3, 2)
    assert torch.equal(draws, wrapped.sample(50, x, seed=7))  # seeded
    torch.manual_seed(7)
    own = posterior.sample_batched((50,), x=x, show_progress_bars=False)
    assert torch.equal(draws, own)  # sbi's own draws, not a copy of them
    lp = wrapped.log_prob(draws, x)
    assert lp.shape == (50, 3)
    # up to a constant per observation, sbi's log_prob of each observation's draws
    for b in range(3):
        ref = posterior.log_prob(draws[:, b], x=x[b], norm_posterior=False)
        assert torch.allclose(lp[:, b], ref, atol=1e-4)
