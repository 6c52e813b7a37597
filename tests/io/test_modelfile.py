"""Model files: round trips, and refusals of truncated, corrupted, edited or foreign files."""

import json
import os
import pickle
import struct

import pytest
import torch

from sbitk.errors import ModelFileError, SbitkError
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.io.modelfile import FORMAT_VERSION, load_model, read_metadata, save_model
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.posteriors.direct import DirectPosterior
from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.priors import BoxUniform, LogNormal, Normal, Product

QUICK = TrainConfig(progress=False, max_epochs=3, batch_size=256)
PRIOR = Product([BoxUniform([-1.0, 0.0], [1.0, 2.0]), LogNormal(0.0, 0.5)])


def data(n=1000):
    g = torch.Generator().manual_seed(0)
    theta = PRIOR.sample(n, g)
    x = torch.cat([theta[:, :2], theta[:, 2:].log()], -1) + 0.2 * torch.randn(n, 3, generator=g)
    return theta, x


@pytest.fixture(scope="module")
def npe_posterior():
    theta, x = data()
    return NPE(
        PRIOR,
        "nsf",
        config=QUICK,
        parameter_names=["a", "b", "scale"],
        output_names=["u", "v", "w"],
        simulator_name="toy",
        transforms=2,
        hidden_features=(16,),
    ).fit(theta, x)


@pytest.fixture
def saved(tmp_path, npe_posterior):
    path = tmp_path / "model.safetensors"
    save_model(path, npe_posterior)
    return path


