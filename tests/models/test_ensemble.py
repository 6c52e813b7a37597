"""The ensemble against independent computations: its density is the equal mixture of its
members', its draws come from every member equally often, and the members take their own
defaults for a role."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.npe import NPE
from sbitk.models.ensemble import Ensemble
from sbitk.models.flows.nsf import NSF
from sbitk.simulation.priors import BoxUniform


def spread_out(model: Ensemble, gap: float = 10.0) -> Ensemble:
    """Gaussian members whose means sit ``gap`` apart (the output layer's bias)."""
    with torch.no_grad():
        for k, m in enumerate(model.members):
            last = [p for n, p in m.named_parameters() if n.endswith("bias")][-1]
            last.zero_()
            last[: m.config.features] = gap * k
    return model


def test_the_density_is_the_equal_mixture_of_the_members():
    torch.manual_seed(0)
    model = spread_out(
        Ensemble(2, 3, member="gaussian", members=3, options={"hidden_features": [8]})
    )
    c = torch.randn(5, 3)
    a = torch.randn(7, 5, 2) * 8
    parts = torch.stack([m(c).log_prob(a) for m in model.members])
    # independent: log of the mean of the members' densities, in float64
    expected = (parts.double().exp().mean(0)).log()
    got = model(c).log_prob(a).double()
    finite = expected.isfinite()
    assert finite.float().mean() > 0.9
    assert torch.allclose(got[finite], expected[finite], atol=1e-5)


def test_draws_come_from_every_member_equally_often():
    torch.manual_seed(0)
    model = spread_out(
        Ensemble(1, 1, member="gaussian", members=4, options={"hidden_features": [8]})
    )
    draws = model(torch.zeros(3, 1)).sample((8000,))  # (n, 3, 1)
    member = (draws / 10).round().clamp(0, 3).long()
    shares = torch.stack([(member == k).float().mean() for k in range(4)])
    # each share 1/4 within 5 standard errors of a multinomial share over 24,000 draws
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=5 * math.sqrt(0.25 * 0.75 / 24000))
    # and every context mixes: the draws of one context are not all from one member
    assert all(len(member[:, b].unique()) == 4 for b in range(3))


def test_each_member_draws_only_the_rows_that_picked_it_in_a_random_order():
    torch.manual_seed(1)
    model = spread_out(
        Ensemble(1, 1, member="gaussian", members=3, options={"hidden_features": [8]}), gap=30
    ).double()  # float64: no two of float32's draws around 60 coincide by rounding
    # two contexts whose members differ (their means 30 apart, moved by up to 1.5 by the
    # context; their spreads from 0.4 to 1.8, each different at the two contexts)
    dist = model(torch.tensor([[0.0], [3.0]], dtype=torch.float64))
    own = torch.stack([p.sample((20000,)) for p in dist.parts])[..., 0]  # (3, 20000, 2)
    asked = []
    for part in dist.parts:
        part.sample = lambda shape, own=part.sample: asked.append(shape[0]) or own(shape)
    n = 9000
    draws = dist.sample((n,))[..., 0]  # (n, 2)
    # the most any member is picked for one of 2 contexts: n/3 plus a few standard deviations
    sd = math.sqrt(n * (1 / 3) * (2 / 3))
    assert len(asked) == 3 and all(abs(m - n / 3) < 4 * sd for m in asked)
    member = (draws / 30).round().clamp(0, 2).long()
    # no member's draw is used twice: every row of a context is a draw of its own
    assert all(draws[:, b].unique().numel() == n for b in range(2))
    # the order is random: consecutive rows of a context, and the two contexts' rows, pick
    # the same member a third of the time
    agree = [member[1:, b] == member[:-1, b] for b in range(2)] + [member[:, 0] == member[:, 1]]
    assert all(abs(a.double().mean() - 1 / 3) < 5 * math.sqrt(2 / 9 / n) for a in agree)
    # each context's draws of member k follow member k at that context (not the other's)
    for b in range(2):
        for k in range(3):
            mine, ref = draws[member[:, b] == k, b], own[k, :, b]
            assert abs(mine.mean() - ref.mean()) < 5 * ref.std() / math.sqrt(len(mine))
            assert abs(mine.std() - ref.std()) < 0.1 * ref.std()


def test_the_members_take_their_own_role_defaults():
    model = Ensemble(2, 3, role="posterior", box=True, members=2)
    expected = NSF(2, 3, **NSF.role_options("posterior", True)).config
    assert all(m.config == expected for m in model.members)
    npe = NPE(BoxUniform(-1.0, 1.0, dim=2), "ensemble", members=2)
    npe.fit(torch.rand(50, 2) * 2 - 1, torch.randn(50, 3))  # builds through the role
    assert npe._options() == {"role": "posterior", "box": True, "members": 2}


