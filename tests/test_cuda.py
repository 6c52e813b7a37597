"""Every CUDA path, where torch sees a CUDA device (the whole file is skipped elsewhere).

Each registered estimator is trained by the engine on the GPU through the public API, sampled
and scored there, written to a model file and loaded back onto the GPU and onto the CPU; NLE's
chains run on the GPU; ``sbitk run`` trains, samples and checks with ``--device cuda``. Then the
paths a user reaches with tensors of their own on the GPU: training rows, a prior given as a
torch distribution, the checks, the classical estimators and ABC.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbitk.diagnostics.coverage import tarp
from sbitk.diagnostics.misspecification import mmd_test, typicality_test
from sbitk.diagnostics.ppc import posterior_predictive_check
from sbitk.inference.abc import rejection_abc
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.nre import NRE
from sbitk.inference.training import TrainConfig
from sbitk.io.arviz import iid_chains
from sbitk.io.modelfile import load_model, save_model
from sbitk.models.classical import (
    DensityTree,
    GaussianMixture,
    Histogram,
    KernelDensity,
    MultivariateGaussian,
)
from sbitk.models.contract import NONE, can_sample
from sbitk.models.registry import available_estimators, build_estimator
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.report.html import report_sections
from sbitk.simulation.priors import BoxUniform, TorchPrior
from sbitk.simulation.rng import cuda_in_use, seeded

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[1]
CUDA = TrainConfig(max_epochs=3, batch_size=128, progress=False, device="cuda")
MCMC = MCMCConfig(num_chains=32, warmup=20, sir_candidates=1000, progress=False)


def box_data(n=1000):
    """θ in a box, x = θ + noise."""
    prior = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(n, g)
    return prior, theta, shifted(theta, g)


def shifted(theta, generator):
    """The simulator of :func:`box_data`."""
    return theta + 0.3 * torch.randn(theta.shape, generator=generator)


def on_cuda(module) -> bool:
    return all(t.is_cuda for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("name", available_estimators())
def test_every_estimator_trains_samples_and_loads_on_cuda(name, tmp_path):
    prior, theta, x = box_data()
    if not can_sample(build_estimator(name, 2, 2)):  # a ratio: NRE, sampled by MCMC
        posterior = NRE(prior, name, config=CUDA, mcmc=MCMC).fit(theta, x)
        assert on_cuda(posterior.likelihood.estimator)
        draws = posterior.sample(40, x[0], seed=0)
        assert draws.shape == (40, 2) and torch.isfinite(draws).all()
        return
    posterior = NPE(prior, name, config=CUDA).fit(theta, x)
    assert on_cuda(posterior.estimator)
    draws = posterior.sample(50, x[:3], seed=0, config=MCMC)
    assert draws.shape == (50, 3, 2) and prior.support_contains(draws).all()
    assert torch.equal(posterior.sample(50, x[:3], seed=0, config=MCMC), draws)
    if posterior.density != NONE:
        assert torch.isfinite(posterior.log_prob(draws[:5], x[:3])).all()
    save_model(tmp_path / "m.safetensors", posterior)
    loaded = load_model(tmp_path / "m.safetensors", device="cuda")
    assert on_cuda(loaded.estimator)
    assert torch.equal(loaded.sample(50, x[:3], seed=0, config=MCMC), draws)
    on_cpu = load_model(tmp_path / "m.safetensors")
    assert not any(p.is_cuda for p in on_cpu.estimator.parameters())
    assert prior.support_contains(on_cpu.sample(50, x[:3], seed=0, config=MCMC)).all()


def test_nle_chains_run_on_cuda():
    prior, theta, x = box_data()
    posterior = NLE(prior, "nsf", config=CUDA, mcmc=MCMC).fit(theta, x)
    assert on_cuda(posterior.likelihood.estimator)
    draws = posterior.sample(64, x[:2], seed=0)  # two i.i.d. rows of one observation
    assert draws.shape == (64, 2) and prior.support_contains(draws).all()
    result = posterior.last_result  # on the CPU with its draws
    assert not (result.rhat.is_cuda or result.ess.is_cuda)


def test_training_rows_given_on_cuda():
    prior, theta, x = box_data()
    posterior = NPE(prior, "gaussian", config=CUDA).fit(theta.cuda(), x.cuda())
    assert prior.support_contains(posterior.sample(20, x[0].cuda(), seed=0)).all()


def test_a_torch_distribution_prior_serves_posteriors_on_cuda():
    """Its support, density and bijection run where its parameters live (the CPU) for θ on the
    GPU; sampling it leaves the CUDA generator as it was."""
    box = torch.distributions.Independent(
        torch.distributions.Uniform(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0])), 1
    )
    _, theta, x = box_data()
    npe = NPE(box, "nsf", config=CUDA, transforms=2, hidden_features=(16,)).fit(theta, x)
    draws = npe.sample(30, x[:2], seed=0)
    assert TorchPrior(box).support_contains(draws).all()
    assert torch.isfinite(npe.log_prob(draws[:4], x[:2])).all()
    assert torch.isfinite(npe.map(x[0])).all()
    normal = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    nle = NLE(normal, "nsf", config=CUDA, mcmc=MCMC, transforms=2, hidden_features=(16,))
    assert torch.isfinite(nle.fit(theta, x).sample(32, x[0], seed=0)).all()
    state = torch.cuda.get_rng_state()
    TorchPrior(box).sample(10, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_a_torch_distribution_prior_on_cuda_serves_cpu_rows_and_restores_the_generator():
    box = torch.distributions.Independent(
        torch.distributions.Uniform(
            torch.tensor([-1.0, 0.0]).cuda(), torch.tensor([1.0, 2.0]).cuda()
        ),
        1,
    )
    prior = TorchPrior(box)
    state = torch.cuda.get_rng_state()
    draws = prior.sample(50, torch.Generator().manual_seed(0))
    assert draws.is_cuda and torch.equal(prior.sample(50, torch.Generator().manual_seed(0)), draws)
    theta = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # on the CPU, the second outside the box
    assert prior.support_contains(theta).tolist() == [True, False]
    lp = prior.log_prob(theta)
    assert not lp.is_cuda and lp[1].isneginf() and lp[0] == pytest.approx(-math.log(4.0))
    u, _ = prior.bijection().forward(draws.cpu())
    assert not u.is_cuda
    torch.testing.assert_close(prior.bijection().inverse(u), draws.cpu(), atol=1e-5, rtol=0)
    assert torch.equal(torch.cuda.get_rng_state(), state)


def test_checks_take_their_inputs_on_cuda():
    prior, theta, x = box_data()
    posterior = NPE(prior, "gaussian", config=CUDA).fit(theta, x)
    draws = posterior.sample(200, x[0], seed=0)
    ppc = posterior_predictive_check(x[0].cuda(), draws, shifted)
    assert ppc.replicates.shape == (200, 2)
    batched = posterior.sample(50, x[:40], seed=1)  # (L, N, D)
    result = tarp(theta[:40].cuda(), x[:40].cuda(), batched.cuda(), z_score=False)
    assert 0.0 <= result.p_value <= 1.0
    net = torch.nn.Linear(2, 2).cuda()
    mmd = mmd_test(x[:3], x[3:300], embedding=net)
    assert mmd.space == "embedding" and len(mmd.observations) == 3
    density = _Normal().cuda()  # its bound log_prob gets the rows on its device
    typical = typicality_test(x[:2], density.log_prob, torch.randn(200, 2))
    assert len(typical.observations) == 2 and np.isfinite(typical.log_prob).all()


class _Normal(torch.nn.Module):
    """A standard normal log-density up to a constant, with a parameter to live somewhere."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def log_prob(self, x):
        return -0.5 * (x - self.loc).square().sum(-1)


