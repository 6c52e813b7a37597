r"""Latent-variable estimators: the conditional VAE family and a plain autoencoder.

A conditional variational autoencoder models :math:`a` given :math:`c` through a latent code
:math:`z` of ``latent`` dimensions,

.. math::
    p(a \mid c) = \int p(a \mid z, c)\, p(z \mid c)\, dz,

with an encoder :math:`q(z \mid a, c) = \mathcal{N}(z; \mu(a, c), \mathrm{diag}\,\sigma^2(a, c))`.
Training maximises the evidence lower bound (β-weighted, with the InfoVAE maximum mean
discrepancy between the aggregate codes :math:`q(z)` and the prior where configured)

.. math::
    \mathcal{L}_\beta(a, c) = \mathbb{E}_{q(z \mid a, c)}[\log p(a \mid z, c)]
        - \beta\, \mathrm{KL}[q(z \mid a, c) \,\|\, p(z \mid c)]
        - \lambda\, \mathrm{MMD}^2[q(z), p(z)],

and the density offered to the rest of sbitk is the importance-weighted estimate

.. math::
    \log \hat p_K(a \mid c) = \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(a \mid z_k, c)\, p(z_k \mid c)}{q(z_k \mid a, c)},
    \qquad z_k = \mu + \sigma \odot \varepsilon_k,

a lower bound in expectation (:math:`\mathrm{ELBO} = \hat p_1 \le \hat p_K \le \log p`) that
tightens as K grows. The :math:`\varepsilon_k` come from a fixed-seed generator (common random
numbers), so ``log_prob`` is a deterministic function of its inputs, as MCMC needs.

The default is a Gaussian decoder under a learnt conditional flow prior
(``prior="flow"``: a conditional NSF over z given c), trained with free bits. With it the
latent does the work: the prior carries the bent, multi-modal shape in z and the decoder maps
it to a with little noise. The KL of a flow prior has no closed form, so the loss uses the
one-draw Monte Carlo term :math:`\log q(z \mid a, c) - \log p(z \mid c)` at the same
reparametrised z, and the importance weights use the flow's :math:`\log p(z_k \mid c)`. Free
bits (Kingma et al., 2016) replace the batch-mean KL by ``free_bits`` nats while it is below
that: without them the code collapsed at once (two_moons NPE, 10,000 simulations: KL 0.001
nats a row, C2ST 0.99, a diagonal Gaussian given x), with 2 nats it settled above them and
stayed used. As a posterior the networks are 128 wide (two hidden layers; see
:meth:`ConditionalVAE.role_options`). Measured with 10,000 simulations, over all 10 reference
observations (2,000 samples a side, sbibm's classifier): mean C2ST 0.538 on two_moons NPE (0.563
with the earlier 64-wide networks; KL 2.8 nats a row, both units active), 0.537 on
gaussian_linear NPE (observations 1-5; KL 2.2, 10 of 10 units active); 0.524, 0.523 on two_moons
NLE (observations 1-2, 64 wide; KL 2.8, 93 nats; 0.516, 0.516 with 64 importance samples
instead of 128).

The textbook variants stay available: ``decoder="gaussian"`` (diagonal, learnt variance) with
``prior="standard"`` (:math:`\mathcal{N}(0, I)`) and ``free_bits=0`` is the plain (C)VAE, whose
posteriors are visibly worse since a diagonal Gaussian can neither rotate nor bend (two_moons
C2ST 0.73, 0.76); ``decoder="full"`` gives the Gaussian a full covariance (a Cholesky factor
from the network); ``decoder="flow"`` is a conditional NSF over a given [z, c], accurate
(two_moons C2ST 0.53) but with a collapsed latent (KL 0.001-0.007 nats a row under the
standard prior): it is then an NSF with an idle code.

Example:
    >>> import torch
    >>> vae = ConditionalVAE(2, 3, decoder="gaussian", iw_samples=8)
    >>> dist = vae(torch.zeros(4, 3))
    >>> dist.sample((5,)).shape, dist.log_prob(torch.zeros(4, 2)).shape
    (torch.Size([5, 4, 2]), torch.Size([4]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sbitk.errors import SbitkError
from sbitk.models.base import StandardizedEstimator, check_inputs
from sbitk.models.contract import ESTIMATED
from sbitk.models.flows.nsf import BOX_NSF_OPTIONS, NLE_NSF_OPTIONS, NSF
from sbitk.nn.devices import random_like
from sbitk.nn.mlp import MLP
from sbitk.nn.standardize import Standardize

DECODERS = ("gaussian", "full", "flow")
PRIORS = ("standard", "conditional", "flow")
#: softplus(0 + _SHIFT) = 1: scales start at one.
_SHIFT = math.log(math.e - 1)
_LOG_2PI = math.log(2 * math.pi)
#: Hidden widths of every network of the posterior role (see :meth:`ConditionalVAE.role_options`).
POSTERIOR_HIDDEN = (128, 128)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of :class:`ConditionalVAE` (JSON-ready).

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context (0: an unconditional VAE).
        latent: Size L of the code (0: as many as ``features``).
        hidden_features: Hidden widths of the encoder, the Gaussian decoder and the
            conditioners of the flow prior and the flow decoder. As a posterior (NPE) the
            default is (128, 128); see :meth:`ConditionalVAE.role_options`.
        activation: Activation of the networks.
        decoder: ``"gaussian"`` (diagonal, learnt variance; the default), ``"full"`` (full
            covariance, Cholesky factor from the network) or ``"flow"`` (a conditional NSF
            over a given [z, c]). On two_moons NPE with 10,000 simulations (2,000 samples a
            side) under the standard prior C2ST was 0.53 with the flow, whose latent collapsed
            (KL 0.001-0.007 nats a row), and 0.73, 0.76 (observations 1, 2) with the diagonal
            Gaussian.
        prior: ``"flow"`` (a conditional NSF :math:`p(z \\mid c)`; the default),
            ``"standard"`` (:math:`\\mathcal{N}(0, I)`) or ``"conditional"`` (a diagonal
            Gaussian :math:`p(z \\mid c)` from a network of c, as in Sohn et al.). With the
            flow prior and the diagonal decoder (free bits 2, 3,000 samples a side) two_moons
            NPE reached C2ST 0.508, 0.544 with 2.5 nats a row in the code, where the full
            covariance decoder under the same prior gave 0.71, 0.73 (one seed).
        beta: Weight β of the KL term (β-VAE); 1 is the ELBO.
        mmd_weight: Weight λ of the MMD between the batch's codes and prior draws (InfoVAE).
        iw_samples: K of the importance-weighted ``log_prob``. 128: with the active code the
            bound is looser than with an idle one; on the contract's 1-D check (a model after
            three steps) the estimated mass was 0.89 with K = 64, 0.95 with 128.
        free_bits: Nats of batch-mean KL a row left unpenalised (Kingma et al., 2016): while
            the batch's mean KL is below it, the KL term is this constant. 0 gives the ELBO.
            Without them the default collapsed (two_moons KL 0.001 nats a row, C2ST 0.99);
            with 5 nats C2ST was 0.74, 0.78 (default training), with 2 nats 0.51, 0.54. Only
            training changes: ``log_prob`` is the importance-weighted bound either way.
        decoder_scale: Initial scale of the Gaussian decoders (in standardised units).
        transforms, bins, bound, permutation: The flow prior's and flow decoder's
            (:class:`~sbitk.models.flows.nsf.NSF`).
        seed: Seed of the common random numbers of ``log_prob``.
    """

    features: int
    context: int = 0
    latent: int = 0
    hidden_features: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    decoder: str = "gaussian"
    prior: str = "flow"
    beta: float = 1.0
    mmd_weight: float = 0.0
    iw_samples: int = 128
    free_bits: float = 2.0
    decoder_scale: float = 1.0
    transforms: int = 5
    bins: int = 8
    bound: float = 5.0
    permutation: str = "random"
    seed: int = 0


