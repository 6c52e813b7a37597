"""Building blocks: perceptrons, MADE's autoregressive masks, standardisation, embeddings."""

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.nn import (
    MADE,
    MLP,
    Conv1dEmbedding,
    GatedResidualMLP,
    MLPEmbedding,
    ResidualEmbedding,
    ResidualMLP,
    SetEmbedding,
    Standardize,
    embedding_from_spec,
    made_degrees,
)
from sbitk.nn.mlp import compact


def test_mlp_shapes_and_activation_names():
    assert MLP(3, 2, (8, 8), "gelu")(torch.zeros(4, 5, 3)).shape == (4, 5, 2)
    assert ResidualMLP(3, 2, 8, blocks=3)(torch.zeros(7, 3)).shape == (7, 2)
    with pytest.raises(SbitkError, match=r"activation.*'swish'"):
        MLP(3, 2, activation="swish")


@pytest.mark.parametrize("n_inputs", [0, 3])
def test_mlp_pair_call_equals_the_call_on_the_concatenation(n_inputs):
    torch.manual_seed(0)
    net = MLP(n_inputs + 4, 5, (8, 8)).double()
    x = torch.randn(6, 2, n_inputs, dtype=torch.float64)
    c = torch.randn(2, 4, dtype=torch.float64)
    expanded = c.expand(6, 2, 4)  # as a flow expands one context per observation over draws
    want = net(torch.cat([x, expanded], -1))
    got = net.forward_pair(x, expanded)
    assert got.shape == (6, 2, 5)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(net.forward_pair(x, c), want, atol=1e-12)  # broadcast, not expanded
    plain = MLP(3, 2)
    inputs = torch.randn(5, 3)
    assert torch.equal(plain.forward_pair(inputs, None), plain(inputs))  # no context: plain call


@pytest.mark.parametrize("n_inputs", [0, 3])
def test_gated_residual_mlp_reuses_context_terms_and_starts_near_linear(n_inputs):
    torch.manual_seed(0)
    net = GatedResidualMLP(n_inputs, 4, 5, (8, 6, 7)).double()
    assert len(net.blocks) == len(net.gates) == 2
    x = torch.randn(6, 2, n_inputs, dtype=torch.float64)
    c = torch.randn(2, 4, dtype=torch.float64)
    got = net(x, c.expand(6, 2, 4))
    assert got.shape == (6, 2, 5)
    # the same network written out on the concatenation, once per row
    z = torch.cat([x, c.expand(6, 2, 4)], -1)
    h = net.input(z)
    for block, gate in zip(net.blocks, net.gates, strict=True):
        h = h + torch.sigmoid(gate(c)) * block(h)
    assert torch.allclose(got, net.output(h), atol=1e-12)
    assert torch.allclose(net(x, c), got, atol=1e-12)  # broadcast context, not expanded
    # at initialisation the blocks add almost nothing: a linear map of the inputs
    linear = net.output(net.input(z))
    assert (got - linear).abs().max() < 0.05 * linear.abs().max()
    assert torch.allclose(net.output_layer(net.hidden_pair(x, c)).expand(6, 2, 5), got)


