"""Every flow transform: exact inverse, log-determinant against autograd, shapes, gradients.

All numerics in float64. Parameters are perturbed away from their initial values so that
zero-initialised ones (ActNorm, LU bias, scales) are exercised too.
"""

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import (
    unconstrained_rational_quadratic_spline as nflows_spline,
)

from sbitk.errors import SbitkError
from sbitk.models.flows import (
    ActNorm,
    AdditiveMap,
    AffineMap,
    BijectionTransform,
    Composite,
    Coupling,
    ElementwiseAffine,
    FlowError,
    LULinear,
    MaskedAutoregressive,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    Scale,
    SplineMap,
    StandardizeTransform,
)
from sbitk.models.flows.splines import rational_quadratic_spline
from sbitk.simulation.bijections import LogBijection, LogitBijection, StackBijection

D, C = 3, 2
H = (16, 16)


def _standardize():
    t = StandardizeTransform(D)
    t.standardize.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    t.standardize.std.copy_(torch.tensor([2.0, 0.5, 3.0]))
    return t


def _actnorm():
    t = ActNorm(D)
    t.initialize(torch.randn(100, D) * 3 + 1)
    return t


# name -> (factory(), conditional, inputs sampler(n))
TRANSFORMS = {
    "additive-coupling": (lambda: Coupling(D, C, AdditiveMap(), H), True),
    "affine-coupling": (lambda: Coupling(D, C, AffineMap(2.0), H), True),
    "affine-coupling-flip": (lambda: Coupling(D, C, AffineMap(), H, flip=True), True),
    "spline-coupling": (lambda: Coupling(D, C, SplineMap(6, bound=2.0), H), True),
    "spline-coupling-flip": (lambda: Coupling(D, 0, SplineMap(4, 2.0), H, flip=True), False),
    "spline-coupling-scaled-bins": (lambda: Coupling(D, C, SplineMap(6, 2.0, 0.1), H), True),
    "spline-coupling-residual": (
        lambda: Coupling(D, C, SplineMap(6, 2.0), H, conditioner="residual"),
        True,
    ),
    "spline-coupling-residual-1d": (
        lambda: Coupling(1, C, SplineMap(5, 2.0), H, conditioner="residual"),
        True,
    ),
    "affine-coupling-residual": (
        lambda: Coupling(D, 0, AffineMap(), H, conditioner="residual", flip=True),
        False,
    ),
    "affine-coupling-1d": (lambda: Coupling(1, C, AffineMap(), H), True),
    "spline-coupling-1d-unconditional": (lambda: Coupling(1, 0, SplineMap(5, 2.0), H), False),
    "affine-autoregressive": (lambda: MaskedAutoregressive(D, C, AffineMap(), H), True),
    "spline-autoregressive": (
        lambda: MaskedAutoregressive(D, C, SplineMap(6, bound=2.0), H),
        True,
    ),
    "affine-autoregressive-unconditional": (
        lambda: MaskedAutoregressive(D, 0, AffineMap(), H),
        False,
    ),
    "actnorm": (_actnorm, False),
    "lu-linear": (lambda: LULinear(D), False),
    "reverse-permutation": (lambda: ReversePermutation(D), False),
    "random-permutation": (lambda: RandomPermutation(D, torch.Generator().manual_seed(3)), False),
    "scale": (lambda: Scale(D), False),
    "standardize": (_standardize, False),
    "elementwise-affine": (
        lambda: ElementwiseAffine(torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.5, 2.0, 1.0])),
        False,
    ),
    "composite": (
        lambda: Composite(
            [
                _actnorm(),
                LULinear(D),
                Coupling(D, C, SplineMap(4, 2.0), H),
                ReversePermutation(D),
                MaskedAutoregressive(D, C, AffineMap(), H),
            ]
        ),
        True,
    ),
}

# bounded supports: inputs must be drawn inside them
BOUNDED = {
    "logit": lambda: BijectionTransform(
        LogitBijection(torch.tensor([0.0, -1.0, 2.0]), torch.tensor([1.0, 3.0, 2.5]))
    ),
    "log": lambda: BijectionTransform(LogBijection(D, low=torch.tensor([0.0, 1.0, -2.0]))),
    "stack": lambda: BijectionTransform(
        StackBijection([LogitBijection(torch.zeros(1), torch.ones(1)), LogBijection(2)])
    ),
}
LOW = {"logit": [0.0, -1.0, 2.0], "log": [0.0, 1.0, -2.0], "stack": [0.0, 0.0, 0.0]}
HIGH = {"logit": [1.0, 3.0, 2.5], "log": [5.0, 6.0, 3.0], "stack": [1.0, 5.0, 5.0]}


def build(name):
    """The transform in float64, perturbed parameters; its context size; an input sampler."""
    torch.manual_seed(0)
    if name in BOUNDED:
        t, conditional = BOUNDED[name](), False
        low, high = torch.tensor(LOW[name]), torch.tensor(HIGH[name])

        def inputs(*shape):
            u = torch.rand(*shape, D, dtype=torch.float64) * 0.98 + 0.01
            return (low + (high - low) * u).double()

    else:
        t, conditional = TRANSFORMS[name]
        t = t()
        d = getattr(t, "features", None) or (1 if name.endswith(("1d", "1d-unconditional")) else D)

        def inputs(*shape):
            return 2.0 * torch.randn(*shape, d, dtype=torch.float64)  # reaches spline tails

    t = t.double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.2 * torch.randn_like(p))
    t.eval()
    return t, (C if conditional else 0), inputs


