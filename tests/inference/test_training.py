"""The training engine: early stopping, determinism, NaN recovery, streaming, configuration."""

import math
import re

import pytest
import torch
from torch import nn

from sbitk.errors import SbitkError, TrainingError
from sbitk.inference.training import (
    ChunkSource,
    History,
    TrainConfig,
    config_with,
    resolve_device,
    train,
)
from sbitk.models.gaussian import ConditionalGaussian

FAST = dict(progress=False, max_epochs=40, batch_size=256)


def linear_data(n: int, seed: int = 0, noise: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 2, generator=g)
    a = c @ torch.tensor([[1.0], [-2.0]]) + noise * torch.randn(n, 1, generator=g)
    return a, c


def ideal_loss(noise: float = 0.5) -> float:
    """Expected negative log density of N(mean, noise²) at its own draws."""
    return 0.5 * math.log(2 * math.pi * noise**2) + 0.5


def held_out_loss(model, a, c) -> float:
    with torch.no_grad():
        return float(model.loss(a, c).mean())


def test_training_reaches_the_ideal_loss_and_fills_the_history():
    a, c = linear_data(2000)
    model = ConditionalGaussian(1, 2)
    history = train(model, a, c, TrainConfig(**FAST))
    test_a, test_c = linear_data(4000, seed=1)
    # The estimator's family holds the truth: held-out loss within 0.05 nats of the entropy.
    assert held_out_loss(model, test_a, test_c) == pytest.approx(ideal_loss(), abs=0.05)
    assert isinstance(history, History)
    assert history.epochs == len(history.val_loss) == len(history.learning_rate)
    assert history.best_val_loss == min(history.val_loss)
    assert history.n_train + history.n_val == 2000
    assert history.time_s > 0 and history.stop_reason
    assert not model.training


class Drifting(nn.Module):
    """Training pulls w towards a target that sweeps 0 → 10; validation wants w = 3.

    So the validation loss falls while w passes 3, then rises: the best epoch is in the middle.
    Every validation call records the weights it saw.
    """

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.steps = 0
        self.snapshots = []

    def loss(self, inputs, context):
        if self.training:
            self.steps += 1
            target = min(10.0, self.steps / 10)
            return 0.5 * (self.w - target) ** 2 * torch.ones(inputs.shape[0])
        self.snapshots.append(self.w.detach().clone())
        return 0.5 * (self.w - 3.0) ** 2 * torch.ones(inputs.shape[0])


def test_early_stopping_restores_the_weights_of_the_best_epoch():
    model = Drifting()
    a = torch.zeros(1000, 1)
    cfg = TrainConfig(
        progress=False,
        max_epochs=100,
        patience=5,
        lr_patience=100,
        weight_decay=0.0,
        learning_rate=0.2,
        warmup_steps=0,
        batch_size=100,
    )
    history = train(model, a, None, cfg)
    assert "no validation improvement in 5 epochs" in history.stop_reason
    assert history.epochs == history.best_epoch + 1 + 5
    assert history.val_loss[-1] > history.best_val_loss + 0.1
    assert float(model.w.detach()) == pytest.approx(3.0, abs=0.5)
    assert torch.equal(model.w.detach(), model.snapshots[history.best_epoch])
    assert not torch.equal(model.w.detach(), model.snapshots[-1])


def test_the_engine_waits_thirty_stalled_epochs_when_patience_is_left_open():
    cfg = TrainConfig(
        progress=False, max_epochs=100, lr_patience=100, weight_decay=0.0, learning_rate=0.2,
        warmup_steps=0, batch_size=100,
    )  # fmt: skip
    history = train(Drifting(), torch.zeros(1000, 1), None, cfg)
    assert history.stop_reason == "no validation improvement in 30 epochs"
    assert history.epochs == history.best_epoch + 1 + 30


class HeldOutGaussian(ConditionalGaussian):
    """A conditional Gaussian that keeps the held-out rows its validation loss is asked for."""

    def validation_loss(self, inputs, context):
        self.held_out = (inputs, context)
        return self.loss(inputs, context).mean()


def test_the_kept_weights_are_those_of_the_epoch_with_the_least_validation_loss():
    a, c = linear_data(600)
    model = HeldOutGaussian(1, 2, hidden_features=(128, 128))
    history = train(model, a, c, TrainConfig(**FAST, patience=4))
    assert history.best_epoch == min(range(history.epochs), key=history.val_loss.__getitem__)
    assert history.best_epoch < history.epochs - 1  # a later, worse epoch was not kept
    # the returned model scores the held-out rows as the best epoch did
    with torch.no_grad():
        again = float(model.loss(*model.held_out).mean())
    assert again == pytest.approx(history.best_val_loss, rel=1e-6)