def header_of(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw, n


def rewrite(path, edit):
    """Edit the sbitk JSON inside the safetensors header, keeping the file well-formed."""
    header, raw, n = header_of(path)
    meta = json.loads(header["__metadata__"]["sbitk"])
    edit(meta)
    header["__metadata__"]["sbitk"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def test_npe_round_trip_gives_identical_log_prob_and_samples(saved, npe_posterior):
    loaded = load_model(saved)
    assert isinstance(loaded, DirectPosterior)
    xo = torch.tensor([[0.1, 1.0, 0.2], [0.5, 0.5, -0.3]])
    theta = npe_posterior.sample(50, x=xo, seed=0)
    assert torch.equal(loaded.log_prob(theta, x=xo), npe_posterior.log_prob(theta, x=xo))
    assert torch.equal(loaded.sample(50, x=xo, seed=0), theta)
    assert loaded.parameter_names == ["a", "b", "scale"]
    assert loaded.output_names == ["u", "v", "w"]
    assert loaded.simulator_name == "toy"
    assert loaded.prior == PRIOR
    meta = read_metadata(saved)
    assert meta["role"] == "npe" and meta["estimator"]["name"] == "nsf"
    assert meta["format_version"] == FORMAT_VERSION and meta["sbitk_version"]
    assert meta["training"]["epochs"] == npe_posterior.history.epochs
    assert len(meta["training"]["val_loss"]) == npe_posterior.history.epochs
    assert meta["training"]["rows"]["n_rows"] == 1000
    # Saving what was loaded gives the same file content (training summary included).
    again = saved.with_name("again.safetensors")
    save_model(again, loaded)
    assert read_metadata(again) == meta


def test_nle_round_trip_gives_identical_likelihood_and_mcmc_settings(tmp_path):
    theta, x = data()
    mcmc = MCMCConfig(num_chains=16, warmup=5, sir_candidates=100, progress=False)
    posterior = NLE(PRIOR, "gaussian", config=QUICK, mcmc=mcmc).fit(theta, x)
    path = tmp_path / "nle.safetensors"
    save_model(path, posterior)
    loaded = load_model(path)
    assert isinstance(loaded, MCMCPosterior) and loaded.config == mcmc
    xo = torch.tensor([0.1, 1.0, 0.2])
    th = PRIOR.sample(20, torch.Generator().manual_seed(1))
    assert torch.equal(loaded.log_prob(th, x=xo), posterior.log_prob(th, x=xo))
    assert torch.equal(loaded.sample(32, x=xo, seed=0), posterior.sample(32, x=xo, seed=0))
    # A bare likelihood saves too, and loads as its posterior.
    save_model(tmp_path / "lik.safetensors", posterior.likelihood)
    assert isinstance(load_model(tmp_path / "lik.safetensors").likelihood, SurrogateLikelihood)


def test_truncated_files_are_refused(saved):
    raw = saved.read_bytes()
    for cut in (4, 100, len(raw) // 2, len(raw) - 1):
        saved.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match="not a readable safetensors file"):
            load_model(saved)


def test_corrupted_weights_are_refused_by_the_checksum(saved):
    raw = bytearray(saved.read_bytes())
    raw[-10] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(saved)


def test_corrupted_header_bytes_are_refused(saved):
    raw = bytearray(saved.read_bytes())
    raw[20] = ord("{")
    saved.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError):
        load_model(saved)


def test_hand_edited_metadata_is_refused(saved):
    rewrite(saved, lambda m: m.update(simulator_name="other"))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(saved)


def test_an_edit_that_fixes_the_checksum_is_still_checked_against_the_estimator(saved):
    from sbitk.io import modelfile

    def edit(meta):
        meta["estimator"]["config"]["hidden_features"] = [32]
        del meta["checksum"]
        _, tensors = modelfile._read_header(saved)
        meta["checksum"] = modelfile._checksum(meta, tensors)

    rewrite(saved, edit)
    with pytest.raises(ModelFileError, match="expects"):
        load_model(saved)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_version_1_spline_files_load_with_unscaled_bins_and_mlp_conditioners(
    tmp_path, autoregressive
):
    """Format 1 predates ``bin_scale`` and ``conditioner``: its splines read the bins unscaled
    (a factor of 1) and its couplings have plain MLP conditioners."""
    from sbitk.io import modelfile
    from sbitk.models.flows import NSF

    old = {"bin_scale": 1.0} if autoregressive else {"bin_scale": 1.0, "conditioner": "mlp"}
    options = {"transforms": 2, "hidden_features": (16,), "autoregressive": autoregressive}
    flow = NSF(3, 3, **options, **old)
    torch.nn.init.normal_(next(flow.parameters()))
    path = tmp_path / "v1.safetensors"
    save_model(path, DirectPosterior(flow, PRIOR))

    def as_version_1(meta):
        meta["format_version"] = 1
        for key in old:
            del meta["estimator"]["config"][key]
        del meta["checksum"]
        _, tensors = modelfile._read_header(path)
        meta["checksum"] = modelfile._checksum(meta, tensors)

    rewrite(path, as_version_1)
    assert {k: read_metadata(path)["estimator"]["config"].get(k) for k in old} == old
    loaded = load_model(path)
    assert {k: getattr(loaded.estimator.config, k) for k in old} == old
    xo, theta = torch.tensor([0.1, 1.0, 0.2]), torch.tensor([[0.3, 1.2, 0.5]])
    expected = DirectPosterior(flow, PRIOR).log_prob(theta, x=xo)
    assert torch.equal(loaded.log_prob(theta, x=xo), expected)
    if autoregressive:  # the same weights read with this version's bin scale: another density
        new = NSF(3, 3, **options)
        new.load_state_dict(flow.state_dict())
        assert not torch.equal(DirectPosterior(new, PRIOR).log_prob(theta, x=xo), expected)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m.update(format_version=FORMAT_VERSION + 1),
            f"format version {FORMAT_VERSION + 1} .* upgrade",
        ),
        (lambda m: m.update(format_version=0), "format version 0 is no longer supported"),
        (lambda m: m.update(format_version="1"), "format_version must be an integer"),
        (lambda m: m.pop("prior"), "lacks the field 'prior'"),
        (lambda m: m.update(role="ratio"), "role must be 'npe' or 'nle'"),
        (lambda m: m.update(format="other"), "format must be 'sbitk-model'"),
        (lambda m: m.update(parameter_names="a"), "parameter_names' must be list"),
    ],
)
def test_schema_and_version_violations_say_what_is_wrong(saved, edit, message):
    rewrite(saved, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(saved)


def test_foreign_and_missing_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nothing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ModelFileError, match="not an sbitk model file"):
        load_model(plain)
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"w": torch.zeros(2)}))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(pickled)


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(load_model(saved), DirectPosterior)