ALL = [*TRANSFORMS, *BOUNDED]


def _context(c, *shape):
    return torch.randn(*shape, c, dtype=torch.float64) if c else None


@pytest.mark.parametrize("name", ALL)
def test_inverse_of_forward_is_identity(name):
    t, c, inputs = build(name)
    x, ctx = inputs(64), _context(c, 64)
    z, ld = t(x, ctx)
    x2, ld2 = t.inverse_and_log_det(z, ctx)
    assert torch.allclose(x2, x, atol=1e-10, rtol=1e-10)
    assert torch.allclose(ld2, ld, atol=1e-10)
    assert torch.allclose(t.inverse(z, ctx), x, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(z, x)  # not trivially the identity


@pytest.mark.parametrize("name", ALL)
def test_log_det_equals_slogdet_of_autograd_jacobian(name):
    t, c, inputs = build(name)
    xs, cs = inputs(4), _context(c, 4)
    for i in range(4):
        ci = None if cs is None else cs[i]
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: t(v, ci)[0], xs[i])
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(t(xs[i], ci)[1], logabsdet, atol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_shapes_batched_unbatched_and_broadcast(name):
    t, c, inputs = build(name)
    d = inputs(1).shape[-1]
    for xs, cs, batch in [
        ((), (), ()),
        ((5,), (5,), (5,)),
        ((2, 5), (5,), (2, 5)),
        ((5,), (2, 5), (2, 5)),
    ]:
        x, ctx = inputs(*xs), _context(c, *cs)
        z, ld = t(x, ctx)
        expected = batch if c else tuple(xs)
        assert z.shape == (*expected, d), (xs, cs)
        assert ld.shape == expected
        assert t.inverse(z, ctx).shape == (*expected, d)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name):
    t, c, inputs = build(name)
    t.train()
    x, ctx = inputs(32).requires_grad_(), _context(c, 32)
    z, ld = t(x, ctx)
    (0.5 * z.square().sum(-1) - ld).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in t.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_matches_nflows_on_identical_knot_parameters(inverse):
    g = torch.Generator().manual_seed(1)
    n, k, bound = 2000, 7, 3.0
    x = 4.0 * torch.randn(n, generator=g, dtype=torch.float64)  # ~ half outside the bound
    w, h = (2 * torch.randn(n, k, generator=g, dtype=torch.float64) for _ in range(2))
    d = 2 * torch.randn(n, k - 1, generator=g, dtype=torch.float64)
    ours, ours_ld = rational_quadratic_spline(x, w, h, d, bound=bound, inverse=inverse)
    theirs, theirs_ld = nflows_spline(x, w, h, d, inverse=inverse, tail_bound=bound)
    # nflows reports the inverse map's log-determinant; ours is always the forward one
    theirs_ld = -theirs_ld if inverse else theirs_ld
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert torch.allclose(ours_ld, theirs_ld, atol=1e-6, rtol=0)
    outside = x.abs() > bound
    assert 0.1 < outside.double().mean() < 0.9
    assert torch.equal(ours[outside], x[outside])  # linear (identity) tails


def test_bin_scale_multiplies_widths_and_heights_but_not_derivatives():
    g = torch.Generator().manual_seed(2)
    k, scale = 5, 0.25
    x = 2 * torch.randn(300, generator=g, dtype=torch.float64)
    p = 3 * torch.randn(300, 3 * k - 1, generator=g, dtype=torch.float64)
    factor = torch.cat([torch.full((2 * k,), scale), torch.ones(k - 1)]).double()
    scaled, plain = SplineMap(k, 3.0, scale), SplineMap(k, 3.0)
    for method in ("forward", "inverse"):
        y, ld = getattr(scaled, method)(x, p)
        y0, ld0 = getattr(plain, method)(x, p * factor)
        assert torch.equal(y, y0) and torch.equal(ld, ld0)
        assert not torch.allclose(y, getattr(plain, method)(x, p)[0])
    assert torch.equal(scaled.inverse_value(x, p), plain.inverse_value(x, p * factor))


@pytest.mark.parametrize("conditioner", ["mlp", "residual"])
def test_coupling_computes_spline_parameters_parameter_first_like_the_plain_layout(conditioner):
    """A spline coupling has its output layer write the parameters parameter-first (the
    layout the spline runs fastest in); the result equals the map on the plain output."""
    torch.manual_seed(3)
    t = Coupling(D, C, SplineMap(6, 2.0, 0.5), H, conditioner=conditioner).double()
    torch.nn.init.normal_(t.conditioner.output_layer.weight)
    x = 1.5 * torch.randn(7, 3, D, dtype=torch.float64)
    c = torch.randn(3, C, dtype=torch.float64)
    identity, transformed = t._parts(x)
    p = t._params(identity, c)  # (7, 3, n_transformed, params): the conditioner's own order
    want, want_ld = t.map.forward(transformed, p)
    z, ld = t(x, c)
    assert torch.allclose(t._parts(z)[1], want, atol=1e-12)
    assert torch.allclose(ld, want_ld.sum(-1), atol=1e-12)
    back, back_ld = t.map.inverse(t._parts(z)[1], p)
    assert torch.allclose(t.inverse(z, c), x, atol=1e-10)
    assert torch.allclose(t.inverse_and_log_det(z, c)[1], back_ld.sum(-1), atol=1e-12)
    assert torch.allclose(back, transformed, atol=1e-10)


