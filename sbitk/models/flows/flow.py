r"""The flow model: standardisation, optional embedding, a transform, a standard-normal base.

A :class:`Flow` is an ``nn.Module``; calling it with a context returns a
:class:`FlowDistribution` over the inputs, batched over the contexts given. Its one training
contract is the negative log-likelihood

.. math:: \ell(x, c) = -\log q(x \mid c)
          = -\log \mathcal{N}(f(x; e(c)); 0, I) - \log|\det J_f(x; e(c))|,

where :math:`e` standardises (and optionally embeds) the context and :math:`f` starts with the
z-scoring of the inputs, so densities stay correct in the original space.

Named flows (NICE, RealNVP, Glow, NSF, MAF) subclass :class:`Flow`; each has a frozen config
dataclass of JSON-serialisable fields and rebuilds from it with ``from_config``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError
from sbitk.models.base import check_inputs
from sbitk.models.contract import EXACT
from sbitk.models.flows.stacked import stackable, stacked_forward
from sbitk.models.flows.transforms import (
    Composite,
    LULinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    StandardizeTransform,
    Transform,
)
from sbitk.nn.devices import random_like
from sbitk.nn.embeddings import embedding_from_spec
from sbitk.nn.standardize import Standardize

#: The ``permutation`` choices of :class:`FlowConfig`.
PERMUTATIONS = ("random", "reverse", "lu", "none")


class FlowError(SbitkError, ValueError):
    """A flow was built or called with inputs of the wrong shape or invalid options."""


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Fields every named flow has.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        transforms: Number of flow steps.
        hidden_features: Hidden layer sizes of each conditioner.
        activation: Activation of the conditioners.
        permutation: What mixes the dimensions between steps: ``"random"``, ``"reverse"`` (fixed
            permutations), ``"lu"`` (a learnt invertible linear map in LU form, starting at the
            identity, as between nflows' spline couplings) or ``"none"``.
        seed: Seed of the fixed random parts (permutations, initial rotations).
        embedding: Spec of a built-in embedding net (see :mod:`sbitk.nn.embeddings`), or None.
    """

    features: int
    context: int = 0
    transforms: int = 5
    hidden_features: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    permutation: str = "random"
    seed: int = 0
    embedding: dict | nn.Module | None = None