@pytest.mark.parametrize("member", ["flow_matching", "diffusion", "nsf"])
def test_the_members_train_on_their_own_training_defaults_and_given_settings_win(member):
    from sbitk.inference.training import TrainConfig
    from sbitk.models.registry import get_estimator

    hook = getattr(get_estimator(member), "train_defaults", None)
    own = hook() if hook else {}
    if member == "nsf":
        assert own == {}  # the engine's size-dependent rule: batches of 512 on 90 rows
    g = torch.Generator().manual_seed(0)
    theta, x = torch.rand(100, 2, generator=g) * 2 - 1, torch.randn(100, 3, generator=g)
    prior = BoxUniform(-1.0, 1.0, dim=2)
    options = {"members": 2, "options": {"hidden_features": [8, 8]}}
    for given in ({}, {"batch_size": 32, "learning_rate": 1e-4}):
        config = TrainConfig(progress=False, max_epochs=1, **given)
        npe = NPE(prior, "ensemble", config=config, member=member, **options)
        npe.fit(theta, x)
        history = npe.history
        assert history.batch_size == given.get("batch_size", own.get("batch_size", 512))
        rate = given.get("learning_rate", own.get("learning_rate", 2e-3))
        assert history.learning_rate == [pytest.approx(rate)]


def test_bad_options_are_refused_by_name():
    with pytest.raises(SbitkError, match="members >= 1"):
        Ensemble(2, 1, members=0)
    with pytest.raises(SbitkError, match="samples only"):
        Ensemble(2, 1, member="gan")
    with pytest.raises(SbitkError, match="cannot be ensembles"):
        Ensemble(2, 1, member="ensemble")
    with pytest.raises(SbitkError, match="estimator 'nsf' has no option 'wings'"):
        Ensemble(2, 1, options={"wings": 2})
    with pytest.raises(SbitkError, match="unexpected keyword"):
        Ensemble(2, 1, wings=2)


def test_the_defaults_are_decided_in_one_place_and_read_by_api_and_cli():
    from click.testing import CliRunner

    from sbitk.cli import main
    from sbitk.inference.nle import NLE
    from sbitk.models.registry import DEFAULT_ESTIMATORS

    prior = BoxUniform(-1.0, 1.0, dim=2)
    assert NPE(prior).estimator == DEFAULT_ESTIMATORS["posterior"] == "ensemble"
    assert NLE(prior).estimator == DEFAULT_ESTIMATORS["likelihood"] == "nsf"
    for command in ("train", "run"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
        assert "posterior: ensemble, likelihood: nsf" in text


@pytest.mark.parametrize(
    ("member", "context", "options"),
    [
        ("nsf", 4, {}),  # spline couplings with gated residual conditioners: stacked
        ("nsf", 0, {}),  # the same without a context (ungated conditioners)
        ("nsf", 4, {"embedding": {"type": "mlp", "out_features": 3, "hidden_features": [8]}}),
        ("nsf", 4, {"conditioner": "mlp"}),  # couplings that run member by member
        ("maf", 4, {}),  # no coupling at all: every transform member by member
    ],
)
def test_members_evaluated_together_give_each_members_loss_and_gradient(member, context, options):
    """The ensemble's one-pass loss (``summed_loss``) against its members' own losses, summed:
    equal to float64 rounding, and so are the gradients of every member's weights. All weights
    are drawn at random first, so that no part of a network (a block that starts near zero, a
    gate) can be left out unnoticed."""
    torch.manual_seed(0)
    model = Ensemble(3, context, member=member, members=3, options=options).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    a = torch.randn(64, 3, dtype=torch.float64)
    c = torch.randn(64, context, dtype=torch.float64) if context else None
    members = list(model.members)
    together = type(members[0]).summed_loss(members, a, c)
    assert together is not None
    one_by_one = sum(m.loss(a, c) for m in members)
    assert torch.allclose(together, one_by_one, rtol=1e-10, atol=1e-10)
    params = list(model.parameters())
    expected = torch.autograd.grad(one_by_one.sum(), params)
    got = torch.autograd.grad(model.loss(a, c).sum(), params)
    pairs = zip(got, expected, strict=True)
    assert all(torch.allclose(g, e, rtol=1e-9, atol=1e-10) for g, e in pairs)


def test_flows_that_differ_have_a_loss_of_their_own_or_get_wider_rows_are_not_stacked():
    flows = [NSF(2, 3, transforms=2), NSF(2, 3, transforms=3)]
    a, c = torch.randn(5, 2), torch.randn(5, 3)
    assert NSF.summed_loss(flows, a, c) is None
    alike = [NSF(2, 3, transforms=2) for _ in range(2)]
    assert NSF.summed_loss(alike, a.expand(4, 5, 2), c) is None
    assert NSF.summed_loss(alike, a[:, :1], c) is None  # left to the flows' own check
    assert NSF.summed_loss(alike, a, c) is not None
    with pytest.raises(SbitkError, match="last dimension 2"):
        Ensemble(2, 3, members=2).loss(a[:, :1], c)

    class Penalised(NSF):  # a loss of its own, which one pass would leave out
        def loss(self, inputs, context=None):
            return super().loss(inputs, context) + 1.0

    assert Penalised.summed_loss([Penalised(2, 3, transforms=2) for _ in range(2)], a, c) is None