def test_unknown_conditioner_is_named():
    with pytest.raises(FlowError, match=r"conditioner among \['mlp', 'residual'\].*'gru'"):
        Coupling(D, C, SplineMap(4), H, conditioner="gru")


def test_spline_is_continuous_at_the_bounds():
    p = [torch.randn(2, n, dtype=torch.float64) for n in (5, 5, 4)]
    eps = 1e-9
    for b in (-2.0, 2.0):
        x = torch.tensor([b - eps, b + eps], dtype=torch.float64)
        y, ld = rational_quadratic_spline(x, *p, bound=2.0)
        assert torch.allclose(y, x, atol=1e-8) and torch.allclose(
            ld, torch.zeros_like(ld), atol=1e-6
        )


def test_actnorm_initialises_from_first_training_batch_only():
    torch.manual_seed(0)
    t = ActNorm(2).double()
    x = torch.randn(500, 2, dtype=torch.float64) * torch.tensor([3.0, 0.5]) + 4.0
    t.eval()
    t(x)
    assert not t.initialized  # eval mode never initialises
    t.train()
    z, _ = t(x)
    assert t.initialized
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(0), torch.ones(2, dtype=torch.float64))
    before = t.shift.detach().clone()
    t(x + 10)
    assert torch.equal(t.shift, before)
    # the flag survives save and load, so a loaded model does not re-initialise
    fresh = ActNorm(2).double()
    fresh.load_state_dict(t.state_dict())
    fresh.train()
    fresh(x + 10)
    assert torch.equal(fresh.shift, before)
    # nor does one whose tensors were copied in place (as an EMA of the weights does)
    other = ActNorm(2).double()
    for mine, theirs in zip(other.state_dict().values(), t.state_dict().values()):
        mine.copy_(theirs)
    other.train()
    other(x + 10)
    assert torch.equal(other.shift, before)


def test_lu_linear_weight_has_the_stated_determinant():
    t = LULinear(4, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 4, dtype=torch.float64)
    z, ld = t(x)
    assert torch.allclose(z, x @ t.weight().T + t.bias)
    assert torch.allclose(ld, torch.linalg.slogdet(t.weight())[1].expand(3))


def test_invalid_permutation_and_scale_are_named():
    with pytest.raises(SbitkError, match=r"permutation of 0..2.*\[0, 0, 2\]"):
        Permutation(torch.tensor([0, 0, 2]))
    with pytest.raises(SbitkError, match="positive scales"):
        ElementwiseAffine(torch.zeros(2), torch.tensor([1.0, -1.0]))


def test_buffers_follow_dtype_and_module_state():
    t = Composite([ReversePermutation(3), LULinear(3), StandardizeTransform(3)]).double()
    names = dict(t.named_buffers())
    assert names["transforms.0.perm"].dtype == torch.long  # indices stay integers
    assert names["transforms.1.permutation"].dtype == torch.float64
    assert names["transforms.2.standardize.mean"].dtype == torch.float64


def test_lu_linear_can_start_at_a_random_rotation():
    t = LULinear(4, torch.Generator().manual_seed(0), identity_init=False).double()
    w = t.weight()
    assert torch.allclose(w @ w.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert not torch.allclose(w, torch.eye(4, dtype=torch.float64), atol=0.1)
    assert torch.equal(LULinear(3).weight(), torch.eye(3))


def test_bijection_transform_moves_its_own_copy_of_the_constants():
    bijection = LogitBijection(torch.zeros(2), torch.ones(2))
    t = BijectionTransform(StackBijection([bijection])).double()
    assert t.bijection.parts[0].low.dtype == torch.float64
    t.float()
    assert t.bijection.parts[0].low.dtype == torch.float32
    assert bijection.low.dtype == torch.float64  # the caller's bijection is untouched
    z, _ = t(torch.tensor([[0.5, 0.25]]))
    assert torch.allclose(z, torch.tensor([[0.0, -1.0986]]), atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_restores_the_transform(name):
    t, c, inputs = build(name)
    torch.manual_seed(123)  # a copy with different initial weights and random orders
    fresh = (BOUNDED[name]() if name in BOUNDED else TRANSFORMS[name][0]()).double().eval()
    fresh.load_state_dict(t.state_dict())
    x, ctx = inputs(16), _context(c, 16)
    z, ld = t(x, ctx)
    z2, ld2 = fresh(x, ctx)
    assert torch.equal(z, z2) and torch.equal(ld, ld2)
