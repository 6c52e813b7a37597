"""i.i.d. trials: simulators declare them, training batches permute them, held-out rows do not."""

import pytest
import torch

import sbitk
from sbitk.errors import SbitkError, SimulatorError
from sbitk.inference.data import permute_trials
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.simulation.priors import Normal
from sbitk.simulation.simulator import trial_blocks


class Recording(ConditionalGaussian):
    """A Gaussian estimator that keeps the batches its loss saw, in training and evaluation."""

    def loss(self, inputs, context=None):
        self.seen.append((self.training, inputs.detach().clone(), context.detach().clone()))
        return super().loss(inputs, context)


def recording(features, context):
    model = Recording(features, context)
    model.seen = []
    return model


def test_a_simulator_declares_trials_and_describes_where_they_lie():
    sim = sbitk.get_simulator("slcp")
    assert sim.trials == ("x",) and sim.describe()["trials"] == ["x"]
    assert trial_blocks(sim.describe()) == [(0, 4, 2)]
    for trials in ("y", "s"):  # no such output; a scalar has no trials
        with pytest.raises(SimulatorError, match=f"trials names '{trials}'"):
            sbitk.simulator("bad_trials", parameters={"a": Normal(0.0, 1.0)},
                            outputs={"s": (), "x": (3, 2)}, trials=(trials,),
                            register=False)(lambda t, g: t)  # fmt: skip


def test_permuting_trials_reorders_whole_trials_and_nothing_else():
    torch.manual_seed(0)
    x = torch.arange(9.0).repeat(500, 1)  # a scalar, then 4 trials of 2
    y = permute_trials(x, [(1, 4, 2)])
    assert torch.equal(x, torch.arange(9.0).repeat(500, 1))  # the input is left alone
    assert torch.equal(y[:, 0], x[:, 0])
    trials = y[:, 1:].reshape(500, 4, 2)
    assert torch.equal(trials[..., 1] - trials[..., 0], torch.ones(500, 4))  # whole trials
    assert torch.equal(trials[..., 0].sort(-1).values, torch.tensor([1.0, 3, 5, 7]).expand(500, 4))
    # every one of the 24 orders, each about 500/24 = 21 times (the fewest: well above 5)
    orders = {tuple(r) for r in trials[..., 0].tolist()}
    assert len(orders) == 24


@pytest.mark.parametrize("cls", [NPE, NLE])
def test_training_batches_see_permuted_trials_and_held_out_rows_fixed_versions(cls):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(400, 1, generator=g)
    x = theta + torch.randn(400, 3, generator=g)  # three trials of one value
    shape = (1, 3) if cls is NPE else (3, 1)
    model = recording(*shape)
    config = TrainConfig(progress=False, max_epochs=2, batch_size=100)
    cls(Normal(0.0, 1.0, dim=1), model, config=config, trials=[(0, 3, 1)]).fit(theta, x)
    side = 2 if cls is NPE else 1
    rows = {tuple(r) for r in x.tolist()}
    as_sets = {tuple(sorted(r)) for r in x.tolist()}
    train = torch.cat([b[side] for b in model.seen if b[0]])
    # one held-out batch per epoch: 40 rows in 6 versions (as many as 3 trials have orders)
    assert {tuple(sorted(r)) for r in train.tolist()} <= as_sets
    assert sum(tuple(r) not in rows for r in train.tolist()) > len(train) // 2  # 5 of 6 orders
    held = [b[side] for b in model.seen if not b[0]]
    assert [h.shape[0] for h in held] == [240, 240] and torch.equal(held[0], held[1])
    assert all(tuple(r) in rows for r in held[0][:40].tolist())  # the originals first
    assert {tuple(sorted(r)) for r in held[0].tolist()} <= as_sets
    model.seen.clear()
    cls(Normal(0.0, 1.0, dim=1), model, config=config, trials=False).fit(theta, x)
    assert all(tuple(r) in rows for b in model.seen for r in b[side].tolist())


def test_fitting_from_a_bank_reads_the_trials_of_its_simulator():
    bank = sbitk.simulate("slcp", 300, seed=0, workers=1, progress=False)
    npe = NPE(estimator="gaussian", config=TrainConfig(progress=False, max_epochs=1))
    npe.fit(bank)
    assert npe.trials == [(0, 4, 2)]
    with pytest.raises(SbitkError, match="do not fit x"):
        NPE(bank.prior, "gaussian", trials=[(6, 4, 2)], config=npe.config).fit(bank.theta, bank.x)
