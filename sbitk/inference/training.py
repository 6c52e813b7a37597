"""One training engine for every estimator: it only ever calls ``model.loss(inputs, context)``.

The engine minimises the mean of a per-example loss over a training set,

.. math:: \\hat\\phi = \\arg\\min_\\phi \\frac{1}{N} \\sum_{i=1}^{N} \\ell_\\phi(a_i \\mid c_i),

with AdamW, a learning-rate schedule, gradient clipping, a held-out validation split and early
stopping that restores the weights of the best validation epoch. For a flow,
:math:`\\ell_\\phi(a \\mid c) = -\\log q_\\phi(a \\mid c)`, so NPE (:math:`a = \\theta, c = x`) and
NLE (:math:`a = x, c = \\theta`) are the same call with the roles swapped.

Data lives on the training device from the start: each epoch indexes a device tensor with a fresh
permutation, so there are no per-batch host-to-device copies. A data set too large for memory is
streamed chunk by chunk from a :class:`ChunkSource` (chunk order and rows within a chunk are
shuffled every epoch). A non-finite loss is caught once per epoch (no per-batch synchronisation):
the best weights are restored and the learning rate lowered, a limited number of times, after
which :class:`~sbitk.errors.TrainingError` names the epoch.

Example:
    >>> import torch
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> g = torch.Generator().manual_seed(0)
    >>> c = torch.randn(512, 1, generator=g)
    >>> a = 2 * c + 0.5 * torch.randn(512, 1, generator=g)
    >>> model = ConditionalGaussian(1, 1)
    >>> history = train(model, a, c, TrainConfig(max_epochs=5, progress=False))
    >>> len(history.train_loss) == history.epochs
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError, TrainingError
from sbitk.inference.data import check_pair
from sbitk.nn.devices import resolve_device
from sbitk.nn.threads import THREADS_ENV, thread_limit, torch_threads
from sbitk.simulation.rng import seeded

#: Above this many training rows the default batch doubles (see :meth:`TrainConfig.resolved`).
LARGE_BANK_ROWS = 50_000
#: Default ``patience`` and ``lr_patience`` of :class:`TrainConfig` (NLE: see its docs).
PATIENCE, LR_PATIENCE = 30, 8


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training engine, shared by the Python API, the CLI and model files.

    The defaults are chosen to converge fast on simulation banks of 10^3 to 10^6 rows: a larger
    batch and a higher learning rate than sbi's (200 and 5e-4), decayed when the validation loss
    stalls, and a patience long enough to converge. A patience of 10 with a decay after 4 stalled
    epochs stopped early: 30 and 8 took the spline flow's C2ST (sbibm protocol, 10,000
    simulations) from 0.855 to 0.829 on slcp and from 0.566 to 0.558 on two_moons, and the
    default ensemble's on slcp from 0.844 to 0.824, at about 1.5 times the epochs.

    Args:
        batch_size: Examples per gradient step. ``None`` (the default): 512, or 1,024 when more
            than 50,000 rows train (NLE: 256 and 512).
        learning_rate: Initial AdamW learning rate. ``None`` (the default): 2e-3 for batches of
            up to 512 rows, 3e-3 for larger ones.
        weight_decay: AdamW decoupled weight decay.
        max_epochs: Hard limit on epochs (full passes, or ``epoch_rows`` rows on a large bank).
        patience: Epochs without validation improvement before stopping. ``None`` (the
            default): 30, or 16 for NLE (on slcp, 16 and an ``lr_patience`` of 8 held out
            -11.63 nats against -12.06 with 10 and 4; NLE's MCMC dominates its time).
        schedule: ``"plateau"`` (multiply the rate by ``lr_decay`` after ``lr_patience`` stalled
            epochs), ``"cosine"`` (anneal to ``min_lr`` over ``max_epochs``), ``"anneal"`` (hold
            the rate until ``lr_patience`` stalled epochs, then anneal it on a cosine to
            ``min_lr`` over ``anneal_fraction`` times the epochs so far, and stop) or
            ``"constant"``.
            ``None`` (the default): ``"plateau"``.
        lr_patience: Stalled epochs before a plateau decay. ``None`` (the default): 8.
        lr_decay: Factor of a plateau decay.
        anneal_fraction: Length of the ``"anneal"`` schedule's cosine, as a fraction of the
            epochs before it. It starts early enough to end by ``max_epochs``.
        min_lr: Smallest learning rate; a plateau schedule that would go below it stops training.
        warmup_steps: Linear learning-rate warm-up at the start, in gradient steps.
        validation_fraction: Share of the rows held out for early stopping.
        max_validation: Cap on held-out rows (validation is cheap but not free).
        clip_grad_norm: Largest global gradient norm; ``None`` disables clipping.
        max_nan_recoveries: How often a non-finite loss is recovered from before giving up.
        nan_lr_factor: Learning-rate factor applied on each recovery.
        min_improvement: Relative validation improvement that counts as progress.
        ema_decay: Validate and keep an exponential moving average of the weights with this
            decay; 0: the raw weights. ``None`` (the default): the estimator's
            ``train_defaults`` (flow matching averages with 0.999), else the raw weights.
            Averaging smooths the optimiser's noise and overfits less on small banks. After n
            steps the decay is at most (1 + n) / (10 + n), so the average spans about the last
            n / 9 steps until that reaches ``ema_decay`` (0.999: after about 9,000 steps).
        seed: Seeds the split, the shuffling and any randomness inside ``loss``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        progress: Show a progress bar (also off when ``TQDM_DISABLE=1`` or not a terminal).
        max_time: Optional wall-clock limit in seconds, checked after each epoch.
        epoch_rows: An epoch ends after a full pass over the training rows or after this many
            rows, whichever comes first (``None``: full passes). Validation, ``patience``,
            ``lr_patience`` and ``max_epochs`` count these epochs, so that on a large bank the
            schedule reacts after as many gradient steps as on a small one.
    """

    batch_size: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 1e-5
    max_epochs: int = 500
    patience: int | None = None
    schedule: str | None = None
    lr_patience: int | None = None
    lr_decay: float = 0.3
    anneal_fraction: float = 0.25
    min_lr: float = 1e-5
    warmup_steps: int = 50
    validation_fraction: float = 0.1
    max_validation: int = 20_000
    clip_grad_norm: float | None = 5.0
    max_nan_recoveries: int = 3
    nan_lr_factor: float = 0.3
    min_improvement: float = 0.0
    ema_decay: float | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    max_time: float | None = None
    epoch_rows: int | None = 50_000

    def n_validation(self, n_rows: int) -> int:
        """Rows held out for validation when ``n_rows`` rows are given in memory."""
        return min(max(1, round(self.validation_fraction * n_rows)), self.max_validation)

    def resolved(self, n_train: int) -> tuple[int, float]:
        """The batch size and learning rate for ``n_train`` training rows.

        On two_moons with 100,000 simulations a batch of 1,024 at 3e-3 (with epochs of 50,000
        rows) trains in a third of the time of 512 at 2e-3 over full passes, and its posteriors
        are as close to the reference (C2ST 0.517 against 0.506; sbi 0.522). On 10,000 rows the
        larger batch loses up to 0.13 nats of held-out log-likelihood, so small banks keep 512.
        """
        batch = self.batch_size
        if batch is None:
            batch = 1024 if n_train > LARGE_BANK_ROWS else 512
        lr = self.learning_rate
        if lr is None:
            lr = 3e-3 if batch > 512 else 2e-3
        return batch, lr

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SbitkError(f"TrainConfig.{f.name} must be a finite number, got {value!r}")
        checks = [
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "an integer >= 1"),
            ("learning_rate", self.learning_rate is None or self.learning_rate > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("max_epochs", self.max_epochs >= 1, "an integer >= 1"),
            ("patience", self.patience is None or self.patience >= 1, "an integer >= 1"),
            ("lr_patience", self.lr_patience is None or self.lr_patience >= 1, "an integer >= 1"),
            (
                "schedule",
                self.schedule in (None, "plateau", "cosine", "anneal", "constant"),
                "one of 'plateau', 'cosine', 'anneal', 'constant'",
            ),
            ("lr_decay", 0 < self.lr_decay < 1, "in (0, 1)"),
            ("anneal_fraction", self.anneal_fraction > 0, "> 0"),
            ("min_lr", self.min_lr >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
            ("max_validation", self.max_validation >= 1, "an integer >= 1"),
            ("max_time", self.max_time is None or self.max_time > 0, "> 0 or None"),
            ("min_improvement", self.min_improvement >= 0, ">= 0"),
            ("validation_fraction", 0 < self.validation_fraction < 1, "in (0, 1)"),
            ("max_nan_recoveries", self.max_nan_recoveries >= 0, ">= 0"),
            ("nan_lr_factor", 0 < self.nan_lr_factor < 1, "in (0, 1)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise SbitkError(
                    f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )
        if self.epoch_rows is not None and self.epoch_rows < 1:
            raise SbitkError(
                f"TrainConfig.epoch_rows must be an integer >= 1 or None, got {self.epoch_rows!r}"
            )
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise SbitkError(
                f"TrainConfig.ema_decay must be in [0, 1) or None, got {self.ema_decay!r}"
            )
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise SbitkError(
                f"TrainConfig.clip_grad_norm must be > 0 or None, got {self.clip_grad_norm!r}"
            )


#: The Python types each kind of :class:`TrainConfig` field accepts from a named option.
_OPTION_KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def config_with(options: Mapping[str, Any], **settings: Any) -> TrainConfig:
    """A :class:`TrainConfig` of ``settings`` and the named ``options``, each option's name and
    type checked first: what the command line's ``--train-option KEY=VALUE`` builds.

    Example:
        >>> config_with({"schedule": "anneal", "patience": 20}, seed=3).schedule
        'anneal'
    """
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    checked = {}
    for name, value in options.items():
        if name not in kinds:
            raise SbitkError(
                f"unknown training option {name!r}; expected one of {', '.join(sorted(kinds))}"
            )
        if name in settings:
            raise SbitkError(f"training option {name!r} is set twice")
        checked[name] = _option_value(name, value, str(kinds[name]))
    return TrainConfig(**settings, **checked)


def _option_value(name: str, value: Any, annotation: str) -> Any:
    """``value`` if it is of a kind the field's ``annotation`` (``"int | None"``...) allows."""
    allowed = [kind.strip() for kind in annotation.split("|")]
    if value is None and "None" in allowed:
        return None
    for kind in allowed:
        types = _OPTION_KINDS.get(kind, ())
        if isinstance(value, types) and (kind == "bool" or not isinstance(value, bool)):
            return float(value) if kind == "float" else value
    raise SbitkError(f"training option {name!r} must be {' or '.join(allowed)}, got {value!r}")


@dataclass
class History:
    """What happened during training: losses per epoch, the best epoch, the time taken."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stop_reason: str = ""
    nan_recoveries: int = 0
    n_train: int = 0
    n_val: int = 0
    time_s: float = 0.0
    device: str = "cpu"
    batch_size: int = 0
    #: The rows offered and why some were excluded (``n_rows``, ``n_failed``, ``n_non_finite``,
    #: ``n_outside_support``), filled in by NPE and NLE; empty when ``train`` is called directly.
    rows: dict = field(default_factory=dict)
    #: The stages after the first (a GAN's critic calibration), one summary each; the fields
    #: above describe the first stage, ``time_s`` all of them.
    stages: list[dict] = field(default_factory=list)
    #: Sequential training (:mod:`sbitk.inference.sequential`): one record per round, and the
    #: observation the posterior was trained for; empty and None when amortized.
    rounds: list[dict] = field(default_factory=list)
    observation: list | None = None
    #: What the model decided for itself from the held-out rows once trained (its
    #: ``after_training``): flow matching's ODE steps, say; empty when it decides nothing.
    settled: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def summary(self) -> dict:
        """A small JSON-serialisable summary (kept in model files)."""
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "final_train_loss": self.train_loss[-1] if self.train_loss else None,
            "stop_reason": self.stop_reason,
            "nan_recoveries": self.nan_recoveries,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "time_s": round(self.time_s, 3),
            "device": self.device,
            "batch_size": self.batch_size,
            "rows": dict(self.rows),
            "stages": [dict(stage) for stage in self.stages],
            "rounds": [dict(r) for r in self.rounds],
            "observation": self.observation,
            "settled": dict(self.settled),
        }


@runtime_checkable
class ChunkSource(Protocol):
    """Training data read one chunk at a time, for data sets that do not fit in memory."""

    n_chunks: int

    def load(self, index: int) -> tuple[Tensor, Tensor | None]:
        """Return the ``(inputs, context)`` rows of chunk ``index``."""
        ...


@runtime_checkable
class Standardizable(Protocol):
    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> None: ...


class _Batches:
    """Yields training batches on the device for one epoch, in memory or streamed."""

    def __init__(self, config: TrainConfig, device: torch.device, generator: torch.Generator):
        self.config, self.device, self.generator = config, device, generator

    def in_memory(self, inputs: Tensor, context: Tensor | None) -> Iterator:
        n, bs = inputs.shape[0], self.config.batch_size
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        # Drop a ragged last batch smaller than half a batch: its noisy gradient is not worth it.
        stop = n if n % bs == 0 or n % bs >= bs // 2 or n < bs else n - n % bs
        for start in range(0, stop, bs):
            idx = perm[start : start + bs]
            yield inputs[idx], (None if context is None else context[idx])

    def streamed(self, source: ChunkSource, chunks: list[int]) -> Iterator:
        order = torch.randperm(len(chunks), generator=self.generator).tolist()
        for k in order:
            a, c = source.load(chunks[k])
            a = a.to(self.device, torch.get_default_dtype())
            c = None if c is None else c.to(self.device, torch.get_default_dtype())
            yield from self.in_memory(a, c)


class _Rounds:
    """Cuts the passes over the training set into epochs of at most ``limit`` rows.

    Validation, patience and the learning-rate schedule count epochs; on a large bank a full pass
    is many gradient steps, so an epoch ends after ``limit`` rows and the next one goes on with
    the same pass. :attr:`pass_rows` is the size of a full pass once one has been seen.
    """

    def __init__(self, passes: Callable[[], Iterator], limit: int | None):
        self.passes, self.limit = passes, limit
        self.current: Iterator | None = None
        self.pass_rows: int | None = None
        self._rows_in_pass = 0

    def _done(self, rows: int) -> bool:
        if self.limit is None:
            target = self.pass_rows
        else:
            target = self.limit if self.pass_rows is None else min(self.limit, self.pass_rows)
        return target is not None and rows >= target

    def round(self) -> Iterator:
        """The batches of one epoch: a full pass, or ``limit`` rows across pass boundaries."""
        rows = 0
        while True:
            if self.current is None:
                self.current, self._rows_in_pass = iter(self.passes()), 0
            for a, c in self.current:
                rows += a.shape[0]
                self._rows_in_pass += a.shape[0]
                yield a, c
                if self._done(rows):
                    return
            self.current = None
            if self.pass_rows is None:
                self.pass_rows = self._rows_in_pass
            if self._done(rows) or self._rows_in_pass == 0:
                return


def _mean_loss(model: nn.Module, inputs: Tensor, context: Tensor | None, size: int) -> Tensor:
    """What early stopping watches: the model's ``validation_loss`` on all held-out rows where it
    has one (see :mod:`sbitk.models.contract`), else the mean of its loss over them."""
    validation_loss = getattr(model, "validation_loss", None)
    if callable(validation_loss):
        return validation_loss(inputs, context).reshape(())
    total = inputs.new_zeros(())
    for start in range(0, inputs.shape[0], size):
        c = None if context is None else context[start : start + size]
        total = total + model.loss(inputs[start : start + size], c).sum()
    return total / max(inputs.shape[0], 1)


def _adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW, fused into one kernel per step where torch has it (CPU and CUDA).

    On one CPU thread the fused step of a spline flow's parameters takes a quarter of the time of
    the default per-tensor loop (0.4 against 1.7 ms for 88,000 parameters in 50 tensors). A model
    with ``optimizer_groups()`` (see :mod:`sbitk.models.contract`) gets one group each, at its
    ``lr_scale`` times the schedule's rate.
    """
    fused = device.type in ("cpu", "cuda") and all(
        p.is_floating_point() for p in model.parameters()
    )
    hook = getattr(model, "optimizer_groups", None)
    groups = hook() if callable(hook) else [{"params": list(model.parameters())}]
    groups = [{**g, "lr_scale": float(g.get("lr_scale", 1.0))} for g in groups]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def train(
    model: nn.Module,
    inputs: Tensor | ChunkSource,
    context: Tensor | None = None,
    config: TrainConfig | None = None,
    augment: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]] | None = None,
    group: int = 1,
) -> History:
    """Fit ``model`` by minimising ``model.loss(inputs, context).mean()``.

    Args:
        model: Any ``nn.Module`` with ``loss(inputs (B, D), context (B, C) | None) -> (B,)``. If
            it has ``fit_standardization(inputs, context)``, that is called on the training split
            (on a sample of chunks when streaming) before the first step; if it has
            ``after_training(inputs, context)``, that is called on the held-out rows at the end
            (what it returns is :attr:`History.settled`).
        inputs: Rows to model, (N, D); or a :class:`ChunkSource` to stream from.
        context: Conditioning rows (N, C), or ``None``; must be ``None`` with a chunk source.
        config: Settings; :class:`TrainConfig` defaults when omitted. Torch runs on
            :func:`torch_threads` CPU threads meanwhile (``SBITK_THREADS``, else 1), as in the CLI.
        augment: Applied to every training batch, ``(inputs, context) -> (inputs, context)``,
            drawing from torch's (seeded) generator: data augmentation that leaves the
            distribution of the rows unchanged (permuted i.i.d. trials). Not to held-out rows.
        group: In-memory rows come in consecutive groups of this many that are held out
            together (the trials of one simulation, split into rows of their own), so that no
            group is partly trained on and partly held out. Chunks stay whole anyway.

    Returns:
        The :class:`History`. The model is left on the training device in eval mode, holding the
        weights of the best validation epoch.

    Raises:
        TrainingError: The loss stayed non-finite after ``config.max_nan_recoveries`` recoveries.
    """
    config = config or TrainConfig()
    if not callable(getattr(model, "loss", None)):
        raise SbitkError(f"model {type(model).__name__} has no loss(inputs, context) method")
    with thread_limit():
        return _train(model, inputs, context, config, augment, group)


