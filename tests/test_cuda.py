"""Every CUDA path, where torch sees a CUDA device (the whole file is skipped elsewhere).

Each registered estimator is trained by the engine on the GPU through the public API, sampled
and scored there, written to a model file and loaded back onto the GPU and onto the CPU; NLE's
chains run on the GPU; ``sbitk run`` trains, samples and checks with ``--device cuda``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.nre import NRE
from sbitk.inference.training import TrainConfig
from sbitk.io.modelfile import load_model, save_model
from sbitk.models.contract import NONE, can_sample
from sbitk.models.registry import available_estimators, build_estimator
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.priors import BoxUniform

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[1]
CUDA = TrainConfig(max_epochs=3, batch_size=128, progress=False, device="cuda")
MCMC = MCMCConfig(num_chains=32, warmup=20, sir_candidates=1000, progress=False)


def box_data(n=1000):
    """θ in a box, x = θ + noise."""
    prior = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(n, g)
    return prior, theta, theta + 0.3 * torch.randn(theta.shape, generator=g)


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