def make_config(
    config_class: type[FlowConfig], features: int, context: int, options: Mapping[str, Any]
) -> FlowConfig:
    """Build a named flow's config from its keyword options, naming any unknown option."""
    known = {f.name for f in dataclasses.fields(config_class)} - {
        "features",
        "context",
        "embedding",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise FlowError(
            f"{config_class.__name__}: expected options among {sorted(known)}, found {unknown}"
        )
    options = {k: _tuples(v) for k, v in options.items()}
    hidden = options.get("hidden_features", ())
    if not isinstance(hidden, tuple) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise FlowError(
            f"{config_class.__name__}: expected hidden_features as a tuple of positive ints, "
            f"found {hidden!r}"
        )
    return config_class(int(features), int(context), **options)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """:math:`\\log \\mathcal{N}(z; 0, I)` over the last dimension: a flow's base density."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


#: What :meth:`Flow.summed_loss` does not call: a flow class that changes one of them is not
#: evaluated in one pass.
_ONE_PASS_SKIPS = ("loss", "forward", "embed")


class FlowDistribution:
    """The distribution a flow defines for a fixed (batch of) context(s).

    Shapes follow torch distributions: ``batch_shape`` is the context's leading shape and
    ``event_shape`` is ``(D,)``; ``sample((n,))`` returns ``(n, *batch_shape, D)`` and
    ``log_prob(x)`` takes x of shape ``(..., *batch_shape, D)`` (broadcasting).

    Args:
        flow: The flow.
        context: The standardised and embedded context (*, E), or None.
    """

    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None):
        self.flow = flow
        self.context = context
        self.batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.event_shape = torch.Size((flow.features,))

    def _context_for(self, shape: torch.Size) -> Tensor | None:
        if self.context is None:
            return None
        return self.context.expand(*shape, self.context.shape[-1])

    def _base_log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of ``x`` (..., *batch_shape, D), shape (..., *batch_shape)."""
        d = self.flow.features
        shape = check_inputs(x, d, self.batch_shape, FlowError)
        z, logdet = self.flow.transform(x.expand(*shape, d), self._context_for(shape))
        return self._base_log_prob(z) + logdet

    def _latent(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        ref = self.flow.input_standardization.mean
        full = torch.Size(shape) + self.batch_shape + self.event_shape
        return random_like(torch.randn, full, ref, generator)

    def rsample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparametrised samples ``(*shape, *batch_shape, D)``, differentiable in the weights."""
        z = self._latent(shape, generator)
        return self.flow.transform.inverse(z, self._context_for(z.shape[:-1]))

    @torch.no_grad()
    def sample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Samples ``(*shape, *batch_shape, D)``."""
        return self.rsample(shape, generator)

    def sample_and_log_prob(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples ``(*shape, *batch_shape, D)`` and their log-densities, in one pass."""
        z = self._latent(shape, generator)
        x, logdet = self.flow.transform.inverse_and_log_det(z, self._context_for(z.shape[:-1]))
        return x, self._base_log_prob(z) + logdet

    def __repr__(self) -> str:
        shape, d = tuple(self.batch_shape), self.flow.features
        return f"FlowDistribution(batch_shape={shape}, features={d})"


class Flow(nn.Module):
    """A normalizing flow ``q(x | c)`` with input/context standardisation and optional embedding.

    Subclasses (the named flows) build their config and the body of transforms; this class
    adds the z-scoring of the inputs as the first transform, the context standardisation and
    embedding, and the distribution, loss and config plumbing.

    Args:
        config: The flow's config.
        embedding: A built-in embedding net or its spec, any ``nn.Module`` with ``out_features``
            (then not rebuildable from the config), or None.

    Example:
        A conditional flow trained through its loss, then sampled for two contexts:

        >>> import torch
        >>> from sbitk.models.flows import NSF
        >>> theta, x = torch.randn(256, 2), torch.randn(256, 3)
        >>> flow = NSF(2, 3, transforms=2, hidden_features=(16,)).fit_standardization(theta, x)
        >>> opt = torch.optim.AdamW(flow.parameters(), lr=1e-3)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     flow.loss(theta, x).mean().backward()
        ...     opt.step()
        >>> flow(x[:2]).sample((100,)).shape
        torch.Size([100, 2, 2])
    """

    config_class: ClassVar[type[FlowConfig]] = FlowConfig
    #: ``log_prob`` is exact for every flow (see :mod:`sbitk.models.contract`).
    density: ClassVar[str] = EXACT
    #: Size of the set embedding that :meth:`trial_options` gives a context of i.i.d. trials.
    trial_embedding_features: ClassVar[int] = 32

    @classmethod
    def trial_options(cls, blocks: Sequence[tuple[int, int, int]], missing: bool) -> dict:
        """A set embedding of the trials, which may be absent if ``missing`` (see
        :mod:`sbitk.models.contract` and :class:`~sbitk.nn.embeddings.SetEmbedding`)."""
        if len(blocks) != 1:
            raise FlowError(f"flow: a set embedding takes one block of trials, got {len(blocks)}")
        offset, trials, width = blocks[0]
        return {"embedding": {
            "type": "set", "out_features": cls.trial_embedding_features, "trials": trials,
            "width": width, "offset": offset, "missing": missing,
        }}  # fmt: skip

    def __init__(self, config: FlowConfig, embedding: nn.Module | Mapping | None = None):
        super().__init__()
        if config.features < 1 or config.context < 0 or config.transforms < 1:
            raise FlowError(
                "flow: expected features >= 1, context >= 0 and transforms >= 1, found "
                f"features={config.features}, context={config.context}, "
                f"transforms={config.transforms}"
            )
        if config.permutation not in PERMUTATIONS:
            raise FlowError(
                "flow: expected permutation 'random', 'reverse', 'lu' or 'none', "
                f"found {config.permutation!r}"
            )
        self.features, self.context_features = config.features, config.context
        self.embedding: nn.Module | None = None
        embedded = config.context
        if embedding is not None and config.context == 0:
            raise FlowError("flow: an embedding net needs a context, found context=0")
        if isinstance(embedding, Mapping):  # a spec; it reads the whole context unless it says
            embedding = embedding_from_spec({"in_features": config.context, **embedding})
        if embedding is not None:
            embedded = getattr(embedding, "out_features", None)
            if not isinstance(embedded, int):
                raise FlowError(
                    "flow: expected the embedding net to have an integer attribute "
                    f"'out_features', found {embedded!r}"
                )
            expects = getattr(embedding, "in_features", config.context)
            if expects != config.context:
                raise FlowError(
                    f"flow: expected an embedding net reading {config.context} context "
                    f"features, found one reading {expects}"
                )
            spec = embedding.spec() if hasattr(embedding, "spec") else None
            if spec is None:
                spec = {"type": "custom", "out_features": embedded}
            config = dataclasses.replace(config, embedding=spec)
            self.embedding = embedding
        self.config = config
        self.embedded_context = embedded
        self.context_standardization = Standardize(config.context) if config.context else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.transform = Composite([StandardizeTransform(config.features), *self.build()])
        del self.generator

    def build(self) -> list[Transform]:
        """The body of transforms, data side first (implemented by the named flows)."""
        raise NotImplementedError

    def permutation(self) -> list[Permutation | LULinear]:
        """The configured mixing between two steps, as a list of zero or one transform."""
        kind, d = self.config.permutation, self.features
        if kind == "none" or d < 2:
            return []
        if kind == "reverse":
            return [ReversePermutation(d)]
        if kind == "lu":
            return [LULinear(d, self.generator)]
        return [RandomPermutation(d, self.generator)]

    @property
    def input_standardization(self) -> Standardize:
        """The z-scoring of the inputs (the first transform)."""
        return self.transform.transforms[0].standardize

    @classmethod
    def from_config(cls, config: FlowConfig | Mapping) -> Flow:
        """Build a fresh flow of the same architecture from a config or its ``asdict``.

        A flow with a user-provided embedding net cannot be rebuilt this way.
        """
        if isinstance(config, FlowConfig):
            config = dataclasses.asdict(config)
        options = {k: _tuples(v) for k, v in dict(config).items()}
        options["embedding"] = config.get("embedding")  # a spec dict: left as is
        return cls(**options)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> Flow:
        """Set the z-scoring statistics of the inputs (and context) from training data.

        Called once before training. ActNorm layers (Glow) initialise themselves separately, on
        their first forward pass in training mode.

        Args:
            inputs: Training inputs (N, D).
            context: Training contexts (N, C), if the flow is conditional.

        Returns:
            The flow itself.
        """
        self.input_standardization.fit(inputs)
        if self.context_standardization is not None and context is not None:
            self.context_standardization.fit(context)
        return self

    def embed(self, context: Tensor | None) -> Tensor | None:
        """Standardise and embed a raw context (*, C) into what the conditioners see (*, E)."""
        if self.context_standardization is None:
            if context is not None:
                raise FlowError(
                    "flow: this flow is unconditional (context=0), found a context of shape "
                    f"{tuple(context.shape)}"
                )
            return None
        c = self.context_features
        if context is None or context.dim() == 0 or context.shape[-1] != c:
            found = None if context is None else tuple(context.shape)
            raise FlowError(f"flow: expected a context of shape (*, {c}), found {found}")
        context = self.context_standardization(context)
        return context if self.embedding is None else self.embedding(context)

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The distribution ``q(x | context)``, batched over the context's leading dimensions."""
        return FlowDistribution(self, self.embed(context))

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative log-likelihood :math:`-\\log q(x \\mid c)` per row, shape (*)."""
        return -self(context).log_prob(inputs)

    @staticmethod
    def summed_loss(
        flows: Sequence[Flow], inputs: Tensor, context: Tensor | None = None
    ) -> Tensor | None:
        """:math:`-\\sum_k \\log q_k(x \\mid c)` per row (B,) of flows built alike, in one pass
        (:mod:`~sbitk.models.flows.stacked`; see :mod:`sbitk.models.contract`); None where the
        flows or the rows do not stack. An epoch of the NPE default, an ensemble of three spline
        flows, cost 1.4 to 1.7 times less so (docs/benchmarks.md). A flow class with its own
        ``loss``, ``forward`` or ``embed`` is left to them."""
        cls = type(flows[0])
        own = any(getattr(cls, name) is not getattr(Flow, name) for name in _ONE_PASS_SKIPS)
        if own or not stackable(flows, inputs, context):
            return None
        z, log_det = stacked_forward(flows, inputs, context)
        return -(standard_normal_log_prob(z) + log_det).sum(0)


__all__ = ["Flow", "FlowConfig", "FlowDistribution", "FlowError"]