def _train(
    model: nn.Module, inputs: Tensor | ChunkSource, context: Tensor | None, config: TrainConfig,
    augment: Callable | None = None, group: int = 1,
) -> History:  # fmt: skip
    """The engine: seeded, it splits the data, settles the settings and optimises."""
    device = resolve_device(config.device)
    start_time = time.perf_counter()
    history = History(device=str(device))
    with seeded(config.seed, [device]):
        generator = torch.Generator().manual_seed(config.seed)
        model.to(device)
        batches = _Batches(config, device, generator)
        if isinstance(inputs, ChunkSource):
            data = _streamed_data(model, inputs, context, config, batches, history)
        else:
            data = _in_memory_data(model, inputs, context, config, batches, history, group)
        rows, history.n_val = data.n_train, data.val_inputs.shape[0]
        if augment is not None:
            data, rows = _augmented(data, augment, config)
        config = _settled(config, rows)
        batches.config = config
        history.batch_size = config.batch_size
        run = _Run(model, config, device, history, start_time)
        run.loop(_Rounds(data.epoch_batches, config.epoch_rows), data)
        model.load_state_dict(run.best_state)
        history.best_val_loss = run.best_val
        _later_stages(model, config, data, history, start_time)
        model.eval()
        settle = getattr(model, "after_training", None)
        if callable(settle):
            history.settled = dict(settle(data.val_inputs, data.val_context) or {})
    history.time_s = time.perf_counter() - start_time
    return history