class ConditionalVAE(StandardizedEstimator):
    r"""Conditional VAE :math:`p(a \mid c) = \int p(a \mid z, c)\, p(z \mid c)\, dz`.

    One class covers the unconditional VAE (``context=0``), the conditional VAE, the β-VAE
    (``beta``) and the InfoVAE/MMD-VAE (``mmd_weight > 0``); see the module docstring for the
    objective and the density estimate, and :class:`VAEConfig` for the options.

    Args:
        features: Size D of the modelled vector.
        context: Size C of the context.
        **options: Further fields of :class:`VAEConfig`.

    References:
        Kingma & Welling, "Auto-encoding variational Bayes" (2013), arXiv:1312.6114.
        Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders" (2015),
        arXiv:1509.00519.
        Higgins et al., "β-VAE: learning basic visual concepts with a constrained variational
        framework", ICLR 2017.
        Zhao, Song & Ermon, "InfoVAE: information maximizing variational autoencoders" (2017),
        arXiv:1706.02262.
        Kingma et al., "Improved variational inference with inverse autoregressive flow"
        (2016), arXiv:1606.04934 (free bits).
        Sohn, Lee & Yan, "Learning structured output representation using deep conditional
        generative models", NeurIPS 2015.
    """

    #: Its options, checked by name and kind before it is built.
    config_class: ClassVar[type] = VAEConfig
    density: ClassVar[str] = ESTIMATED
    #: As a posterior on a box prior, model θ itself with the NSF's box options (as the NSF):
    #: on two_moons (10,000 simulations, observations 1-2, 5,000 samples a side) C2ST went from
    #: 0.565, 0.571 through the logit to 0.525, 0.542 on θ.
    box_on_theta: ClassVar[bool] = True

    def __init__(self, features: int, context: int = 0, **options):
        super().__init__(int(features), int(context))
        known = {f.name for f in dataclasses.fields(VAEConfig)} - {"features", "context"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise SbitkError(f"ConditionalVAE: expected options among {sorted(known)}: {unknown}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        cfg = VAEConfig(int(features), int(context), **options)
        if cfg.latent == 0:
            cfg = dataclasses.replace(cfg, latent=cfg.features)
        _check(cfg)
        self._decoder_shift = math.log(math.expm1(cfg.decoder_scale))
        self.config = cfg
        d, c, z, hidden = cfg.features, cfg.context, cfg.latent, cfg.hidden_features
        self.encoder = MLP(d + c, 2 * z, hidden, cfg.activation)
        flow_options = dict(
            transforms=cfg.transforms,
            hidden_features=hidden,
            activation=cfg.activation,
            bins=cfg.bins,
            bound=cfg.bound,
            permutation=cfg.permutation,
            seed=cfg.seed,
        )
        if cfg.prior == "conditional":
            self.prior_net = MLP(c, 2 * z, hidden, cfg.activation)
        elif cfg.prior == "flow":
            self.prior_flow = NSF(z, c, **flow_options)
        if cfg.decoder == "gaussian":
            self.decoder = MLP(z + c, 2 * d, hidden, cfg.activation)
        elif cfg.decoder == "full":
            self.decoder = MLP(z + c, 2 * d + d * (d - 1) // 2, hidden, cfg.activation)
            self.register_buffer("_tril", torch.tril_indices(d, d, -1), persistent=False)
        else:
            self.decoder = NSF(d, z + c, **flow_options)

    @classmethod
    def role_options(cls, role: str, box: bool) -> dict:
        """Default options for a role (see :mod:`sbitk.models.contract`): the flow parts take
        the NSF's (learnt linear maps as a likelihood, finer splines on a box); as a posterior
        every network is 128 wide (:data:`POSTERIOR_HIDDEN`).

        Two_moons NPE, 10,000 simulations, all 10 reference observations (2,000 samples a
        side): mean C2ST 0.563 with the box NSF's (64, 64, 64) (0.604 with 10,000 samples a
        side), 0.538 with (128, 128) (0.531 with training seed 1), 0.539 with (128, 128)
        and 8 prior transforms instead of 5. On gaussian_linear NPE (observations 1-5) (128,
        128) gave 0.537. As a likelihood the widths stay (64, 64) (measured there: two_moons
        NLE 0.524, 0.523 on observations 1-2)."""
        if role == "likelihood":
            return dict(NLE_NSF_OPTIONS)
        options = dict(BOX_NSF_OPTIONS) if box else {}
        return options | {"hidden_features": POSTERIOR_HIDDEN}

    @classmethod
    def train_defaults(cls) -> dict:
        """Training settings left unset: more patience than a flow's. With the flows' (10
        stalled epochs, plateau after 4) the default stopped after 53 s on two_moons NPE
        (10,000 simulations, observations 1-2) at C2ST 0.72, 0.74; with these after 260 epochs
        at 0.51, 0.54."""
        return {"patience": 30, "lr_patience": 10}

    def encode(self, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean and scale of :math:`q(z \\mid a, c)` for standardised a (*, D), c (*, C)."""
        h = self.encoder.forward_pair(a, c)
        mu, raw = h.chunk(2, -1)
        return mu, F.softplus(raw + _SHIFT) + 1e-4

    def prior_params(self, c: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of a Gaussian :math:`p(z \\mid c)` (broadcastable against ``like``
        (*, L)); the flow prior has none."""
        if self.config.prior == "standard":
            return like.new_zeros(()), like.new_ones(())
        if self.config.prior == "flow":
            raise SbitkError("ConditionalVAE: the flow prior is not Gaussian")
        mu, raw = self.prior_net(c).chunk(2, -1)
        return mu, F.softplus(raw + _SHIFT) + 1e-4

    def prior_log_prob(self, z: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\log p(z \\mid c)` for codes z (*, L) and standardised contexts c (*, C)."""
        if self.config.prior == "flow":
            return self.prior_flow(None if c is None else c.expand(*z.shape[:-1], -1)).log_prob(z)
        return _normal_log_prob(z, *self.prior_params(c, z))

    def prior_sample(
        self, shape: Sequence[int], c: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """Reparametrised codes ``(*shape, *c.shape[:-1], L)`` from :math:`p(z \\mid c)`."""
        if self.config.prior == "flow":
            return self.prior_flow(c).rsample(shape, generator)
        batch = () if c is None else c.shape[:-1]
        ref = self.inputs.mean
        size = torch.Size(shape) + batch + (self.config.latent,)
        eps = random_like(torch.randn, size, ref, generator)
        p_mu, p_sigma = self.prior_params(c, eps)
        return p_mu + p_sigma * eps

    def _decoder_gaussian(self, zc: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (*, D) and scale factor of the Gaussian decoders: the diagonal scales (*, D), or
        the lower-triangular Cholesky factor (*, D, D) of the full covariance."""
        d = self.config.features
        h = self.decoder(zc)
        loc, raw = h[..., :d], h[..., d : 2 * d]
        scale = F.softplus(raw + self._decoder_shift) + 1e-3
        if self.config.decoder == "gaussian":
            return loc, scale
        rows, cols = self._tril
        tril = h.new_zeros(*h.shape[:-1], d, d)
        tril[..., rows, cols] = h[..., 2 * d :]
        return loc, tril + torch.diag_embed(scale)

    def decoder_log_prob(self, a: Tensor, z: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\log p(a \\mid z, c)` in standardised units, a (*, D), z (*, L), c (*, C)."""
        zc = z if c is None else torch.cat([z, c.expand(*z.shape[:-1], -1)], -1)
        if self.config.decoder == "flow":
            return self.decoder(zc).log_prob(a)
        loc, scale = self._decoder_gaussian(zc)
        if self.config.decoder == "gaussian":
            return _normal_log_prob(a, loc, scale)
        resid = (a - loc).expand(loc.shape).unsqueeze(-1)
        white = torch.linalg.solve_triangular(scale, resid, upper=False).squeeze(-1)
        log_det = scale.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * white.square().sum(-1) - log_det - 0.5 * loc.shape[-1] * _LOG_2PI

    def decoder_sample(
        self, z: Tensor, c: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """One draw of standardised a for each code z (*, L)."""
        zc = z if c is None else torch.cat([z, c.expand(*z.shape[:-1], -1)], -1)
        if self.config.decoder == "flow":
            return self.decoder(zc).rsample((), generator)
        loc, scale = self._decoder_gaussian(zc)
        eps = random_like(torch.randn, loc.shape, loc, generator)
        if self.config.decoder == "gaussian":
            return loc + scale * eps
        return loc + (scale @ eps.unsqueeze(-1)).squeeze(-1)

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Negative (β-weighted, MMD-penalised) ELBO per row of ``inputs`` (B, D): shape (B,).

        One reparametrised code per row; the KL is analytic between diagonal Gaussians and,
        with the flow prior, the one-draw Monte Carlo term
        :math:`\\log q(z \\mid a, c) - \\log p(z \\mid c)` at that same code. The MMD penalty, a
        batch quantity, is spread equally over the rows.
        """
        cfg = self.config
        a, c = self.inputs(inputs), self.standardized_context(context)
        mu, sigma = self.encode(a, c)
        z = mu + sigma * torch.randn_like(mu)
        kl = self.kl(z, mu, sigma, c)
        nll = -self.decoder_log_prob(a, z, c) - self.inputs.log_abs_det()
        if cfg.free_bits > 0:
            kl = torch.where(kl.mean() > cfg.free_bits, kl, kl.new_full((), cfg.free_bits))
        loss = nll + cfg.beta * kl
        if cfg.mmd_weight > 0:
            loss = loss + cfg.mmd_weight * mmd(z, self.prior_sample((), c, None))
        return loss

    def kl(self, z: Tensor, mu: Tensor, sigma: Tensor, c: Tensor | None) -> Tensor:
        """:math:`\\mathrm{KL}[q(z \\mid a, c) \\| p(z \\mid c)]` per row (*): in closed form for a
        Gaussian prior, else the Monte Carlo term :math:`\\log q(z) - \\log p(z \\mid c)` at the
        reparametrised code z (*, L) drawn from q = N(mu, diag sigma²)."""
        if self.config.prior == "flow":
            return _normal_log_prob(z, mu, sigma) - self.prior_log_prob(z, c)
        return _kl_normal(mu, sigma, *self.prior_params(c, z)).sum(-1)

    def forward(self, context: Tensor | None = None) -> LatentDistribution:
        """The distribution of a given ``context`` (*, C), batched over its leading shape."""
        return LatentDistribution(self, self.standardized_context(context))


def _check(cfg: VAEConfig) -> None:
    problems = [
        (cfg.features >= 1 and cfg.context >= 0 and cfg.latent >= 1, "features, latent >= 1"),
        (cfg.decoder in DECODERS, f"decoder in {DECODERS}"),
        (cfg.prior in PRIORS, f"prior in {PRIORS}"),
        (cfg.prior != "conditional" or cfg.context > 0, "a conditional prior needs a context"),
        (cfg.beta >= 0 and cfg.mmd_weight >= 0, "beta, mmd_weight >= 0"),
        (cfg.iw_samples >= 1, "iw_samples >= 1"),
        (cfg.free_bits >= 0 and cfg.decoder_scale > 0, "free_bits >= 0, decoder_scale > 0"),
    ]
    bad = [what for ok, what in problems if not ok]
    if bad:
        raise SbitkError(f"ConditionalVAE: expected {'; '.join(bad)}, found {cfg}")


class LatentDistribution:
    """What :class:`ConditionalVAE` returns for a (batch of) context(s).

    ``sample((n,))`` gives ``(n, *batch_shape, D)``; ``log_prob(a)`` with a of shape
    ``(..., *batch_shape, D)`` gives the importance-weighted estimate ``(..., *batch_shape)``.

    Args:
        model: The VAE.
        context: The standardised context (*, C), or None.
    """

    #: Largest number of rows × importance samples evaluated at once (CPU; 16 times on CUDA).
    chunk = 2**16

    def __init__(self, model: ConditionalVAE, context: Tensor | None):
        self.model, self.context = model, context
        self.batch_shape = torch.Size(() if context is None else context.shape[:-1])
        self.event_shape = torch.Size((model.config.features,))

    @property
    def _ref(self) -> Tensor:
        return self.model.inputs.mean

    def rsample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws ``(*shape, *batch_shape, D)``: :math:`z \\sim p(z \\mid c)`, then the decoder."""
        m, c = self.model, self.context
        a = m.decoder_sample(m.prior_sample(shape, c, generator), c, generator)
        return m.inputs.inverse(a)

    @torch.no_grad()
    def sample(
        self, shape: Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws ``(*shape, *batch_shape, D)``, without gradients."""
        return self.rsample(shape, generator)

    def log_weights(self, a: Tensor, k: int, seed: int | None = None) -> Tensor:
        """Log importance weights :math:`\\log w_k` (k, ..., *batch_shape) of inputs a.

        The k standard-normal draws are shared by every row and come from a generator seeded
        with ``seed`` (the config's when None): the result is a deterministic function of a.
        """
        m, d = self.model, self.model.config.features
        shape = check_inputs(a, d, self.batch_shape)
        rows = m.inputs(a).expand(*shape, d).reshape(-1, d)
        c = self.context
        c = None if c is None else c.expand(*shape, c.shape[-1]).reshape(rows.shape[0], -1)
        ref = self._ref
        g = torch.Generator(device=ref.device).manual_seed(m.config.seed if seed is None else seed)
        eps = torch.randn((k, 1, m.config.latent), generator=g, device=ref.device, dtype=ref.dtype)
        per = max(1, self.chunk * (16 if ref.is_cuda else 1) // k)
        parts = []
        for start in range(0, rows.shape[0], per):
            ci = None if c is None else c[start : start + per]
            parts.append(_log_weights(m, rows[start : start + per], ci, eps))
        lw = torch.cat(parts, 1) if parts else rows.new_zeros(k, 0)
        return (lw + m.inputs.log_abs_det()).reshape(k, *shape)

    def iwae(self, a: Tensor, k: int | None = None, seed: int | None = None) -> Tensor:
        """The importance-weighted bound :math:`\\log \\hat p_K(a \\mid c)` with K = ``k``."""
        k = self.model.config.iw_samples if k is None else k
        return torch.logsumexp(self.log_weights(a, k, seed), 0) - math.log(k)

    def elbo(self, a: Tensor, k: int | None = None, seed: int | None = None) -> Tensor:
        """The ELBO :math:`\\mathbb{E}_q[\\log w]`, estimated with ``k`` shared draws."""
        k = self.model.config.iw_samples if k is None else k
        return self.log_weights(a, k, seed).mean(0)

    def log_prob(self, a: Tensor) -> Tensor:
        """Deterministic importance-weighted log-density of a (..., *batch_shape, D)."""
        return self.iwae(a)

    def __repr__(self) -> str:
        return f"LatentDistribution(batch_shape={tuple(self.batch_shape)})"


def _log_weights(m: ConditionalVAE, a: Tensor, c: Tensor | None, eps: Tensor) -> Tensor:
    """:math:`\\log p(a \\mid z_k, c) + \\log p(z_k \\mid c) - \\log q(z_k \\mid a, c)`, (K, N),
    for standardised rows a (N, D), c (N, C) and shared draws eps (K, 1, L)."""
    mu, sigma = m.encode(a, c)
    z = mu + sigma * eps
    k = eps.shape[0]
    ck = None if c is None else c.expand(k, *c.shape)
    log_q = _normal_log_prob(z, mu, sigma)
    return m.decoder_log_prob(a.expand(k, *a.shape), z, ck) + m.prior_log_prob(z, ck) - log_q


def _normal_log_prob(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over the last dimension."""
    return (-0.5 * ((x - loc) / scale).square() - scale.log() - 0.5 * _LOG_2PI).sum(-1)


def _kl_normal(mu: Tensor, sigma: Tensor, p_mu: Tensor, p_sigma: Tensor) -> Tensor:
    """Elementwise :math:`\\mathrm{KL}[\\mathcal{N}(\\mu, \\sigma^2) \\| \\mathcal{N}(m, s^2)]`."""
    ratio = (sigma / p_sigma).square()
    return 0.5 * (ratio + ((mu - p_mu) / p_sigma).square() - 1 - ratio.log())


def mmd(x: Tensor, y: Tensor) -> Tensor:
    r"""Squared maximum mean discrepancy between samples x (N, L) and y (M, L).

    .. math::
        \mathrm{MMD}^2 = \overline{k(x, x')} + \overline{k(y, y')} - 2\, \overline{k(x, y)},
        \qquad k(u, v) = \exp\!\left(-\frac{\|u - v\|^2}{2L}\right),

    the biased (V-statistic) estimate with the Gaussian kernel of InfoVAE's bandwidth.

    Example:
        >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
        >>> bool(mmd(x, x + 3) > 10 * mmd(x, x.flip(0) + 0.01))
        True
    """
    scale = 2.0 * x.shape[-1]

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(u, v).square() / scale).mean()

    return k(x, x) + k(y, y) - 2 * k(x, y)


class Autoencoder(nn.Module):
    r"""A deterministic autoencoder :math:`\hat a = g(f(a))` with a ``latent``-wide bottleneck.

    It has no density (so it is no estimator): its loss is the squared reconstruction error of
    the standardised inputs, :math:`\ell(a) = \|s(a) - g(f(s(a)))\|^2`.

    Args:
        features: Size D of the inputs.
        latent: Size of the code.
        hidden_features: Hidden widths of the encoder and the decoder.
        activation: Activation of both.

    Example:
        >>> ae = Autoencoder(3, latent=1)
        >>> ae.loss(torch.randn(8, 3)).shape, ae.encode(torch.randn(8, 3)).shape
        (torch.Size([8]), torch.Size([8, 1]))
    """

    def __init__(
        self,
        features: int,
        latent: int = 2,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
    ):
        super().__init__()
        self.standardization = Standardize(features)
        self.encoder = MLP(features, latent, hidden_features, activation)
        self.decoder = MLP(latent, features, hidden_features, activation)

    def fit_standardization(self, inputs: Tensor, context: Tensor | None = None) -> Autoencoder:
        """Set the z-scoring statistics from training rows."""
        self.standardization.fit(inputs)
        return self

    def encode(self, a: Tensor) -> Tensor:
        """The code (*, latent) of inputs a (*, D)."""
        return self.encoder(self.standardization(a))

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction (*, D) of codes z (*, latent), in the inputs' units."""
        return self.standardization.inverse(self.decoder(z))

    def forward(self, a: Tensor) -> Tensor:
        """The reconstruction of a (*, D)."""
        return self.decode(self.encode(a))

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """Squared reconstruction error per row of the standardised inputs, shape (B,)."""
        s = self.standardization(inputs)
        return (s - self.decoder(self.encoder(s))).square().sum(-1)


__all__ = ["Autoencoder", "ConditionalVAE", "LatentDistribution", "VAEConfig", "mmd"]