def test_gated_residual_mlp_without_context_and_bad_calls():
    net = GatedResidualMLP(3, 0, 2, (8,))
    assert len(net.blocks) == 1 and len(net.gates) == 0
    assert net(torch.zeros(4, 3)).shape == (4, 2)
    with pytest.raises(SbitkError, match="context of size 0, found \\(4, 1\\)"):
        net(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(SbitkError, match="context of size 2, found none"):
        GatedResidualMLP(3, 2, 2)(torch.zeros(4, 3))
    with pytest.raises(SbitkError, match="positive hidden sizes"):
        GatedResidualMLP(3, 2, 2, ())
    with pytest.raises(SbitkError, match="some input"):
        GatedResidualMLP(0, 0, 2)


def test_compact_narrows_only_expanded_leading_dimensions():
    c = torch.randn(4, 3)
    assert compact(c.expand(100, 4, 3)).shape == (1, 4, 3)
    assert compact(c).shape == (4, 3)  # a real batch is kept
    assert compact(c[:, :1].expand(4, 3)).shape == (4, 3)  # the feature dimension is kept
    assert compact(None) is None


@pytest.mark.parametrize(("features", "context"), [(1, 0), (1, 2), (4, 0), (4, 3)])
def test_made_output_i_depends_only_on_inputs_before_i(features, context):
    torch.manual_seed(0)
    # tanh: no unit is switched off, so every allowed connection shows in the Jacobian
    made = MADE(features, 3, context, hidden_features=(16, 16), activation="tanh").double()
    x = torch.randn(features, dtype=torch.float64)
    c = torch.randn(context, dtype=torch.float64) if context else None
    jac = torch.autograd.functional.jacobian(lambda v: made(v, c), x)  # (D, P, D)
    dependence = jac.abs().sum(1) > 0  # [i, j]: output i depends on input j
    allowed = torch.ones(features, features).tril(-1).bool()
    assert not (dependence & ~allowed).any()
    # with enough hidden units every allowed connection is realised
    assert torch.equal(dependence, allowed)
    if context:
        jc = torch.autograd.functional.jacobian(lambda v: made(x, v), c)
        assert (jc.abs().sum((1, 2)) > 0).all()  # every output sees the context


def test_made_order_sets_which_inputs_each_output_sees():
    torch.manual_seed(0)
    made = MADE(3, 1, 0, hidden_features=(16,), activation="tanh", order=[3, 1, 2]).double()
    jac = torch.autograd.functional.jacobian(made, torch.randn(3, dtype=torch.float64))[:, 0]
    # rank 1 (position 1) sees nothing, rank 2 (position 2) sees position 1, rank 3 sees both
    assert torch.equal(jac.abs() > 0, torch.tensor([[0, 1, 1], [0, 0, 0], [0, 1, 0]]).bool())
    with pytest.raises(SbitkError, match=r"permutes 1..3.*\[1, 1, 2\]"):
        MADE(3, 1, order=[1, 1, 2])


def test_made_context_term_reuse_matches_plain_call():
    torch.manual_seed(0)
    made = MADE(3, 2, 4, hidden_features=(8,))
    x, c = torch.randn(5, 3), torch.randn(5, 4)
    assert torch.allclose(made(x, context_term=made.context_term(c)), made(x, c))
    assert torch.allclose(made(x[None], c), made(x, c)[None])  # non-matrix input path


def test_made_degrees_cover_context_only_units_when_conditional():
    assert made_degrees(3, [5], context=2)[1].tolist() == [0, 1, 2, 0, 1]
    assert made_degrees(1, [3])[1].tolist() == [0, 0, 0]


def test_standardize_fit_inverse_and_log_det():
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(1000, 3, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)
        + 5.0
    )
    x[:, 2] = 7.0  # a constant column keeps unit scale
    s = Standardize(3).double().fit(x)
    z = s(x)
    assert torch.allclose(z[:, :2].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z[:, :2].std(0), torch.ones(2, dtype=torch.float64))
    assert s.std[2] == 1.0
    assert torch.allclose(s.inverse(z), x)
    assert torch.isclose(s.log_abs_det(), -torch.log(s.std).sum())


def test_standardize_ignores_non_finite_rows_and_names_bad_input():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [float("nan"), 100.0]])
    s = Standardize(2).fit(x)
    assert torch.allclose(s.mean, torch.tensor([1.0, 2.0]))
    with pytest.raises(SbitkError, match=r"last dimension 2.*\(4, 3\)"):
        s.fit(torch.zeros(4, 3))
    with pytest.raises(SbitkError, match="at least 2 finite rows"):
        s.fit(torch.tensor([[0.0, float("inf")], [1.0, 1.0]]))


@pytest.mark.parametrize(
    "emb",
    [
        lambda: MLPEmbedding(6, 3, (8,)),
        lambda: ResidualEmbedding(6, 3, 8, 1, "elu"),
        lambda: SetEmbedding(6, 3, trials=2, width=2, offset=1, hidden_features=(8,), summary=4),
        lambda: Conv1dEmbedding(6, 3, channels=2, hidden_channels=(4,), hidden_features=(8,)),
    ],
)
def test_embeddings_rebuild_from_spec(emb):
    torch.manual_seed(0)
    net = emb()
    copy = embedding_from_spec(net.spec())
    assert copy.spec() == net.spec()
    copy.load_state_dict(net.state_dict())
    c = torch.randn(4, 6)
    assert torch.equal(copy(c), net(c))
    assert net(c).shape == (4, 3)


