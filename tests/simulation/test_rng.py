"""seeded: the generators it seeds are the ones it restores, and None leaves them drawing on."""

import torch

from sbitk.posteriors.external import wrap_posterior
from sbitk.simulation.rng import cuda_in_use, seeded


def test_a_seeded_block_repeats_its_draws_and_restores_the_generator():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with seeded(3, ["cpu"]):  # a CPU device is no CUDA device to fork: ignored
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(3):
        assert torch.equal(torch.rand(4), first)


def test_no_seed_draws_on_from_the_generator():
    torch.manual_seed(5)
    expected = torch.rand(8)
    torch.manual_seed(5)
    with seeded(None):
        head = torch.rand(4)
    assert torch.equal(torch.cat([head, torch.rand(4)]), expected)


def test_cuda_in_use_is_empty_until_cuda_is_initialised():
    assert cuda_in_use() == [] or torch.cuda.is_initialized()


class _Shifted:
    def sample(self, shape, x):
        return x + torch.randn(*shape, x.shape[-1])


def test_an_external_posterior_without_a_seed_gives_fresh_draws():
    """It used to restore the global generator after every call, so that each unseeded call
    repeated the last one's draws."""
    posterior = wrap_posterior(_Shifted(), parameter_names=["a", "b"])
    x = torch.zeros(2)
    assert not torch.equal(posterior.sample(5, x), posterior.sample(5, x))
    assert torch.equal(posterior.sample(5, x, seed=1), posterior.sample(5, x, seed=1))
