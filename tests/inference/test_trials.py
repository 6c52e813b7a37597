"""i.i.d. trials: simulators declare them, training batches permute them, held-out rows do not;
or NPE sorts them."""

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
from sbitk.simulation.simulator import sort_trials, trial_blocks


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
    whole = {} if cls is NPE else {"per_trial": False}  # NLE would model one trial at a time
    cls(Normal(0.0, 1.0, dim=1), model, config=config, trials=[(0, 3, 1)], **whole).fit(theta, x)
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
    cls(Normal(0.0, 1.0, dim=1), model, config=config, trials=False, **whole).fit(theta, x)
    assert all(tuple(r) in rows for b in model.seen for r in b[side].tolist())


def test_sorting_trials_orders_whole_trials_by_their_values_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 9, generator=g)  # a scalar, then 4 trials of 2
    x[:100, 3] = x[:100, 1]  # ties in the first value, broken by the second
    y = sort_trials(x, [(1, 4, 2)])
    assert torch.equal(y[:, 0], x[:, 0])
    trials, before = y[:, 1:].reshape(300, 4, 2), x[:, 1:].reshape(300, 4, 2)
    assert sorted(map(tuple, trials[7].tolist())) == sorted(map(tuple, before[7].tolist()))
    assert (trials[:, 1:, 0] >= trials[:, :-1, 0]).all()
    tied = trials[:100, 1:, 0] == trials[:100, :-1, 0]
    assert tied.sum() >= 100 and (trials[:100, 1:, 1] >= trials[:100, :-1, 1])[tied].all()
    # every order of the trials sorts to the same row
    for order in ([3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1]):
        shuffled = torch.cat([x[:, :1], before[:, order].flatten(1)], 1)
        assert torch.equal(sort_trials(shuffled, [(1, 4, 2)]), y)


def test_npe_can_sort_the_trials_in_training_and_in_the_posterior():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(400, 1, generator=g)
    x = theta + torch.randn(400, 3, generator=g)  # three trials of one value
    model = recording(1, 3)
    config = TrainConfig(progress=False, max_epochs=2, batch_size=100)
    npe = NPE(Normal(0.0, 1.0, dim=1), model, config=config, trials=[(0, 3, 1)],
              trial_order="sort")  # fmt: skip
    posterior = npe.fit(theta, x)
    assert npe.trial_order == "sort" and posterior.sorted_trials == ((0, 3, 1),)
    seen = torch.cat([b[2] for b in model.seen])
    assert len(seen) == 2 * 400  # no extra versions of the held-out rows
    assert {tuple(r) for r in seen.tolist()} == {tuple(sorted(r)) for r in x.tolist()}
    x_o = torch.tensor([0.3, -1.0, 2.0])
    draws = posterior.sample(50, x=x_o, seed=1)
    assert torch.equal(posterior.sample(50, x=x_o[[2, 0, 1]], seed=1), draws)
    lp = posterior.log_prob(draws, x=x_o)
    assert torch.equal(posterior.log_prob(draws, x=x_o[[1, 2, 0]]), lp)
    with pytest.raises(SbitkError, match="trial_order must be one of"):
        NPE(Normal(0.0, 1.0, dim=1), trial_order="shuffle")
    with pytest.raises(SbitkError, match="variable_trials permutes"):
        NPE(Normal(0.0, 1.0, dim=1), trial_order="sort", variable_trials=True)


def test_fitting_from_a_bank_reads_the_trials_of_its_simulator():
    bank = sbitk.simulate("slcp", 300, seed=0, workers=1, progress=False)
    npe = NPE(estimator="gaussian", config=TrainConfig(progress=False, max_epochs=1))
    npe.fit(bank)
    assert npe.trials == [(0, 4, 2)]
    with pytest.raises(SbitkError, match="do not fit x"):
        NPE(bank.prior, "gaussian", trials=[(6, 4, 2)], config=npe.config).fit(bank.theta, bank.x)