def _later_stages(
    model: nn.Module, config: TrainConfig, data: _Data, history: History, start_time: float
) -> None:
    """The stages after the first of a model with ``training_stages()`` (see
    :mod:`sbitk.models.contract`), each a run of its own on the same split: ``set_stage(name)``
    switches the model's loss and returns the settings that differ from the first stage's. Each
    stage ends on its best weights; the model is left in its first stage."""
    stages = getattr(model, "training_stages", None)
    stages = tuple(stages()) if callable(stages) else ()
    for name in stages[1:]:
        stage_config = replace(config, **model.set_stage(name))
        record = History(device=history.device)
        device = torch.device(history.device)
        run = _Run(model, stage_config, device, record, start_time, f"training ({name})")
        run.loop(_Rounds(data.epoch_batches, stage_config.epoch_rows), data)
        model.load_state_dict(run.best_state)
        history.stages.append(
            {"stage": name, "epochs": record.epochs, "best_epoch": record.best_epoch,
             "best_val_loss": run.best_val, "stop_reason": record.stop_reason}
        )  # fmt: skip
    if stages:
        model.set_stage(stages[0])


@dataclass
class _Data:
    """The batches of one epoch (a callable) and the held-out rows, on the training device."""

    epoch_batches: Callable[[], Iterator]
    val_inputs: Tensor
    val_context: Tensor | None
    #: Training rows (an estimate from the validation chunks when streaming).
    n_train: int