def test_the_same_seed_gives_the_same_model_and_another_seed_does_not():
    a, c = linear_data(1000)

    def run(seed):
        torch.manual_seed(123)  # the engine must not depend on the caller's global RNG
        model = ConditionalGaussian(1, 2)
        torch.manual_seed(999)
        history = train(model, a, c, TrainConfig(**FAST | {"max_epochs": 5}, seed=seed))
        return model.state_dict(), history

    s1, h1 = run(0)
    s2, h2 = run(0)
    _, h3 = run(1)
    assert h1.val_loss == h2.val_loss
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1.val_loss != h3.val_loss


def test_training_leaves_the_global_rng_alone():
    a, c = linear_data(300)
    model = ConditionalGaussian(1, 2)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train(model, a, c, TrainConfig(**FAST | {"max_epochs": 2}))
    assert torch.equal(torch.rand(3), expected)


class NaNAt(ConditionalGaussian):
    """A real Gaussian estimator whose loss is NaN at the training steps listed."""

    def __init__(self, steps, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_steps, self.step = set(steps), 0

    def loss(self, inputs, context=None):
        out = super().loss(inputs, context)
        if self.training:
            self.step += 1
            if self.step in self.bad_steps or (-1 in self.bad_steps and self.step > 20):
                out = out * torch.tensor(float("nan"))
        return out


def test_a_nan_loss_is_recovered_from_by_restoring_and_lowering_the_learning_rate():
    a, c = linear_data(2000)
    model = NaNAt({40}, 1, 2)
    cfg = TrainConfig(**FAST)
    history = train(model, a, c, cfg)
    assert history.nan_recoveries == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for v in history.val_loss)
    # The epochs after the recovery ran with a lowered rate.
    assert min(history.learning_rate) <= history.learning_rate[0] * cfg.nan_lr_factor
    test_a, test_c = linear_data(2000, seed=1)
    assert held_out_loss(model, test_a, test_c) == pytest.approx(ideal_loss(), abs=0.1)


def test_a_persistent_nan_loss_raises_a_training_error_naming_the_epoch():
    a, c = linear_data(1000)
    model = NaNAt({-1}, 1, 2)
    with pytest.raises(TrainingError, match=r"epoch \d+") as info:
        train(model, a, c, TrainConfig(**FAST, max_nan_recoveries=2))
    assert "recoveries" in str(info.value)
    # The weights left behind are the best finite ones, not NaN.
    assert all(torch.isfinite(p).all() for p in model.parameters())


class ListChunks:
    """A chunk source over tensors held in memory (what a bank provides, minus the disk)."""

    def __init__(self, a, c, size):
        self.parts = list(zip(a.split(size), c.split(size)))
        self.n_chunks = len(self.parts)
        self.loaded = []

    def load(self, index):
        self.loaded.append(index)
        return self.parts[index]


@pytest.mark.slow
def test_streaming_from_chunks_trains_as_well_as_in_memory():
    a, c = linear_data(3000)
    test_a, test_c = linear_data(4000, seed=1)
    source = ListChunks(a, c, 250)
    assert isinstance(source, ChunkSource)
    streamed = ConditionalGaussian(1, 2)
    history = train(streamed, source, None, TrainConfig(**FAST))
    in_memory = ConditionalGaussian(1, 2)
    train(in_memory, a, c, TrainConfig(**FAST))
    assert held_out_loss(streamed, test_a, test_c) == pytest.approx(ideal_loss(), abs=0.05)
    assert held_out_loss(streamed, test_a, test_c) == pytest.approx(
        held_out_loss(in_memory, test_a, test_c), abs=0.03
    )
    # One chunk in ten held out, the other nine visited every epoch in a shuffled order.
    assert history.n_val == 250 and history.n_train == 2750
    # Loads: the validation chunk, four chunks for standardisation, then epochs of 11 chunks.
    val_chunk = source.loaded[0]
    epochs = [source.loaded[5 + 11 * k : 5 + 11 * (k + 1)] for k in range(2)]
    assert all(sorted(e) == sorted(set(range(12)) - {val_chunk}) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])


def test_streaming_needs_two_chunks_and_no_separate_context():
    a, c = linear_data(100)
    with pytest.raises(SbitkError, match="at least 2 chunks"):
        train(ConditionalGaussian(1, 2), ListChunks(a, c, 100), None, TrainConfig(**FAST))
    with pytest.raises(SbitkError, match="context comes from the chunks"):
        train(ConditionalGaussian(1, 2), ListChunks(a, c, 10), c, TrainConfig(**FAST))