def test_writes_are_atomic_and_unsavable_models_are_refused(tmp_path, npe_posterior):
    path = tmp_path / "m.safetensors"
    save_model(path, npe_posterior)
    save_model(path, npe_posterior)  # replaces in place
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    # ordinary permissions, like every other output (a temporary file's are owner-only)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    class Custom(ConditionalGaussian):
        pass

    custom = DirectPosterior(Custom(3, 3), PRIOR)
    with pytest.raises(ModelFileError, match="Custom is not registered"):
        save_model(tmp_path / "c.safetensors", custom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(Exception, match="save_model takes"):
        save_model(path, object())


def test_nan_weights_are_refused(tmp_path):
    model = ConditionalGaussian(3, 3)
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_model(path, DirectPosterior(model, PRIOR))
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        load_model(path)


@pytest.mark.parametrize("estimator", ["nsf", "maf", "realnvp", "nice", "glow", "gaussian"])
def test_every_estimator_in_the_table_round_trips(tmp_path, estimator):
    prior = BoxUniform(-1.0, 1.0, dim=2)
    g = torch.Generator().manual_seed(0)
    theta = prior.sample(300, g)
    x = theta + 0.1 * torch.randn(300, 2, generator=g)
    config = TrainConfig(progress=False, max_epochs=2, batch_size=128)
    posterior = NPE(prior, estimator, config=config).fit(theta, x)
    save_model(tmp_path / "m.safetensors", posterior)
    loaded = load_model(tmp_path / "m.safetensors")
    th = posterior.sample(10, x=torch.zeros(2), seed=0)
    assert torch.equal(
        loaded.log_prob(th, x=torch.zeros(2)), posterior.log_prob(th, x=torch.zeros(2))
    )


def test_nle_context_choice_round_trips_and_version_2_files_read_as_unconstrained(tmp_path):
    """Format 3 records whether an NLE surrogate is conditioned on θ or on f(θ); format 2
    files predate the choice and were always conditioned on f(θ)."""
    from sbitk.io import modelfile

    box = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    theta = box.sample(600, g)
    x = theta + 0.2 * torch.randn(600, 2, generator=g)
    mcmc = MCMCConfig(num_chains=16, warmup=5, sir_candidates=100, progress=False)
    xo, th = torch.tensor([0.1, 1.0]), box.sample(20, torch.Generator().manual_seed(1))
    for unconstrained in (False, True):
        posterior = NLE(box, "gaussian", unconstrained=unconstrained, config=QUICK, mcmc=mcmc)
        posterior = posterior.fit(theta, x)
        path = tmp_path / f"nle_{unconstrained}.safetensors"
        save_model(path, posterior)
        assert read_metadata(path)["unconstrained"] is unconstrained
        loaded = load_model(path)
        assert loaded.likelihood.unconstrained is unconstrained
        assert torch.equal(loaded.log_prob(th, x=xo), posterior.log_prob(th, x=xo))

    def as_version_2(meta):
        meta["format_version"] = 2
        del meta["unconstrained"]
        del meta["checksum"]
        _, tensors = modelfile._read_header(path)
        meta["checksum"] = modelfile._checksum(meta, tensors)

    rewrite(path, as_version_2)  # the file conditioned on f(θ)
    assert torch.equal(load_model(path).log_prob(th, x=xo), posterior.log_prob(th, x=xo))
    # A format 3 NLE file must say which.
    rewrite(path, lambda m: m.update(format_version=3))
    with pytest.raises(ModelFileError, match="NLE model needs a boolean 'unconstrained'"):
        load_model(path)


def test_an_nle_model_of_one_trial_keeps_its_trials(tmp_path):
    box = BoxUniform([-1.0, 0.0], [1.0, 2.0])
    g = torch.Generator().manual_seed(0)
    theta = box.sample(300, g)
    x = (theta[:, None] + 0.2 * torch.randn(300, 3, 2, generator=g)).reshape(300, 6)
    mcmc = MCMCConfig(num_chains=16, warmup=5, sir_candidates=100, progress=False)
    posterior = NLE(box, "gaussian", trials=[(0, 3, 2)], config=QUICK, mcmc=mcmc).fit(theta, x)
    path = tmp_path / "trials.safetensors"
    save_model(path, posterior)
    assert read_metadata(path)["trials"] == 3
    loaded = load_model(path)
    assert loaded.likelihood.trials == 3 and loaded.x_dim == 6
    th = box.sample(20, torch.Generator().manual_seed(1))
    assert torch.equal(loaded.log_prob(th, x=x[0]), posterior.log_prob(th, x=x[0]))
    rewrite(path, lambda m: m.update(trials=0))
    with pytest.raises(ModelFileError, match="NLE model needs a positive integer 'trials'"):
        load_model(path)

    def as_version_3(meta):
        meta.update(format_version=3, output_names=meta["output_names"][:2])
        del meta["trials"]

    _resave(path, as_version_3)
    old = load_model(path)  # format 3 files modelled x whole: here x of 2 values
    assert old.likelihood.trials == 1 and old.x_dim == 2


def test_the_transform_of_x_is_kept_and_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(400, 2, generator=g)
    x = (theta + 0.3 * torch.randn(400, 2, generator=g)).exp()  # log-normal: learned in log
    posterior = NPE(Normal(0.0, 1.0, dim=2), "gaussian", config=QUICK).fit(theta, x)
    path = tmp_path / "log.safetensors"
    save_model(path, posterior)
    assert read_metadata(path)["x_bijection"]["type"] == "log"
    th, xo = theta[:5], x[0]
    assert torch.equal(load_model(path).log_prob(th, x=xo), posterior.log_prob(th, x=xo))
    for spec, message in (
        ({"type": "logit", "low": [0.0, 0.0], "high": [1.0, 1.0]}, "must be the spec of"),
        ({"type": "log", "dim": 2, "low": [0.0, float("inf")]}, "must be the spec of"),
        ({"type": "log", "dim": 3, "low": [0.0, 0.0, 0.0]}, "acts on 3 columns, the estim"),
    ):
        _resave(path, edit_meta=lambda m, spec=spec: m.update(x_bijection=spec))
        with pytest.raises(ModelFileError, match=message):
            load_model(path)

    def as_version_4(meta):
        meta["format_version"] = 4
        del meta["x_bijection"]

    _resave(path, edit_meta=as_version_4)  # format 4 files learned on x itself
    assert load_model(path).logged_x == []


def _resave(path, edit_meta=None, edit_tensors=None):
    """Rewrite a model file with edited metadata or tensors and a recomputed checksum: a file
    that passes the checksum but says something it should not."""
    from safetensors.torch import save

    from sbitk.io import modelfile

    meta, tensors = modelfile._read_header(path)
    del meta["checksum"]
    if edit_meta is not None:
        edit_meta(meta)
    if edit_tensors is not None:
        edit_tensors(tensors)
    meta["checksum"] = modelfile._checksum(meta, tensors)
    path.write_bytes(save(tensors, metadata={modelfile.METADATA_KEY: json.dumps(meta)}))


def test_a_config_asking_for_huge_layers_is_refused_before_it_is_built(saved):
    """A valid checksum over a config of 100,000-wide layers must not allocate 10^10 weights."""

    def edit(meta):
        meta["estimator"]["config"]["hidden_features"] = [100_000, 100_000]

    _resave(saved, edit_meta=edit)
    with pytest.raises(ModelFileError, match="does not fit its weights"):
        load_model(saved)


def test_a_permutation_that_is_not_one_is_refused(saved):
    """A permutation of all zeros, checksum recomputed, loaded and sampled silently before."""

    def edit(tensors):
        names = [k for k in tensors if k.endswith(".perm")]
        assert names
        tensors[names[0]] = torch.zeros_like(tensors[names[0]])

    _resave(saved, edit_tensors=edit)
    with pytest.raises(ModelFileError, match="perm is not a permutation"):
        load_model(saved)


def test_a_bank_given_as_a_model_is_named_a_bank(tmp_path):
    bank = tmp_path / "bank.zarr"
    bank.mkdir()
    (bank / "zarr.json").write_text("{}")
    with pytest.raises(ModelFileError, match=r"is a simulation bank .* not a model file"):
        load_model(bank)


def test_sorted_trials_round_trip_and_version_6_files_read_as_unsorted(tmp_path):
    """Format 7 records the blocks of trials an NPE posterior sees sorted; format 6 files
    predate them and saw x in the order given."""
    model = ConditionalGaussian(3, 4)
    torch.nn.init.normal_(next(model.parameters()))
    posterior = DirectPosterior(model, PRIOR, sorted_trials=[(1, 3, 1)])
    path = tmp_path / "sorted.safetensors"
    save_model(path, posterior)
    assert read_metadata(path)["sorted_trials"] == [[1, 3, 1]]
    loaded = load_model(path)
    assert loaded.sorted_trials == ((1, 3, 1),)
    xo, theta = torch.tensor([5.0, 0.3, -1.0, 2.0]), torch.tensor([[0.3, 1.2, 0.5]])
    expected = posterior.log_prob(theta, x=xo)
    assert torch.equal(loaded.log_prob(theta, x=xo[[0, 3, 1, 2]]), expected)
    unsorted = DirectPosterior(model, PRIOR).log_prob(theta, x=xo)
    assert not torch.equal(unsorted, expected)  # the order matters to the estimator itself

    def as_version_6(meta):
        meta["format_version"] = 6
        del meta["sorted_trials"]

    _resave(path, edit_meta=as_version_6)
    assert load_model(path).sorted_trials == ()
    assert torch.equal(load_model(path).log_prob(theta, x=xo), unsorted)
    rewrite(path, lambda m: m.update(format_version=7))  # a format 7 NPE file must say which
    with pytest.raises(ModelFileError, match="'sorted_trials' must be a list"):
        load_model(path)
    for bad in ([(2, 3, 1)], [(1, 3)], [(1, 1, 3)]):
        with pytest.raises(SbitkError, match=r"is no block .* of at least 2 trials"):
            DirectPosterior(model, PRIOR, sorted_trials=bad)


@pytest.mark.parametrize(("name", "own"), [("flow_matching", "none"), ("diffusion", "standard")])
def test_version_7_continuous_files_without_a_skip_read_with_the_skip_they_had(
    tmp_path, name, own
):
    """Format 8 made ``skip="auto"`` the default of flow matching and diffusion; a format 7
    file that names no skip (an ensemble's member options, or a config from before the
    option) was built with the family's own, and must load as such."""
    from sbitk.models.ensemble import Ensemble
    from sbitk.models.registry import get_estimator

    small = {"hidden_features": (8, 8), "steps": 4, "skip": own}
    if name == "flow_matching":
        small["grid"] = "equal"  # and equal steps, as before format 9
    torch.manual_seed(0)
    single = get_estimator(name)(2, 1, **small)
    ensemble = Ensemble(2, 1, member=name, members=2, options=small)
    theta, xo = torch.randn(4, 2), torch.tensor([0.3])
    for model, forget in [
        (single, lambda m: m["estimator"]["config"].pop("skip")),
        (ensemble, lambda m: m["estimator"]["config"]["options"].pop("skip")),
    ]:
        posterior = DirectPosterior(model, Normal(0.0, 3.0, dim=2))
        path = tmp_path / f"{name}-{type(model).__name__}.safetensors"
        save_model(path, posterior)
        _resave(path, edit_meta=forget)  # format 8 without a skip: the default, auto
        with pytest.raises(ModelFileError):
            load_model(path)
        _resave(path, edit_meta=lambda m: m.update(format_version=7))
        loaded = load_model(path)
        torch.testing.assert_close(loaded.log_prob(theta, x=xo), posterior.log_prob(theta, x=xo))


def test_version_8_and_9_flow_matching_files_read_with_the_steps_they_took(tmp_path):
    """Format 9 gave flow matching a ``grid`` for its fixed ODE steps, cosine by default, and
    format 10 steps chosen after training. A format 8 file took 12 equal steps, a format 9 file
    12 steps, unless it named them (an ensemble's member options need not), and must give the
    densities it gave; a newer file keeps the grid it names and the steps it chose."""
    from sbitk.models.continuous import FlowMatching
    from sbitk.models.ensemble import Ensemble

    old = {"hidden_features": (8, 8), "steps": 12, "grid": "equal"}
    torch.manual_seed(0)
    ensemble = Ensemble(2, 1, member="flow_matching", members=2, options=old)
    theta, xo = torch.randn(4, 2), torch.tensor([0.3])
    posterior = DirectPosterior(ensemble, Normal(0.0, 3.0, dim=2))
    path = tmp_path / "ensemble.safetensors"
    save_model(path, posterior)

    for version, named in [(8, ("steps", "grid")), (9, ("steps",))]:
        save_model(path, posterior)

        def forget(meta, named=named, version=version):
            for key in named:
                del meta["estimator"]["config"]["options"][key]
            meta["format_version"] = version

        _resave(path, edit_meta=forget)
        options = read_metadata(path)["estimator"]["config"]["options"]
        assert (options["steps"], options["grid"]) == (12, "equal")
        torch.testing.assert_close(load_model(path).log_prob(theta, x=xo),
                                   posterior.log_prob(theta, x=xo))  # fmt: skip

    finer = DirectPosterior(FlowMatching(2, 1, steps=8, grid="data"), Normal(0.0, 3.0, dim=2))
    save_model(path, finer)
    loaded = load_model(path)
    assert (loaded.estimator.config.steps, loaded.estimator.config.grid) == (8, "data")
    torch.testing.assert_close(loaded.log_prob(theta, x=xo), finer.log_prob(theta, x=xo))
    chosen = FlowMatching(2, 1)  # steps="auto", chosen after training: kept in the file
    chosen.chosen_steps.fill_(6)
    save_model(path, DirectPosterior(chosen, Normal(0.0, 3.0, dim=2)))
    assert load_model(path).estimator.ode_steps == 6


@pytest.mark.parametrize(
    ("trained_in", "loaded_in"), [(torch.float64, torch.float32), (torch.float32, torch.float64)]
)
def test_a_model_loads_in_the_precision_of_the_process_that_loads_it(
    tmp_path, trained_in, loaded_in
):
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(trained_in)
        theta, x = data(300)
        posterior = NPE(PRIOR, "maf", config=TrainConfig(max_epochs=2, progress=False))
        posterior = posterior.fit(theta, x)
        xo = x[0]
        draws = posterior.sample(5, x=xo, seed=0)
        save_model(tmp_path / "m.safetensors", posterior)
        torch.set_default_dtype(loaded_in)
        loaded = load_model(tmp_path / "m.safetensors")
        again = loaded.sample(5, x=xo, seed=0)
        assert again.dtype == loaded_in
        assert loaded.log_prob(again, x=xo).dtype == loaded_in
        # the same draws, to the coarser precision of the two
        assert torch.allclose(again.double(), draws.double(), atol=1e-4)
    finally:
        torch.set_default_dtype(default)