def _in_memory_data(
    model: nn.Module,
    inputs: Tensor,
    context: Tensor | None,
    config: TrainConfig,
    batches: _Batches,
    history: History,
    group: int = 1,
) -> _Data:
    """Split rows at random into training and validation, ``group`` consecutive rows together;
    standardise on the training rows."""
    inputs, context = check_pair(inputs, context, names=("inputs", "context"))
    n = inputs.shape[0]
    if group < 1 or n % group:
        raise SbitkError(f"{n} rows do not come in groups of {group}")
    n_val = max(1, config.n_validation(n) // group) * group
    if n - n_val < 1:
        raise SbitkError(f"need at least 2 training rows, got {n}")
    perm = torch.randperm(n // group, generator=batches.generator)
    perm = (perm[:, None] * group + torch.arange(group)).reshape(-1)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    device, dtype = batches.device, torch.get_default_dtype()
    train_a = inputs[train_idx].to(device, dtype)
    train_c = None if context is None else context[train_idx].to(device, dtype)
    history.n_train = train_a.shape[0]
    if isinstance(model, Standardizable):
        model.fit_standardization(train_a, train_c)
    val_c = None if context is None else context[val_idx]
    return _Data(
        partial(batches.in_memory, train_a, train_c),
        inputs[val_idx].to(device, dtype),
        _to(val_c, device, dtype),
        history.n_train,
    )


def _streamed_data(
    model: nn.Module,
    source: ChunkSource,
    context: Tensor | None,
    config: TrainConfig,
    batches: _Batches,
    history: History,
) -> _Data:
    """Hold out whole chunks for validation; standardise on a few training chunks."""
    if context is not None:
        raise SbitkError("with a chunk source, context comes from the chunks: pass None")
    if source.n_chunks < 2:
        raise SbitkError(
            f"streaming needs at least 2 chunks (one for validation), got {source.n_chunks}"
        )
    order = torch.randperm(source.n_chunks, generator=batches.generator).tolist()
    n_val_chunks = max(1, round(config.validation_fraction * source.n_chunks))
    val_parts = [source.load(i) for i in order[:n_val_chunks]]
    train_chunks = order[n_val_chunks:]
    for a, c in val_parts:
        check_pair(a, c, names=("inputs", "context"))
    val_a, val_c = _cat(val_parts, config.max_validation)
    device, dtype = batches.device, torch.get_default_dtype()
    if isinstance(model, Standardizable):
        # Statistics from a few training chunks: enough rows for stable moments.
        fit_a, fit_c = _cat([source.load(i) for i in train_chunks[:4]])
        model.fit_standardization(fit_a.to(device, dtype), _to(fit_c, device, dtype))
    history.n_train = -1  # unknown until the first epoch has passed
    per_chunk = sum(p[0].shape[0] for p in val_parts) / len(val_parts)
    return _Data(
        partial(batches.streamed, source, train_chunks),
        val_a.to(device, dtype),
        _to(val_c, device, dtype),
        round(per_chunk * len(train_chunks)),
    )


#: Versions of each held-out row that early stopping scores under an augmentation: the
#: original and random ones, drawn once, so that it watches the loss the augmented training
#: set is fitted to.
VALIDATION_COPIES = 8
#: Most passes over the rows one epoch of augmented training spans (slcp's 4 trials: 4! = 24).
MAX_AUGMENTED_PASSES = 24


def _augmented(data: _Data, augment: Callable, config: TrainConfig) -> tuple[_Data, int]:
    """Training batches passed through ``augment``, and the rows the augmented set counts as.

    An augmentation with ``variety`` distinct versions of each row (``augment.variety``, 1 when
    absent) makes a training set that many times larger: its epochs span that many passes over
    the rows (at most :data:`MAX_AUGMENTED_PASSES`, and ``config.epoch_rows`` rows), and the
    size-dependent settings are those of the rows an epoch sees. Held-out rows are scored in
    :data:`VALIDATION_COPIES` versions, the original and random ones drawn once. Early
    stopping, which counts epochs, then reacts after as many steps as for the same data
    augmented once and for all.
    """
    variety = max(int(getattr(augment, "variety", 1)), 1)
    passes = min(variety, MAX_AUGMENTED_PASSES)
    if config.epoch_rows is not None:
        passes = max(1, min(passes, math.ceil(config.epoch_rows / max(data.n_train, 1))))
    plain = data.epoch_batches

    def epoch() -> Iterator:
        for _ in range(passes):
            for a, c in plain():
                yield augment(a, c)

    copies = min(variety, VALIDATION_COPIES)
    held = [augment(data.val_inputs, data.val_context) for _ in range(copies - 1)]
    val_inputs = torch.cat([data.val_inputs, *[a for a, _ in held]])
    val_context = data.val_context
    if val_context is not None:
        val_context = torch.cat([val_context, *[c for _, c in held]])
    data = replace(data, epoch_batches=epoch, val_inputs=val_inputs, val_context=val_context)
    return data, data.n_train * passes


def _cat(
    parts: list[tuple[Tensor, Tensor | None]], limit: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The ``(inputs, context)`` rows of several chunks as one pair, cut to ``limit`` rows."""
    inputs = torch.cat([p[0] for p in parts])[:limit]
    context = None if parts[0][1] is None else torch.cat([p[1] for p in parts])[:limit]
    return inputs, context


def _settled(config: TrainConfig, n_train: int) -> TrainConfig:
    """``config`` with every setting left to the engine (``None``) fixed for ``n_train`` rows."""
    batch_size, learning_rate = config.resolved(n_train)
    return replace(
        config,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=PATIENCE if config.patience is None else config.patience,
        schedule=config.schedule or "plateau",
        lr_patience=LR_PATIENCE if config.lr_patience is None else config.lr_patience,
    )


class _Run:
    """One optimisation: the optimiser and its rate, the averaged weights, the best weights so
    far and the epochs since the validation loss last improved."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device,
        history: History,
        start_time: float,
        label: str = "training",
    ):
        self.model, self.config, self.device, self.history = model, config, device, history
        self.label = label
        self.start_time = start_time
        self.optimizer = _adamw(model, config.learning_rate, config.weight_decay, device)
        self.lr = config.learning_rate
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema = _EMA(self.params, config.ema_decay) if config.ema_decay else None
        self.best_state = copy.deepcopy(model.state_dict())
        self.best_val = math.inf
        self.stalled = self.stalled_lr = self.step = 0
        #: The ``"anneal"`` schedule's cosine, once begun: its first epoch, its length and the
        #: rate it starts from.
        self.anneal: tuple[int, int, float] | None = None

    def loop(self, feed: _Rounds, data: _Data) -> None:
        """Train epoch by epoch until a stopping rule fires, redoing non-finite epochs."""
        config, history = self.config, self.history
        progress = _progress(config, self.label)
        epoch = 0
        while epoch < config.max_epochs:
            if config.schedule == "cosine":
                self.lr = _cosine(config.learning_rate, config.min_lr, epoch / config.max_epochs)
            elif config.schedule == "anneal":
                self._anneal(epoch)
            losses = self._epoch(feed, data)
            if history.n_train < 0 and feed.pass_rows is not None:
                history.n_train = feed.pass_rows
            if losses is None:
                self._recover(epoch)
                continue  # the epoch is redone from the restored weights
            self._record(epoch, *losses)
            progress.update(1)
            progress.set_postfix(
                train=f"{losses[0]:.4g}", val=f"{losses[1]:.4g}", lr=f"{self.lr:.2g}"
            )
            epoch += 1
            if reason := self._stop_reason():
                history.stop_reason = reason
                break
        else:
            history.stop_reason = f"max_epochs={config.max_epochs} reached"
        progress.close()

    def _anneal(self, epoch: int) -> None:
        """The ``"anneal"`` schedule's rate for ``epoch``: held until the validation loss
        stalls (or late enough to finish by ``max_epochs``), then on a cosine to ``min_lr``."""
        config = self.config
        latest = math.floor(config.max_epochs / (1 + config.anneal_fraction))
        if self.anneal is None and (self.stalled_lr >= config.lr_patience or epoch >= latest):
            length = max(
                1, min(math.ceil(config.anneal_fraction * epoch), config.max_epochs - epoch)
            )
            self.anneal = (epoch, length, self.lr)
        if self.anneal is not None:
            start, length, top = self.anneal
            self.lr = _cosine(top, config.min_lr, (epoch - start + 0.5) / length)

    def _epoch(self, feed: _Rounds, data: _Data) -> tuple[float, float] | None:
        """One epoch's mean training and validation losses; ``None`` if one was not finite."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        count = 0
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        try:
            for a, c in feed.round():
                loss = self._step(a, c)
                finite = finite & torch.isfinite(loss)
                total = total + loss * a.shape[0]
                count += a.shape[0]
            self.model.eval()
            if self.ema is not None:
                self.ema.swap(self.params)  # validate (and keep) the averaged weights
            with torch.no_grad():
                size = max(self.config.batch_size, 4096)
                val = _mean_loss(self.model, data.val_inputs, data.val_context, size)
            # One synchronisation per epoch: the flag and the validation loss.
            ok = bool(finite & torch.isfinite(val))
        except (ValueError, RuntimeError):
            # Weights turned NaN by an earlier step make some models raise (argument
            # validation of torch distributions, say): that is the same event.
            if all(bool(torch.isfinite(p).all()) for p in self.params):
                raise
            ok = False
        return (float(total) / max(count, 1), float(val)) if ok else None

    def _step(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        """One gradient step on a batch (warm-up, clipping, averaging); its mean loss."""
        config = self.config
        scale = min(1.0, (self.step + 1) / config.warmup_steps) if config.warmup_steps else 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale * group["lr_scale"]
        loss = self.model.loss(inputs, context).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, config.clip_grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.params)
        self.step += 1
        return loss.detach()

    def _recover(self, epoch: int) -> None:
        """After a non-finite epoch: restore the best weights and lower the rate, or give up."""
        config, history = self.config, self.history
        history.nan_recoveries += 1
        self.model.load_state_dict(self.best_state)
        if history.nan_recoveries > config.max_nan_recoveries:
            history.stop_reason = "non-finite loss"
            history.time_s = time.perf_counter() - self.start_time
            raise TrainingError(
                f"training loss became NaN or Inf in epoch {epoch} and stayed so after "
                f"{config.max_nan_recoveries} recoveries (restoring the best weights and "
                f"lowering the learning rate to {self.lr:.3g}); check the data scale, lower "
                "learning_rate or clip_grad_norm"
            )
        if self.ema is not None:
            self.ema = _EMA(self.params, config.ema_decay)
        self.lr *= config.nan_lr_factor
        self.optimizer = _adamw(self.model, self.lr, config.weight_decay, self.device)

    def _record(self, epoch: int, train_loss: float, val_loss: float) -> None:
        """Log the epoch; keep its weights if validation improved, else count a stall."""
        history = self.history
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.learning_rate.append(self.lr)
        threshold = self.best_val - self.config.min_improvement * abs(self.best_val)
        if val_loss < threshold or not math.isfinite(self.best_val):
            self.best_val, history.best_epoch = val_loss, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.stalled = self.stalled_lr = 0
        else:
            self.stalled += 1
            self.stalled_lr += 1
        if self.ema is not None:
            self.ema.swap(self.params)  # train on from the raw weights

    def _stop_reason(self) -> str | None:
        """Why training stops after this epoch, or ``None``; decays a stalled plateau's rate."""
        config = self.config
        if self.stalled >= config.patience:
            return f"no validation improvement in {config.patience} epochs"
        if self.anneal is not None and self.history.epochs >= self.anneal[0] + self.anneal[1]:
            return "annealed to min_lr"
        if config.schedule == "plateau" and self.stalled_lr >= config.lr_patience:
            if self.lr * config.lr_decay < config.min_lr:
                return "learning rate reached min_lr"
            self.lr *= config.lr_decay
            self.stalled_lr = 0
        if config.max_time is not None and time.perf_counter() - self.start_time > config.max_time:
            return f"max_time of {config.max_time} s reached"
        return None


def _cosine(high: float, low: float, progress: float) -> float:
    """The rate a cosine from ``high`` to ``low`` has at ``progress`` in [0, 1]."""
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * progress))


class _EMA:
    """Exponential moving average of parameters, with a warm-up of the decay: at most
    (1 + n) / (10 + n) after n steps, an average over about the last n / 9 steps."""

    def __init__(self, params: list[Tensor], decay: float):
        self.decay, self.steps = decay, 0
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list[Tensor]) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in params], 1 - decay)

    @torch.no_grad()
    def swap(self, params: list[Tensor]) -> None:
        for p, s in zip(params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def _to(t: Tensor | None, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(device, dtype)


def _progress(config: TrainConfig, label: str = "training"):
    from tqdm.auto import tqdm

    # disable=None lets tqdm switch itself off when stderr is not a terminal.
    return tqdm(
        total=config.max_epochs,
        desc=label,
        unit="epoch",
        disable=True if not config.progress else None,
        leave=False,
    )


__all__ = [
    "THREADS_ENV",
    "ChunkSource",
    "History",
    "TrainConfig",
    "config_with",
    "resolve_device",
    "thread_limit",
    "torch_threads",
    "train",
]