def test_ema_weights_train_to_the_same_quality():
    a, c = linear_data(2000)
    model = ConditionalGaussian(1, 2)
    train(model, a, c, TrainConfig(**FAST, ema_decay=0.95))
    test_a, test_c = linear_data(4000, seed=1)
    assert held_out_loss(model, test_a, test_c) == pytest.approx(ideal_loss(), abs=0.05)


def test_an_estimators_weight_average_is_its_default_and_zero_turns_it_off():
    from sbitk.inference.npe import NPE
    from sbitk.simulation.priors import Normal

    def settled(npe):
        return npe._train_config(1000, npe._build(1, 1))

    prior = Normal(0.0, 1.0, dim=1)
    assert settled(NPE(prior, "flow_matching")).ema_decay == 0.999
    assert settled(NPE(prior, "flow_matching", config=TrainConfig(ema_decay=0))).ema_decay == 0
    assert settled(NPE(prior, "diffusion")).ema_decay is None
    assert settled(NPE(prior, "ensemble", member="flow_matching")).ema_decay == 0.999
    with pytest.raises(SbitkError, match=r"ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=-0.1)


class RowRecorder(nn.Module):
    """Records each training batch's rows, and how many batches came before each validation."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.batches, self.validated_after = [], []

    def loss(self, inputs, context):
        if self.training:
            self.batches.append(inputs[:, 0].detach().clone())
        else:
            self.validated_after.append(len(self.batches))
        return 0.5 * (self.w - inputs[:, 0] / 1000) ** 2


@pytest.mark.parametrize("epoch_rows, batches_per_epoch", [(400, 4), (None, 9), (5000, 9)])
def test_an_epoch_is_a_full_pass_or_epoch_rows_rows_across_passes(epoch_rows, batches_per_epoch):
    rows = torch.arange(1000.0).unsqueeze(1)  # 100 held out, 900 train: 9 batches of 100 a pass
    model = RowRecorder()
    cfg = TrainConfig(
        progress=False, max_epochs=6, batch_size=100, epoch_rows=epoch_rows, patience=100,
        schedule="constant", warmup_steps=0,
    )  # fmt: skip
    history = train(model, rows, None, cfg)
    assert history.epochs == 6 and history.n_train == 900
    assert model.validated_after == [batches_per_epoch * (k + 1) for k in range(6)]
    # Every pass visits each training row once, in a fresh order, whatever the epochs cut.
    passes = [torch.cat(model.batches[9 * k : 9 * (k + 1)]) for k in range(2)]
    assert all(p.numel() == 900 and p.unique().numel() == 900 for p in passes)
    assert torch.equal(passes[0].sort().values, passes[1].sort().values)
    assert not torch.equal(passes[0], passes[1])


def test_the_default_batch_and_rate_grow_with_the_bank_and_given_values_win():
    assert TrainConfig().resolved(50_000) == (512, 2e-3)
    assert TrainConfig().resolved(50_001) == (1024, 3e-3)
    assert TrainConfig(batch_size=256).resolved(10**6) == (256, 2e-3)
    assert TrainConfig(batch_size=2048).resolved(100) == (2048, 3e-3)
    assert TrainConfig(learning_rate=1e-3).resolved(10**6) == (1024, 1e-3)
    a, c = linear_data(600)
    history = train(ConditionalGaussian(1, 2), a, c, TrainConfig(progress=False, max_epochs=2))
    assert history.batch_size == 512 and history.learning_rate[0] == 2e-3
    assert history.summary()["batch_size"] == 512


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 0),
        ("learning_rate", -1.0),
        ("schedule", "step"),
        ("lr_decay", 1.5),
        ("validation_fraction", 1.0),
        ("clip_grad_norm", 0.0),
        ("ema_decay", 1.0),
        ("epoch_rows", 0),
        ("patience", 0),
        ("lr_patience", 0),
        ("min_lr", -1e-5),
        ("warmup_steps", -1),
        ("max_validation", 0),
        ("max_time", 0.0),
        ("min_improvement", -0.1),
    ],
)
def test_bad_config_values_are_refused_by_name(field, value):
    with pytest.raises(SbitkError, match=rf"TrainConfig\.{field}"):
        TrainConfig(**{field: value})


def test_named_options_are_checked_by_name_and_kind_before_the_config_is_built():
    config = config_with(
        {"schedule": "anneal", "patience": 20, "min_lr": 0, "clip_grad_norm": None}, seed=3
    )
    assert (config.schedule, config.patience, config.seed) == ("anneal", 20, 3)
    assert config.min_lr == 0.0 and isinstance(config.min_lr, float)  # an int is a float here
    assert config.clip_grad_norm is None
    bad = [
        ({"wings": 2}, "unknown training option 'wings'; expected one of anneal_fraction, "),
        ({"patience": "x"}, "'patience' must be int or None, got 'x'"),
        ({"patience": 2.5}, "'patience' must be int or None, got 2.5"),
        ({"patience": True}, "'patience' must be int or None, got True"),
        ({"ema_decay": False}, "'ema_decay' must be float or None, got False"),
        ({"progress": 1}, "'progress' must be bool, got 1"),
        ({"seed": 4}, "'seed' is set twice"),
        ({"schedule": "step"}, "TrainConfig.schedule must be one of"),  # the config's own check
    ]
    for options, message in bad:
        with pytest.raises(SbitkError, match=re.escape(message)):
            config_with(options, seed=3)


def test_bad_data_is_refused_with_clear_errors():
    a, c = linear_data(50)
    model = ConditionalGaussian(1, 2)
    with pytest.raises(SbitkError, match="inputs and context must have the same number of rows"):
        train(model, a, c[:-1], TrainConfig(**FAST))
    with pytest.raises(
        SbitkError, match=r"context must have 2 dimension\(s\), found shape \(50,\)"
    ):
        train(model, a, c[:, 0], TrainConfig(**FAST))
    bad = a.clone()
    bad[3] = float("nan")
    with pytest.raises(SbitkError, match=r"inputs must be finite, found 1 row\(s\) with NaN"):
        train(model, bad, c, TrainConfig(**FAST))
    bad = c.clone()
    bad[[3, 7], 1] = float("inf")
    with pytest.raises(SbitkError, match=r"context must be finite, found 2 row\(s\) with NaN"):
        train(model, a, bad, TrainConfig(**FAST))
    # Streamed chunks go through the same check: a held-out chunk with NaN is refused.
    with pytest.raises(SbitkError, match=r"inputs must be finite"):
        train(
            model, ListChunks(torch.full_like(a, float("nan")), c, 10), None, TrainConfig(**FAST)
        )
    with pytest.raises(SbitkError, match="no loss"):
        train(nn.Linear(2, 1), a, c, TrainConfig(**FAST))


def test_cosine_and_constant_schedules_run():
    a, c = linear_data(500)
    for schedule in ("cosine", "constant"):
        h = train(
            ConditionalGaussian(1, 2),
            a,
            c,
            TrainConfig(**FAST | {"max_epochs": 6}, schedule=schedule, warmup_steps=0),
        )
        lr0 = TrainConfig().resolved(h.n_train)[1]
        if schedule == "constant":
            assert set(h.learning_rate) == {lr0}
        else:
            # The cosine annealing itself, epoch by epoch: a constant or merely falling rate fails.
            min_lr = TrainConfig().min_lr
            expected = [
                min_lr + 0.5 * (lr0 - min_lr) * (1 + math.cos(math.pi * e / 6))
                for e in range(len(h.learning_rate))
            ]
            assert len(h.learning_rate) >= 3
            assert h.learning_rate == pytest.approx(expected, rel=1e-12)


def test_the_anneal_schedule_holds_the_rate_then_ends_on_one_cosine():
    a, c = linear_data(500)
    base = FAST | dict(warmup_steps=0, schedule="anneal", anneal_fraction=0.5)

    def cosine(lr0: float, progress: float) -> float:
        min_lr = TrainConfig().min_lr
        return min_lr + 0.5 * (lr0 - min_lr) * (1 + math.cos(math.pi * progress))

    # Never stalled long enough: the cosine starts late enough to end at max_epochs
    # (floor(12 / 1.5) = 8 epochs held, then 4 on the cosine).
    h = train(ConditionalGaussian(1, 2), a, c, TrainConfig(**base | {"max_epochs": 12}))
    lr0 = TrainConfig().resolved(h.n_train)[1]
    expected = [lr0] * 8 + [cosine(lr0, (k + 0.5) / 4) for k in range(4)]
    assert h.learning_rate == pytest.approx(expected, rel=1e-12)
    assert h.stop_reason == "annealed to min_lr"
    # Stalled: held until lr_patience epochs without improvement, then a cosine half as long
    # as the epochs before it, and the end. A plateau schedule or a cosine over max_epochs fails.
    h = train(ConditionalGaussian(1, 2), a, c, TrainConfig(**base | {"lr_patience": 2}))
    start = next(e for e, lr in enumerate(h.learning_rate) if lr != lr0)
    length = math.ceil(0.5 * start)
    assert start < 26 and h.epochs == start + length
    assert h.learning_rate[:start] == [lr0] * start
    expected = [cosine(lr0, (k + 0.5) / length) for k in range(length)]
    assert h.learning_rate[start:] == pytest.approx(expected, rel=1e-12)
    assert h.stop_reason == "annealed to min_lr"
    with pytest.raises(SbitkError, match="anneal_fraction must be > 0"):
        TrainConfig(anneal_fraction=0)


def test_device_resolution():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SbitkError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SbitkError, match="no cuda device"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        # A device torch knows but this machine lacks: one SbitkError naming it, at once.
        with pytest.raises(SbitkError, match="'mps' was asked for, but this machine has no mps"):
            resolve_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_keeps_the_model_there():
    a, c = linear_data(1000)
    model = ConditionalGaussian(1, 2)
    history = train(model, a, c, TrainConfig(**FAST, device="auto"))
    assert history.device.startswith("cuda")
    assert next(model.parameters()).is_cuda


class _ThreadSpy(ConditionalGaussian):
    """Records torch's thread count whenever the engine asks for a loss."""

    seen: set

    def loss(self, inputs, context):
        self.seen.add(torch.get_num_threads())
        return super().loss(inputs, context)


def test_training_follows_the_cli_thread_rule_and_restores_torch(monkeypatch):
    """The API trains on SBITK_THREADS threads, else 1, as the CLI does (torch's default of
    one per core made NPE.fit 6x slower on two busy cores); torch's setting is restored."""
    from sbitk.inference.training import THREADS_ENV

    a, c = linear_data(200)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv(THREADS_ENV, raising=False)
        spy = _ThreadSpy(1, 2)
        spy.seen = set()
        train(spy, a, c, TrainConfig(**FAST | {"max_epochs": 1}))
        assert spy.seen == {1}
        assert torch.get_num_threads() == 2
        monkeypatch.setenv(THREADS_ENV, "3")
        spy.seen = set()
        train(spy, a, c, TrainConfig(**FAST | {"max_epochs": 1}))
        assert spy.seen == {3}
        monkeypatch.setenv(THREADS_ENV, "zero")
        with pytest.raises(SbitkError, match=THREADS_ENV):
            train(spy, a, c, TrainConfig(**FAST | {"max_epochs": 1}))
    finally:
        torch.set_num_threads(before)


class _TwoStages(nn.Module):
    """Fits a location ``loc`` in stage "fit", then a scale ``log_sd`` alone in stage "spread",
    which asks for its own settings: each stage's loss reaches only its own parameter."""

    def __init__(self):
        super().__init__()
        self.loc, self.log_sd = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.stage, self.entered = "fit", []

    def training_stages(self):
        return ("fit", "spread")

    def set_stage(self, name):
        self.stage = name
        self.entered.append(name)
        return {"max_epochs": 7, "learning_rate": 0.05} if name == "spread" else {}

    def optimizer_groups(self):
        return [{"params": [self.log_sd if self.stage == "spread" else self.loc]}]

    def loss(self, inputs, context=None):
        if self.stage == "fit":
            return (inputs[:, 0] - self.loc).square()
        z = (inputs[:, 0] - self.loc.detach()) / self.log_sd.exp()
        return 0.5 * z.square() + self.log_sd  # the Gaussian NLL in log_sd alone


def test_a_model_with_stages_trains_each_in_turn_with_its_own_settings_and_best_weights():
    g = torch.Generator().manual_seed(0)
    data = 2.0 + 3.0 * torch.randn(4000, 1, generator=g)
    model = _TwoStages()
    config = TrainConfig(max_epochs=60, learning_rate=0.1, patience=5, progress=False, seed=0)
    history = train(model, data, None, config)
    assert model.entered == ["spread", "fit"]  # the later stage, then back to the first
    (stage,) = history.stages
    assert stage["stage"] == "spread" and stage["epochs"] == 7  # its own max_epochs
    assert "max_epochs=7" in stage["stop_reason"] and history.epochs > 7
    assert abs(float(model.loc) - 2.0) < 0.2  # fitted in the first stage
    # The second stage moved the scale from 1 toward the data's sd (2.98) at its own rate, 0.05:
    # 2.47 after its 7 epochs, where the first stage's rate, 0.1, overshoots to 3.17.
    assert 2.2 < float(model.log_sd.exp()) < 2.8
    assert history.summary()["stages"] == history.stages