def _trials_data(n=400, seed=0):
    """θ ~ N(0, I₂) and x of 3 i.i.d. trials x_t = θ + 0.5 ε_t, flat (n, 6)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    x = theta[:, None, :] + 0.5 * torch.randn(n, 3, 2, generator=g)
    return theta, x.reshape(n, 6)


def test_nle_learns_one_trial_from_every_trial_and_holds_out_whole_simulations():
    theta, x = _trials_data()
    model = recording(2, 2)
    config = TrainConfig(progress=False, max_epochs=2, batch_size=100)
    nle = NLE(Normal(0.0, 1.0, dim=2), model, config=config, trials=[(0, 3, 2)])
    posterior = nle.fit(theta, x)
    likelihood = posterior.likelihood
    assert nle.trial_count == 3 and likelihood.trials == 3 and likelihood.x_dim == 6
    assert posterior.absent_columns == ()  # NLE takes x whole: the readers allow no gaps
    pairs = {(tuple(th), tuple(xt)) for th, r in zip(theta.tolist(), x.tolist(), strict=True)
             for xt in (r[:2], r[2:4], r[4:])}  # fmt: skip

    def rows(batches):
        return {(tuple(c), tuple(a)) for _, inputs, context in batches
                for a, c in zip(inputs.tolist(), context.tolist(), strict=True)}  # fmt: skip

    train = rows(b for b in model.seen if b[0])
    held = rows(b for b in model.seen if not b[0])
    assert train | held == pairs and len(held) == 120  # 40 simulations, 3 trials each
    assert not {c for c, _ in train} & {c for c, _ in held}  # no simulation on both sides

    x_o, th = x[0], theta[:5]
    by_hand = sum(model(th).log_prob(x_o[2 * t : 2 * t + 2].expand(5, 2)) for t in range(3))
    assert torch.allclose(likelihood.log_prob(x_o, th), by_hand)
    draws = likelihood.sample(20_000, theta[7:9], seed=0).reshape(20_000, 2, 3, 2)
    with torch.no_grad():
        ref = model(theta[7:9]).sample((20_000,))[:, :, None]  # one trial per θ, by the model
    se = (2 / 20_000) ** 0.5 * ref.std(0)
    assert ((draws.mean(0) - ref.mean(0)).abs() < 4 * se).all()  # each θ, trial and value
    r = torch.corrcoef(draws[:, 0, :, 0].T)  # the trials of a draw are independent
    assert (r - torch.eye(3)).abs().max() < 4 / 20_000**0.5


def test_per_trial_needs_x_to_be_nothing_but_trials():
    theta, x = _trials_data(100)
    config = TrainConfig(progress=False, max_epochs=1)
    with pytest.raises(SbitkError, match="per_trial=True needs x to be nothing but"):
        NLE(Normal(0.0, 1.0, dim=2), "gaussian", config=config, trials=[(2, 2, 2)],
            per_trial=True).fit(theta, x)  # fmt: skip
    with pytest.raises(SbitkError, match="per_trial must be True, False or None"):
        NLE(Normal(0.0, 1.0, dim=2), per_trial="yes")
    nle = NLE(Normal(0.0, 1.0, dim=2), "gaussian", config=config, trials=[(2, 2, 2)])
    assert nle.fit(theta, x).likelihood.trials == 1 and nle.trial_count == 1  # x kept whole
    nle.trials = [(0, 3, 2)]  # a streamed chunk may hold no rows (none finished, or all invalid)
    assert [t.shape for t in nle._pair(theta[:0], x[:0])] == [(0, 2), (0, 2)]


def test_npe_learns_through_a_set_embedding_of_the_trials_and_keeps_it_in_its_file(tmp_path):
    from sbitk.io.modelfile import load_model, read_metadata, save_model

    theta, x = _trials_data(n=2000)
    set_net = {"type": "set", "out_features": 8, "trials": 3, "hidden_features": [32],
               "summary": 8}  # fmt: skip
    config = TrainConfig(progress=False, max_epochs=300, seed=0)
    members = {"transforms": 2, "hidden_features": [32], "embedding": set_net}
    npe = NPE(Normal(0.0, 1.0, dim=2), "ensemble", members=2, options=members, config=config)
    posterior = npe.fit(theta, x)
    x_o = torch.tensor([0.5, -0.3, 0.9, 0.1, 0.2, -0.6])
    swapped = x_o.reshape(3, 2)[[2, 0, 1]].reshape(6)
    draws = posterior.sample(4000, x=x_o, seed=0)
    # The posterior of θ given 3 trials of θ + 0.5 ε: mean 3·mean(x)/(3 + 0.25), sd 0.277.
    # Measured over training seeds 0-2: means within 0.035, sds within 0.06 (one trial's
    # information would give 0.447), log-densities at swapped trials within 0.04.
    exact = 3 * x_o.reshape(3, 2).mean(0) / 3.25
    assert torch.allclose(draws.mean(0), exact, atol=0.08), (draws.mean(0), exact)
    assert torch.allclose(draws.std(0), torch.full((2,), 0.5 / 3.25**0.5), atol=0.1)
    th = draws[:20]
    # Blind to the trials' order up to the z-scoring, whose statistics differ by column.
    gap = (posterior.log_prob(th, x=x_o) - posterior.log_prob(th, x=swapped)).abs().max()
    assert gap < 0.1, gap
    path = tmp_path / "set.safetensors"
    save_model(path, posterior)
    member = read_metadata(path)["estimator"]["config"]["options"]["embedding"]
    assert (member["type"], member["trials"]) == ("set", 3)
    assert posterior.estimator.members[0].config.embedding["in_features"] == 6
    assert torch.equal(load_model(path).log_prob(th, x=x_o), posterior.log_prob(th, x=x_o))


def test_npe_with_variable_trials_takes_any_number_of_them_and_keeps_that_in_its_file(tmp_path):
    from sbitk.io.modelfile import load_model, read_metadata, save_model

    theta, x = _trials_data(n=2000)
    config = TrainConfig(progress=False, seed=0)
    npe = NPE(Normal(0.0, 1.0, dim=2), "nsf", trials=[(0, 3, 2)], variable_trials=True,
              transforms=2, hidden_features=[32], config=config)  # fmt: skip
    posterior = npe.fit(theta, x)
    nan = float("nan")
    x_o = torch.tensor([0.5, -0.3, 0.9, 0.1, 0.2, -0.6])
    first = torch.tensor([0.5, -0.3, nan, nan, nan, nan])  # one trial, wherever it lies
    middle = torch.tensor([nan, nan, 0.5, -0.3, nan, nan])
    # θ given k trials of θ + 0.5 ε: mean k·mean(x)/(k + 0.25), sd 0.5/√(k + 0.25) (0.447 for
    # one trial, 0.277 for three). Over training seeds 0-5 the means were within 0.09 and the
    # sds within 0.051 for k = 1 and 3, and the log-densities at one trial in two places within
    # 0.11.
    for x_k, k in ((x_o, 3), (first, 1)):
        draws = posterior.sample(4000, x=x_k, seed=0)
        exact = k * x_k.reshape(3, 2).nanmean(0) / (k + 0.25)
        assert torch.allclose(draws.mean(0), exact, atol=0.12), (k, draws.mean(0), exact)
        sd = torch.full((2,), 0.5 / (k + 0.25) ** 0.5)
        assert torch.allclose(draws.std(0), sd, atol=0.07), (k, draws.std(0), sd)
    th = posterior.sample(20, x=first, seed=1)
    gap = (posterior.log_prob(th, x=first) - posterior.log_prob(th, x=middle)).abs().max()
    assert gap < 0.15, gap
    for bad, message in (
        ([0.5, nan, 0.9, 0.1, 0.2, -0.6], r"row 1: x\[0\] is given while the rest of its trial"),
        ([nan] * 6, r"row 1 leaves out all 3 trials of x\[0\] to x\[5\]"),
        ([0.5, -0.3, float("inf"), 0, 0, 0], r"row 1: x\[2\] is infinite"),
    ):
        with pytest.raises(SbitkError, match=message):
            posterior.sample(10, x=torch.tensor(bad))
    path = tmp_path / "variable.safetensors"
    save_model(path, posterior)
    assert read_metadata(path)["missing_trials"] == [0, 3, 2]
    assert torch.equal(load_model(path).log_prob(th, x=first), posterior.log_prob(th, x=first))
    _sample_absent_trials_from_the_command_line(path, tmp_path)


def _sample_absent_trials_from_the_command_line(path, tmp_path):
    """``sbitk sample`` reads absent trials as empty cells, and ``inspect`` says it may."""
    import arviz as az
    from click.testing import CliRunner

    from sbitk.cli import main

    (tmp_path / "obs.csv").write_text(
        "x[0],x[1],x[2],x[3],x[4],x[5]\n0.5,-0.3,0.9,0.1,0.2,-0.6\n,,0.5,-0.3,,\n"
    )
    (tmp_path / "partial.csv").write_text("x[0],x[1],x[2],x[3],x[4],x[5]\n0.5,,,,1,1\n")
    runner, out = CliRunner(), tmp_path / "out.nc"
    args = ["sample", str(path), "--observed", str(tmp_path / "obs.csv"), "-n", "4000", "-o"]
    result = runner.invoke(main, [*args, str(out)])
    assert result.exit_code == 0, result.output
    draws = az.from_netcdf(out).posterior["theta"].values.reshape(4000, 2, 2)
    for b, (x_k, k) in enumerate((([0.5, -0.3, 0.9, 0.1, 0.2, -0.6], 3), ([0.5, -0.3], 1))):
        exact = k * torch.tensor(x_k).reshape(k, 2).mean(0) / (k + 0.25)
        assert torch.allclose(torch.as_tensor(draws[:, b].mean(0)), exact, atol=0.12)
    result = runner.invoke(
        main, [*args[:3], str(tmp_path / "partial.csv"), *args[4:], str(tmp_path / "p.nc")]
    )
    assert result.exit_code == 2 and "x[0] is given while the rest of its trial" in result.output
    result = runner.invoke(main, ["inspect", str(path)])
    assert "absent trials: x may leave out whole trials of its 3" in result.output


def test_variable_trials_need_one_block_of_trials_and_an_estimator_that_takes_them():
    theta, x = _trials_data(n=100)
    config = TrainConfig(progress=False, max_epochs=1)
    with pytest.raises(SbitkError, match="needs x to hold one block of at least 2"):
        NPE(Normal(0.0, 1.0, dim=2), "nsf", variable_trials=True, config=config).fit(theta, x)
    with pytest.raises(SbitkError, match="offers no trial_options"):
        NPE(Normal(0.0, 1.0, dim=2), "gaussian", trials=[(0, 3, 2)], variable_trials=True,
            config=config).fit(theta, x)  # fmt: skip
    ensemble = NPE(Normal(0.0, 1.0, dim=2), "ensemble", trials=[(0, 3, 2)], members=2,
                   variable_trials=True, config=config)._build(2, 6)  # fmt: skip
    assert all(m.embedding.missing and m.embedding.trials == 3 for m in ensemble.members)
    fixed = NPE(Normal(0.0, 1.0, dim=2), "gaussian", config=config).fit(theta, x)
    with pytest.raises(SbitkError, match="x must be finite, found NaN"):
        fixed.sample(10, x=torch.tensor([0.5, -0.3] + [float("nan")] * 4))


def test_the_command_line_sorts_the_trials_of_its_bank_on_request(tmp_path):
    """``sbitk train -O trial_order=sort`` on a bank whose simulator declares trials: the model
    file records the sorted block, ``inspect`` says so, and the posterior ignores their order."""
    from click.testing import CliRunner

    from sbitk.cli import main
    from sbitk.io.modelfile import load_model

    runner, bank, model = CliRunner(), tmp_path / "slcp.zarr", tmp_path / "m.safetensors"
    args = ["simulate", "slcp", "-n", "300", "-o", str(bank), "--seed", "0", "--workers", "1"]
    assert runner.invoke(main, args).exit_code == 0
    args = ["train", str(bank), "-o", str(model), "--estimator", "gaussian", "--max-epochs", "2"]
    result = runner.invoke(main, [*args, "-O", "trial_order=sort"])
    assert result.exit_code == 0, result.output
    inspected = runner.invoke(main, ["inspect", str(model)]).output
    assert "sorted trials: the estimator sees x's 4 i.i.d. trials (x[0,0] to x[3,1])" in inspected
    posterior = load_model(model)
    assert posterior.sorted_trials == ((0, 4, 2),)
    x_o = torch.tensor([0.5, -0.3, 0.9, 0.1, 0.2, -0.6, 1.0, 1.5])
    swapped = x_o.reshape(4, 2)[[2, 3, 0, 1]].flatten()
    draws = posterior.sample(20, x=x_o, seed=0)
    assert torch.equal(posterior.sample(20, x=swapped, seed=0), draws)
    result = runner.invoke(main, [*args, "--force", "-O", "trial_order=random"])
    assert result.exit_code == 2 and "trial_order must be one of" in result.output
