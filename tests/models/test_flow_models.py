"""The contract every named flow keeps: shapes, inverse, log-determinant, gradients, save/load,
standardisation, embeddings, errors, and densities that integrate to one (float64 numerics)."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sbitk.errors import SbitkError
from sbitk.models.flows import FLOWS, NSF, Flow, FlowError
from sbitk.nn import MLPEmbedding

SMALL = {"transforms": 3, "hidden_features": (16, 16)}
# every named flow, plus the autoregressive variant of NSF, and both with learnt LU mixing
VARIANTS = {
    **{name: (cls, {}) for name, cls in FLOWS.items()},
    "nsf-ar": (NSF, {"autoregressive": True}),
    "nsf-lu": (NSF, {"permutation": "lu"}),
    "nsf-ar-lu": (NSF, {"autoregressive": True, "permutation": "lu"}),
}


def make(name: str, features: int, context: int, **extra) -> Flow:
    """A small flow, float64, with non-trivial standardisation and initialised ActNorm."""
    cls, options = VARIANTS[name]
    torch.manual_seed(0)
    flow = cls(features, context, **SMALL, **options, **extra).double()
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, features, generator=g, dtype=torch.float64) * 1.5 + 0.5
    ctx = torch.randn(256, context, generator=g, dtype=torch.float64) * 2 - 1 if context else None
    flow.fit_standardization(inputs, ctx)
    flow.loss(inputs, ctx)  # first training-mode pass: ActNorm initialises (Glow)
    with torch.no_grad():  # move away from the initial values so nothing is trivially zero
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow.eval()


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("name", VARIANTS)
def test_sample_and_log_prob_shapes_unconditional(name):
    flow = make(name, 2, 0)
    dist = flow()
    assert dist.sample().shape == (2,)
    assert dist.sample((4,)).shape == (4, 2)
    assert dist.sample((3, 4)).shape == (3, 4, 2)
    assert flow(None).log_prob(randn(2)).shape == ()
    assert dist.log_prob(randn(5, 2)).shape == (5,)
    x, log_q = dist.sample_and_log_prob((6,))
    assert x.shape == (6, 2) and log_q.shape == (6,)
    assert torch.allclose(log_q, dist.log_prob(x), atol=1e-10)
    assert flow.loss(randn(7, 2)).shape == (7,)


@pytest.mark.parametrize("name", VARIANTS)
def test_sample_and_log_prob_batched_over_contexts(name):
    flow = make(name, 3, 2)
    one, many = randn(2), randn(4, 2)
    assert flow(one).sample((5,)).shape == (5, 3)
    assert flow(many).sample().shape == (4, 3)
    assert flow(many).sample((5,)).shape == (5, 4, 3)
    x = flow(many).sample((5,))
    lp = flow(many).log_prob(x)
    assert lp.shape == (5, 4)
    # each column is the density under its own context
    for j in range(4):
        assert torch.allclose(lp[:, j], flow(many[j]).log_prob(x[:, j]), atol=1e-10)
    assert flow(many).log_prob(randn(3)).shape == (4,)  # one x against every context
    xs, log_q = flow(many).sample_and_log_prob((5,))
    assert torch.allclose(log_q, flow(many).log_prob(xs), atol=1e-10)
    assert flow.loss(randn(4, 3), many).shape == (4,)


@pytest.mark.parametrize("name", VARIANTS)
def test_inverse_and_log_det_of_the_whole_flow(name):
    flow = make(name, 3, 2)
    x, c = randn(8, 3), flow.embed(randn(8, 2))
    z, ld = flow.transform(x, c)
    assert torch.allclose(flow.transform.inverse(z, c), x, atol=1e-10)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow.transform(v, c[i])[0], x[i])
        assert torch.allclose(ld[i], torch.linalg.slogdet(jac)[1], atol=1e-9)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_every_parameter_and_rsample_is_differentiable(name):
    flow = make(name, 3, 2, embedding=MLPEmbedding(2, 4, (8,)).double()).train()
    c = randn(16, 2)
    flow.loss(randn(16, 3), c).mean().backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    flow.zero_grad()
    flow(c).rsample((2,)).square().sum().backward()
    assert all(p.grad is not None for p in flow.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_save_and_load_through_config_and_safetensors(name, tmp_path):
    flow = make(name, 3, 2, embedding=MLPEmbedding(2, 4, (8,)).double())
    config = json.loads(json.dumps(dataclasses.asdict(flow.config)))  # as a model file stores it
    save_file(flow.state_dict(), tmp_path / "flow.safetensors")
    copy = type(flow).from_config(config).double()
    copy.load_state_dict(load_file(tmp_path / "flow.safetensors"))
    copy.eval()
    assert copy.config == flow.config
    x, c = randn(10, 3), randn(10, 2)
    assert torch.equal(copy(c).log_prob(x), flow(c).log_prob(x))
    g1, g2 = (torch.Generator().manual_seed(5) for _ in range(2))
    assert torch.equal(copy(c).sample((3,), g1), flow(c).sample((3,), g2))
    copy.train()  # a loaded Glow must not re-initialise its ActNorm
    assert torch.equal(copy(c).log_prob(x), flow(c).log_prob(x))


@pytest.mark.parametrize("name", VARIANTS)
def test_train_and_eval_modes_agree(name):
    flow = make(name, 3, 2)
    x, c = randn(6, 3), randn(6, 2)
    lp_eval = flow.eval()(c).log_prob(x)
    assert torch.equal(flow.train()(c).log_prob(x), lp_eval)


def test_distribution_reports_its_shapes():
    dist = make("maf", 2, 1)(randn(4, 1))
    assert dist.batch_shape == (4,) and dist.event_shape == (2,) and dist.has_rsample
    assert "batch_shape=(4,)" in repr(dist)


@pytest.mark.parametrize("name", VARIANTS)
def test_float32_default_and_float64(name):
    cls, options = VARIANTS[name]
    flow = cls(2, 1, **SMALL, **options)
    assert flow(torch.zeros(1)).sample((3,)).dtype == torch.float32
    assert flow.double()(torch.zeros(1, dtype=torch.float64)).sample().dtype == torch.float64


def test_same_seed_same_samples():
    flow = make("nsf", 2, 1)
    c = randn(1)
    a = flow(c).sample((4,), torch.Generator().manual_seed(3))
    b = flow(c).sample((4,), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_input_standardisation_keeps_densities_in_the_original_space():
    flow = make("realnvp", 2, 1)
    mean, std = flow.input_standardization.mean.clone(), flow.input_standardization.std.clone()
    x, c = randn(20, 2), randn(20, 1)
    lp = flow(c).log_prob(x)
    flow.input_standardization.mean.zero_()
    flow.input_standardization.std.fill_(1.0)
    lp_std = flow(c).log_prob((x - mean) / std)
    assert torch.allclose(lp, lp_std - torch.log(std).sum(), atol=1e-12)


def test_context_standardisation_is_applied_before_the_conditioners():
    flow = make("maf", 2, 2)
    cs = flow.context_standardization
    mean, std = cs.mean.clone(), cs.std.clone()
    x, c = randn(20, 2), randn(20, 2)
    lp = flow(c).log_prob(x)
    cs.mean.zero_()
    cs.std.fill_(1.0)
    assert torch.allclose(lp, flow((c - mean) / std).log_prob(x), atol=1e-12)


def test_fit_standardization_sets_statistics_from_training_data():
    flow = NSF(2, 3, **SMALL)
    inputs = torch.randn(500, 2) * torch.tensor([10.0, 0.1]) + 3
    context = torch.randn(500, 3) * 5
    assert flow.fit_standardization(inputs, context) is flow
    assert torch.allclose(flow.input_standardization.mean, inputs.mean(0))
    assert torch.allclose(flow.input_standardization.std, inputs.std(0))
    assert torch.allclose(flow.context_standardization.std, context.std(0))


def test_glow_actnorm_initialises_on_the_first_training_pass():
    torch.manual_seed(0)
    flow = FLOWS["glow"](2, transforms=2, hidden_features=(8,))
    actnorm = flow.transform.transforms[1]
    assert not actnorm.initialized
    flow.eval().loss(torch.randn(64, 2))
    assert not actnorm.initialized
    flow.train().loss(torch.randn(64, 2) * 3)
    assert actnorm.initialized


def test_user_embedding_is_used_but_not_rebuildable():
    class Summary(nn.Module):
        out_features = 2

        def forward(self, c):
            return torch.stack([c.mean(-1), c.std(-1)], -1)

    flow = NSF(2, 5, embedding=Summary(), **SMALL)
    assert flow(torch.randn(3, 5)).sample((4,)).shape == (4, 3, 2)
    assert flow.config.embedding == {"type": "custom", "out_features": 2}
    with pytest.raises(SbitkError, match="cannot be rebuilt"):
        NSF.from_config(dataclasses.asdict(flow.config))


def test_bad_calls_name_the_thing_expected_and_found():
    flow = NSF(2, 3, **SMALL)
    with pytest.raises(FlowError, match=r"last dimension 2.*\(4, 5\)"):
        flow(torch.zeros(3)).log_prob(torch.zeros(4, 5))
    with pytest.raises(FlowError, match=r"context of shape \(\*, 3\).*\(4, 2\)"):
        flow(torch.zeros(4, 2))
    with pytest.raises(FlowError, match=r"context of shape \(\*, 3\).*None"):
        flow()
    with pytest.raises(FlowError, match=r"do not broadcast.*\(4,\)"):
        flow(torch.zeros(4, 3)).log_prob(torch.zeros(5, 2))
    with pytest.raises(FlowError, match="unconditional"):
        NSF(2, **SMALL)(torch.zeros(3))
    with pytest.raises(FlowError, match=r"permutation.*'shuffle'"):
        NSF(2, permutation="shuffle")
    with pytest.raises(FlowError, match=r"options among.*\['width'\]"):
        NSF(2, width=3)
    with pytest.raises(FlowError, match="hidden_features as a tuple of positive ints, found 64"):
        NSF(2, hidden_features=64)
    with pytest.raises(FlowError, match="features >= 1"):
        NSF(0)
    with pytest.raises(FlowError, match="reading 3 context features, found one reading 2"):
        NSF(2, 3, embedding=MLPEmbedding(2, 2))
    with pytest.raises(FlowError, match=r"bins >= 1, bound > 0 .*bound=0.0"):
        NSF(2, bound=0.0)
    with pytest.raises(FlowError, match=r"conditioner among \['mlp', 'residual'\].*'gru'"):
        NSF(2, conditioner="gru")
    with pytest.raises(FlowError, match="autoregressive variant's conditioner is a MADE"):
        NSF(2, autoregressive=True, conditioner="mlp")
    for scale in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(FlowError, match=rf"finite bin_scale > 0.*bin_scale={scale}"):
            NSF(2, bin_scale=scale)
    with pytest.raises(FlowError, match="embedding net needs a context"):
        NSF(2, embedding=MLPEmbedding(2, 2))
    assert issubclass(FlowError, SbitkError)


def test_flows_table_lists_the_named_flows():
    assert sorted(FLOWS) == ["glow", "maf", "nice", "nsf", "realnvp"]


# --- densities integrate to one ------------------------------------------------------------


def integral_1d(flow: Flow, context, lo: float, hi: float, n: int) -> float:
    x = torch.linspace(lo, hi, n, dtype=torch.float64)[:, None]
    with torch.no_grad():
        p = flow(context).log_prob(x).exp()
    return torch.trapezoid(p, x[:, 0]).item()


def integral_2d(flow: Flow, context, lo: float, hi: float, n: int) -> float:
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1)
    with torch.no_grad():
        p = flow(context).log_prob(grid.reshape(-1, 2)).exp().reshape(n, n)
    return torch.trapezoid(torch.trapezoid(p, t), t).item()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("context", [0, 2])
def test_density_integrates_to_one_in_1d_at_initialisation(name, context):
    flow = make(name, 1, context)
    c = randn(context) if context else None
    # +-20 holds all but a negligible tail; the trapezoid error at this spacing measures
    # <= 2e-7 here (<= 1e-5 at 4x the spacing: second order, slower across spline knots)
    total = integral_1d(flow, c, -20.0, 20.0, 16001)
    assert abs(total - 1) < 1e-5, total


@pytest.mark.parametrize("name", VARIANTS)
def test_density_integrates_to_one_in_2d_at_initialisation(name):
    flow = make(name, 2, 2)
    # measured quadrature error at spacing 0.05 <= 2e-5 (<= 3e-4 at twice the spacing); the
    # same values on [-16, 16]^2 show the mass outside the grid is negligible
    total = integral_2d(flow, randn(2), -12.0, 12.0, 481)
    assert abs(total - 1) < 2e-4, total


def conditional_bimodal_1d(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.randn(n, 1, generator=g, dtype=torch.float64)
    side = torch.where(torch.rand(n, 1, generator=g) < 0.3, -2.0, 1.5).double()
    return 2 * c + side + 0.4 * torch.randn(n, 1, generator=g, dtype=torch.float64), c


@pytest.mark.parametrize("name", VARIANTS)
def test_density_integrates_to_one_in_1d_after_training(name):
    g = torch.Generator().manual_seed(0)
    data, context = conditional_bimodal_1d(2048, g)
    cls, options = VARIANTS[name]
    torch.manual_seed(0)
    flow = cls(1, 1, **SMALL, **options).double()
    flow.fit_standardization(data, context)
    opt = torch.optim.AdamW(flow.parameters(), lr=1e-2)
    first = flow.loss(data, context).mean().item()
    for _ in range(150):
        i = torch.randint(0, 2048, (256,), generator=g)
        loss = flow.loss(data[i], context[i]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        # the context shifts the mean: even a location-scale fit (NICE in 1-D) gains 0.45 nats
        assert flow.loss(data, context).mean().item() < first - 0.3
    for c in (-1.0, 0.5):
        total = integral_1d(flow, torch.tensor([c], dtype=torch.float64), -25.0, 25.0, 20001)
        assert abs(total - 1) < 1e-5, (c, total)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", VARIANTS)
def test_flows_run_on_cuda(name):
    cls, options = VARIANTS[name]
    flow = cls(3, 2, **SMALL, **options).cuda()
    x, c = torch.randn(64, 3, device="cuda"), torch.randn(64, 2, device="cuda")
    flow.fit_standardization(x, c)
    flow.loss(x, c).mean().backward()
    assert all(p.grad.is_cuda for p in flow.parameters())
    samples, log_q = flow(c[:4]).sample_and_log_prob((5,))
    assert samples.is_cuda and log_q.shape == (5, 4)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert flow(c[0]).sample((2,), g).is_cuda
    assert flow(c[0]).sample((2,), torch.Generator().manual_seed(0)).is_cuda