def test_the_set_embedding_is_blind_to_the_order_of_trials_and_to_nothing_else():
    torch.manual_seed(0)
    # One leading value, 3 trials of 2 values, one trailing value.
    net = SetEmbedding(8, 5, trials=3, width=2, offset=1, hidden_features=(16,), summary=6)
    c = torch.randn(10, 8)
    trials = c[:, 1:7].reshape(10, 3, 2)
    for order in ([2, 0, 1], [1, 2, 0]):
        shuffled = torch.cat([c[:, :1], trials[:, order].reshape(10, 6), c[:, 7:]], -1)
        assert torch.allclose(net(shuffled), net(c), atol=1e-6)
    # Not blind to the values within a trial, nor to the values outside the trials.
    inside = torch.cat([c[:, :1], trials.flip(-1).reshape(10, 6), c[:, 7:]], -1)
    assert not torch.allclose(net(inside), net(c), atol=1e-3)
    for j in (0, 7):
        moved = c.clone()
        moved[:, j] += 1.0
        assert not torch.allclose(net(moved), net(c), atol=1e-3)


def test_the_set_embedding_with_missing_trials_averages_those_present_and_counts_them():
    torch.manual_seed(0)
    net = SetEmbedding(7, 5, trials=3, width=2, hidden_features=(16,), summary=6, missing=True)
    c = torch.randn(4, 7)
    nan = torch.full((4, 2), float("nan"))
    a, b, rest = c[:, 0:2], c[:, 2:4], c[:, 6:]
    two = net(torch.cat([a, b, nan, rest], -1))
    assert torch.isfinite(two).all()
    # The same two trials elsewhere in the block, in another order: the same embedding.
    assert torch.allclose(net(torch.cat([nan, b, a, rest], -1)), two, atol=1e-6)
    # A third trial, or one of them absent, changes it; so does the count of trials present
    # alone: three copies of a trial are not one.
    assert not torch.allclose(net(c), two, atol=1e-3)
    assert not torch.allclose(net(torch.cat([a, nan, nan, rest], -1)), two, atol=1e-3)
    once = net(torch.cat([a, nan, nan, rest], -1))
    assert not torch.allclose(net(torch.cat([a, a, a, rest], -1)), once, atol=1e-3)
    assert (
        embedding_from_spec(net.spec()).missing
        and "missing" not in SetEmbedding(7, 5, trials=3).spec()
    )


def test_the_conv_embedding_sees_each_series_in_time_order():
    torch.manual_seed(0)
    net = Conv1dEmbedding(12, 4, channels=2, hidden_channels=(3,), kernel_size=3)
    c = torch.randn(5, 12)
    assert net(c).shape == (5, 4) and net(c[0]).shape == (4,)
    # A convolution's output at time t depends on times t-1..t+1 only: change the first value
    # of series 0 and only the first two time steps of the convolution's output move.
    moved = c.clone()
    moved[:, 0] += 1.0
    a, b = (net.convolutions(x.reshape(5, 2, 6)) for x in (c, moved))
    changed = (a - b).abs().amax((0, 1)) > 0
    assert changed.tolist() == [True, True, False, False, False, False]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "set", "in_features": 7, "out_features": 2, "trials": 2, "width": 4},
         "2 trials of 4 values from offset 0 do not fit a context of 7"),
        ({"type": "set", "in_features": 8, "out_features": 2, "trials": 0}, "trials must be"),
        ({"type": "conv1d", "in_features": 7, "out_features": 2, "channels": 2},
         "not 2 series of equal length"),
        ({"type": "conv1d", "in_features": 8, "out_features": 2, "kernel_size": 4},
         "kernel_size must be odd"),
        ({"type": "set", "in_features": 8, "out_features": 2, "trails": 4},
         "embedding spec of type 'set': .*trails"),
    ],
)  # fmt: skip
def test_bad_embedding_specs_are_one_clear_error(spec, message):
    with pytest.raises(SbitkError, match=message):
        embedding_from_spec(spec)


def test_unknown_embedding_spec_is_named():
    with pytest.raises(SbitkError, match=r"custom.*cannot be rebuilt"):
        embedding_from_spec({"type": "custom", "out_features": 3})


@pytest.mark.parametrize("name", ["relu", "elu", "silu", "gelu", "tanh"])
def test_in_place_activations_keep_gradients_exact(name):
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 2, dtype=torch.float64)
    mlp = MLP(3, 2, (8, 8), name).double()
    made = MADE(3, 2, 2, (8, 8), name).double()
    assert torch.autograd.gradcheck(mlp, (x,))
    assert torch.autograd.gradcheck(lambda v: made(v, c), (x,))