@pytest.mark.parametrize(
    "estimator",
    [MultivariateGaussian(), GaussianMixture(2), KernelDensity(), DensityTree()],
    ids=lambda e: type(e).__name__,
)
def test_classical_estimators_fitted_on_cuda_sample_there_with_a_cpu_generator(estimator):
    data = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fitted = estimator.fit(data.cuda())
    for generator in (None, torch.Generator().manual_seed(1)):
        draws = fitted.sample((40,), generator=generator)
        assert draws.is_cuda and torch.isfinite(fitted.log_prob(draws)).all()
    histogram = Histogram().fit(data[:, :1].cuda())
    assert histogram.sample((40,), generator=torch.Generator().manual_seed(1)).is_cuda


def test_a_cpu_generator_gives_a_classical_estimator_the_same_draws_on_either_device():
    data = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    on_cpu, on_gpu = DensityTree().fit(data), DensityTree().fit(data.cuda())
    draws = on_gpu.sample((40,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws.cpu(), on_cpu.sample((40,), torch.Generator().manual_seed(1)))


def test_abc_takes_an_observation_on_cuda():
    prior, _, x = box_data()
    result = rejection_abc(shifted, x[0].cuda(), prior=prior, num_simulations=2000, quantile=0.05)
    assert prior.support_contains(result.samples).all()


def test_run_trains_samples_and_checks_on_cuda(tmp_path):
    out = tmp_path / "run"
    args = ["run", "two_moons", "--observed", ROOT / "examples" / "two_moons_observed.csv",
            "-o", out, "-n", "1000", "--epochs", "3", "--num-samples", "200",
            "--diagnose-simulations", "30", "--diagnose-samples", "50", "--workers", "1",
            "--device", "cuda"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "sbitk.cli", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: a check raised an alarm
    assert "Traceback" not in result.stderr
    assert (out / "report.html").is_file()


def test_draws_and_truths_on_cuda_go_into_arviz_and_the_report():
    draws = torch.randn(40, 2, device="cuda")
    assert iid_chains(draws).shape == (4, 10, 2)
    sections = report_sections(posterior=draws, truths=torch.zeros(1, 2, device="cuda"))
    assert sections


def test_seeding_on_the_cpu_leaves_the_cuda_generators_alone():
    """Building, training and sampling on the CPU seed the CPU generator only (torch.manual_seed
    also reseeded every CUDA generator, and nothing restored them)."""
    torch.zeros(1, device="cuda")  # CUDA in use
    assert cuda_in_use()
    state = torch.cuda.get_rng_state()
    prior, theta, x = box_data()
    cpu = TrainConfig(max_epochs=2, batch_size=128, progress=False, device="cpu")
    NPE(prior, "gaussian", config=cpu).fit(theta, x).sample(10, x[0], seed=0)
    with seeded(1):
        torch.rand(3)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    with seeded(1, ["cuda"]):
        first = torch.rand(3, device="cuda")
    with seeded(1, ["cuda"]):
        assert torch.equal(torch.rand(3, device="cuda"), first)
    assert torch.equal(torch.cuda.get_rng_state(), state)
