"""The chain decides from what an estimator can do: a sample-only estimator trains, is saved,
sampled into an ArviZ file and diagnosed with every sample-based check, the density-based ones
shown as skipped with their reason; NLE refuses it in one line."""

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from sbitk import workflow
from sbitk.cli import main
from sbitk.errors import SbitkError
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.models.contract import NONE
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.models.registry import estimator, unregister
from sbitk.simulation.priors import BoxUniform
from sbitk.simulation.runner import simulate

OBSERVED = Path(__file__).resolve().parents[1] / "examples" / "two_moons_observed.csv"
QUICK = TrainConfig(max_epochs=3, progress=False)


class SamplesOnly:
    """A distribution that draws and nothing else."""

    def __init__(self, dist):
        self._dist = dist
        self.batch_shape, self.event_shape = dist.batch_shape, dist.event_shape

    def sample(self, shape=()):
        return self._dist.sample(shape)


class SampleOnlyGaussian(ConditionalGaussian):
    """The Gaussian estimator with its density hidden: what a GAN offers."""

    density: ClassVar[str] = NONE

    def forward(self, context=None):
        return SamplesOnly(super().forward(context))

    def loss(self, inputs, context=None):  # it trains on the density it keeps to itself
        return -super().forward(context).log_prob(inputs)


@pytest.fixture(scope="module")
def sample_only():
    estimator("sample_only_gaussian")(SampleOnlyGaussian)
    yield "sample_only_gaussian"
    unregister("sample_only_gaussian")


@pytest.fixture(scope="module")
def bank(tmp_path_factory, sample_only):
    path = tmp_path_factory.mktemp("bank") / "bank.zarr"
    simulate("two_moons", 1000, seed=0, bank=path, workers=1, progress=False)
    return path


def test_a_sample_only_posterior_samples_and_refuses_a_density_by_name(sample_only, bank):
    posterior = workflow.train(bank, bank.parent / "m.safetensors", estimator=sample_only,
                               config=QUICK)  # fmt: skip
    assert posterior.density == NONE and posterior.unconstrained  # trained on the bijection
    x = torch.zeros(2)
    draws = posterior.sample(50, x, seed=0)
    assert draws.shape == (50, 2) and posterior.prior.support_contains(draws).all()
    with pytest.raises(SbitkError, match=r"log_prob needs a density.*samples only"):
        posterior.log_prob(draws, x)
    with pytest.raises(SbitkError, match="map needs a density"):
        posterior.map(x)


def test_it_is_sampled_into_arviz_without_log_densities(sample_only, bank, tmp_path):
    model = tmp_path / "m.safetensors"
    workflow.train(bank, model, estimator=sample_only, config=QUICK)
    result = workflow.sample(model, OBSERVED, tmp_path / "p.nc", n=100, bank=bank)
    assert result.idata.posterior.theta.shape == (4, 25, 2)
    assert "lp" not in getattr(result.idata, "sample_stats", {})


def test_diagnose_runs_the_sample_based_checks_and_skips_coverage_with_its_reason(
    sample_only, bank, tmp_path
):
    model = tmp_path / "m.safetensors"
    workflow.train(bank, model, estimator=sample_only, config=QUICK)
    report = tmp_path / "report.html"
    result = workflow.diagnose(model, bank, report, n_simulations=40, n_posterior_samples=60,
                               observed=OBSERVED)  # fmt: skip
    status = {c.name: c.status for c in result.checks}
    assert status["coverage"] == "skip"
    assert {"SBC", "TARP", "z-score / contraction", "predictive check"} <= set(status)
    assert all(s != "skip" for name, s in status.items() if name != "coverage")
    # decided by the checks that ran: the worst of them, the skipped one left out
    ran = [s for name, s in status.items() if name != "coverage"]
    assert result.status == max(ran, key=["pass", "warn", "fail"].index)
    html = report.read_text()
    assert "SKIP" in html and "skipped: HPD coverage ranks draws by their density" in html


def test_the_command_line_prints_a_skipped_check_as_such(sample_only, bank, tmp_path):
    model = tmp_path / "m.safetensors"
    workflow.train(bank, model, estimator=sample_only, config=QUICK)
    result = CliRunner().invoke(main, ["diagnose", str(model), "--bank", str(bank), "-o",
                                       str(tmp_path / "r.html"), "--num-simulations", "30",
                                       "--num-posterior-samples", "40"])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    lines = [line for line in result.output.splitlines() if "coverage" in line]
    assert lines and lines[0].startswith("SKIP  coverage: skipped:"), result.output


def test_nle_and_truncation_refuse_a_sample_only_estimator_in_one_line(sample_only):
    prior = BoxUniform(-1.0, 1.0, dim=2)
    with pytest.raises(SbitkError, match=r"NLE .* offers samples only") as info:
        NLE(prior, sample_only)
    assert "\n" not in str(info.value)
    with pytest.raises(SbitkError, match="needs a density"):
        NPE(prior, sample_only, unconstrained=False, config=QUICK).fit(
            prior.sample(100, torch.Generator().manual_seed(0)), torch.zeros(100, 2)
        )


def test_nle_refuses_an_unnormalised_likelihood_in_one_line():
    with pytest.raises(SbitkError, match=r"NLE needs q\(x \| θ\) normalised") as info:
        NLE(BoxUniform(-1.0, 1.0, dim=2), "ebm")
    assert "\n" not in str(info.value)
