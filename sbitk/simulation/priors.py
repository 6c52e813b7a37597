"""Priors over a simulator's parameter vector θ of shape (*, D).

Every prior samples from the ``torch.Generator`` it is given (so a seed fixes the draws),
evaluates ``log_prob``, checks its support, hands out a :class:`~.bijections.Bijection` to
unconstrained space, and writes itself as a JSON ``spec`` that :func:`prior_from_spec` reads back.

Example:
    >>> import torch
    >>> prior = Product([BoxUniform(-1.0, 1.0, dim=2), LogNormal(0.0, 1.0)])
    >>> theta = prior.sample(5, generator=torch.Generator().manual_seed(0))
    >>> theta.shape
    torch.Size([5, 3])
    >>> bool(prior.support_contains(theta).all())
    True
    >>> prior_from_spec(prior.spec()).dim
    3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sbitk.errors import PriorError
from sbitk.simulation.bijections import (
    Bijection,
    IdentityBijection,
    LogBijection,
    LogitBijection,
    StackBijection,
    TorchTransformBijection,
)
from sbitk.simulation.rng import seeded


@runtime_checkable
class Prior(Protocol):
    """What sbitk needs of a prior over θ of shape (*, D)."""

    dim: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, theta: Tensor) -> Tensor: ...

    def support_contains(self, theta: Tensor) -> Tensor: ...

    def bijection(self) -> Bijection: ...

    def spec(self) -> dict: ...


def _vector(value, name: str, dim: int | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(1 if dim is None else dim).clone()
    elif t.dim() != 1:
        raise PriorError(f"{name} must be a scalar or a vector, got shape {tuple(t.shape)}")
    elif dim is not None and t.numel() != dim:
        raise PriorError(f"{name} has {t.numel()} entries, expected dim={dim}")
    if not torch.isfinite(t).all():
        raise PriorError(f"{name} must be finite, got {t.tolist()}")
    return t


def _check_theta(theta: Tensor, dim: int) -> None:
    if theta.dim() == 0 or theta.shape[-1] != dim:
        raise PriorError(f"theta must have shape (*, {dim}), got {tuple(theta.shape)}")


def _like(t: Tensor, ref: Tensor) -> Tensor:
    return t.to(
        dtype=ref.dtype if ref.is_floating_point() else torch.get_default_dtype(),
        device=ref.device,
    )


class _Base:
    dim: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"

    def _out(self, t: Tensor, dtype: torch.dtype | None) -> Tensor:
        return t.to(dtype or torch.get_default_dtype())

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Base) and self.spec() == other.spec()

    __hash__ = None  # type: ignore[assignment]


class BoxUniform(_Base):
    """Independent uniforms on the box ``[low, high]`` (D,).

    Args:
        low: Lower bounds, a scalar (broadcast to ``dim``) or a vector.
        high: Upper bounds, likewise; every ``high > low``.
        dim: Size of θ when both bounds are scalars.
    """

    def __init__(self, low, high, dim: int | None = None):
        low_t = torch.as_tensor(low, dtype=torch.float64)
        high_t = torch.as_tensor(high, dtype=torch.float64)
        if dim is None:
            dim = max(low_t.numel(), high_t.numel())
        self.low = _vector(low_t, "low", dim)
        self.high = _vector(high_t, "high", dim)
        if not (self.high > self.low).all():
            raise PriorError(
                f"BoxUniform needs high > low everywhere, got low={self.low.tolist()}, "
                f"high={self.high.tolist()}"
            )
        self.dim = dim

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        """Draws in the output dtype itself: in float32 (as simulations run) that takes 0.7 of
        the time of a float64 draw rounded down, for the same 24 bits a value keeps."""
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand((n, self.dim), generator=generator, dtype=dtype)
        low, high = self.low.to(dtype), self.high.to(dtype)
        theta = torch.addcmul(low, u, high - low)
        return torch.minimum(theta, high, out=theta)  # rounding may pass high by an ulp

    def support_contains(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        low, high = _like(self.low, theta), _like(self.high, theta)
        return ((theta >= low) & (theta <= high)).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        value = -torch.log(self.high - self.low).sum().item()
        inside = self.support_contains(theta)
        out = torch.full(theta.shape[:-1], value, dtype=theta.dtype, device=theta.device)
        return torch.where(inside, out, torch.full_like(out, -math.inf))

    def bijection(self) -> Bijection:
        return LogitBijection(self.low, self.high)

    @property
    def mean(self) -> Tensor:
        return ((self.low + self.high) / 2).float()

    @property
    def stddev(self) -> Tensor:
        return ((self.high - self.low) / math.sqrt(12)).float()

    def spec(self) -> dict:
        return {"type": "box_uniform", "low": self.low.tolist(), "high": self.high.tolist()}


Uniform = BoxUniform


class Normal(_Base):
    """Independent normals with location ``loc`` and scale ``scale`` (D,)."""

    def __init__(self, loc, scale, dim: int | None = None):
        loc_t, scale_t = torch.as_tensor(loc), torch.as_tensor(scale)
        if dim is None:
            dim = max(loc_t.numel(), scale_t.numel())
        self.loc = _vector(loc_t, "loc", dim)
        self.scale = _vector(scale_t, "scale", dim)
        if not (self.scale > 0).all():
            raise PriorError(f"Normal needs scale > 0, got {self.scale.tolist()}")
        self.dim = dim

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self._out(self.loc + self.scale * z, dtype)

    def support_contains(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        return torch.isfinite(theta).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        loc, scale = _like(self.loc, theta), _like(self.scale, theta)
        z = (theta - loc) / scale
        return (-0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def bijection(self) -> Bijection:
        return IdentityBijection(self.dim)

    @property
    def mean(self) -> Tensor:
        return self.loc.float()

    @property
    def stddev(self) -> Tensor:
        return self.scale.float()

    def spec(self) -> dict:
        return {"type": "normal", "loc": self.loc.tolist(), "scale": self.scale.tolist()}


class MultivariateNormal(_Base):
    """A multivariate normal with mean ``loc`` (D,) and covariance matrix (D, D)."""

    def __init__(self, loc, covariance):
        self.loc = _vector(loc, "loc")
        self.dim = self.loc.numel()
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        if cov.shape != (self.dim, self.dim):
            raise PriorError(
                f"covariance must have shape ({self.dim}, {self.dim}), got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.T):
            raise PriorError("covariance must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov)
        if info.item() != 0:
            raise PriorError("covariance must be positive definite")
        self.covariance = cov
        self.scale_tril = chol

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self._out(self.loc + z @ self.scale_tril.T, dtype)

    def support_contains(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        return torch.isfinite(theta).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        loc, tril = _like(self.loc, theta), _like(self.scale_tril, theta)
        diff = (theta - loc).unsqueeze(-1)
        tril_b = tril.expand(*diff.shape[:-2], self.dim, self.dim)
        sol = torch.linalg.solve_triangular(tril_b, diff, upper=False).squeeze(-1)
        half_logdet = torch.log(torch.diagonal(tril)).sum()
        return -0.5 * (sol**2).sum(-1) - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def bijection(self) -> Bijection:
        return IdentityBijection(self.dim)

    @property
    def mean(self) -> Tensor:
        return self.loc.float()

    @property
    def stddev(self) -> Tensor:
        return torch.sqrt(torch.diagonal(self.covariance)).float()

    def spec(self) -> dict:
        return {"type": "mvn", "loc": self.loc.tolist(), "covariance": self.covariance.tolist()}


class LogNormal(_Base):
    """Independent log-normals: ``log θ ~ Normal(loc, scale)`` (D,)."""

    def __init__(self, loc, scale, dim: int | None = None):
        self._normal = Normal(loc, scale, dim)
        self.dim = self._normal.dim

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        return torch.exp(self._normal.sample(n, generator, torch.float64)).to(
            dtype or torch.get_default_dtype()
        )

    def support_contains(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        return ((theta > 0) & torch.isfinite(theta)).all(-1)

    def log_prob(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        inside = self.support_contains(theta)
        safe = torch.where(theta > 0, theta, torch.ones_like(theta))
        log_theta = torch.log(safe)
        lp = self._normal.log_prob(log_theta) - log_theta.sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def bijection(self) -> Bijection:
        return LogBijection(self.dim)

    @property
    def mean(self) -> Tensor:
        n = self._normal
        return torch.exp(n.loc + n.scale**2 / 2).float()

    @property
    def stddev(self) -> Tensor:
        n = self._normal
        var = (torch.exp(n.scale**2) - 1) * torch.exp(2 * n.loc + n.scale**2)
        return var.sqrt().float()

    def spec(self) -> dict:
        n = self._normal
        return {"type": "lognormal", "loc": n.loc.tolist(), "scale": n.scale.tolist()}


def _device_of(distribution: torch.distributions.Distribution) -> torch.device:
    """Where a torch distribution's parameters live (the CPU for one without any)."""
    for value in vars(distribution).values():
        if isinstance(value, Tensor):
            return value.device
        if isinstance(value, torch.distributions.Distribution):
            return _device_of(value)
    return torch.device("cpu")


class TorchPrior(_Base):
    """Any ``torch.distributions.Distribution`` with event shape () or (D,).

    Sampling draws a seed from the generator given, so draws stay reproducible even though torch
    distributions do not take a generator themselves.
    """

    def __init__(self, distribution: torch.distributions.Distribution):
        if not isinstance(distribution, torch.distributions.Distribution):
            raise PriorError(
                f"TorchPrior needs a torch.distributions.Distribution, got {type(distribution)}"
            )
        if distribution.batch_shape != torch.Size():
            if len(distribution.event_shape) == 0 and len(distribution.batch_shape) == 1:
                distribution = torch.distributions.Independent(distribution, 1)
            else:
                raise PriorError(
                    "TorchPrior needs an empty batch shape (wrap it in Independent), got "
                    f"batch_shape={tuple(distribution.batch_shape)}"
                )
        if len(distribution.event_shape) > 1:
            raise PriorError(
                f"event shape must be () or (D,), got {tuple(distribution.event_shape)}"
            )
        self.distribution = distribution
        self._device = _device_of(distribution)
        self._scalar = len(distribution.event_shape) == 0
        self.dim = 1 if self._scalar else int(distribution.event_shape[0])

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        with seeded(seed, [self._device]):
            theta = self.distribution.sample((n,))
        if self._scalar:
            theta = theta.unsqueeze(-1)
        return self._out(theta, dtype)

    def _forked_generators(self):
        """A context that restores the generators the distribution draws from: the CPU's, and
        its CUDA device's when it lives on one."""
        cuda = [self._device] if self._device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    def _value(self, theta: Tensor) -> Tensor:
        """θ as the distribution takes it: on its device, without a trailing 1 if scalar."""
        value = theta.to(self._device)
        return value.squeeze(-1) if self._scalar else value

    def _contains(self, value: Tensor) -> Tensor:
        """Whether each row of ``value`` (as :meth:`_value` gives it) is finite and inside."""
        ok = self.distribution.support.check(value)
        finite = torch.isfinite(value)
        if not self._scalar:
            finite = finite.all(-1)
            ok = ok.all(-1) if ok.dim() == value.dim() else ok
        return ok & finite

    def support_contains(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        return self._contains(self._value(theta)).to(theta.device)

    def log_prob(self, theta: Tensor) -> Tensor:
        _check_theta(theta, self.dim)
        value = self._value(theta)  # one copy to the distribution's device
        inside = self._contains(value)
        if not bool(inside.all()):  # an anchor inside the support where θ is not
            with self._forked_generators():
                anchor = self.distribution.sample().to(value).expand_as(value)
            value = torch.where(
                inside.unsqueeze(-1) if not self._scalar else inside, value, anchor
            )
        lp = self.distribution.log_prob(value)
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        return lp.to(theta.device, theta.dtype)

    def bijection(self) -> Bijection:
        return TorchTransformBijection(
            torch.distributions.biject_to(self.distribution.support), self.dim, self._device
        )

    @property
    def mean(self) -> Tensor:
        return self.distribution.mean.reshape(self.dim).float()

    @property
    def stddev(self) -> Tensor:
        return self.distribution.stddev.reshape(self.dim).float()

    def spec(self) -> dict:
        dist = self.distribution
        inner = dist.base_dist if isinstance(dist, torch.distributions.Independent) else dist
        params = {}
        for key in inner.arg_constraints:
            value = getattr(inner, key, None)
            if isinstance(value, Tensor):
                params[key] = value.tolist()
        return {
            "type": "torch",
            "class": type(inner).__name__,
            "independent": isinstance(dist, torch.distributions.Independent),
            "params": params,
        }


class Product(_Base):
    """Independent priors over consecutive blocks of θ, concatenated in order."""

    def __init__(self, components: Sequence[Prior]):
        if len(components) == 0:
            raise PriorError("Product needs at least one component prior")
        self.components = [as_prior(c) for c in components]
        self.sizes = [c.dim for c in self.components]
        self.dim = sum(self.sizes)

    def sample(self, n: int, generator=None, dtype=None) -> Tensor:
        parts = [c.sample(n, generator) for c in self.components]
        return torch.cat(parts, -1).to(dtype or torch.get_default_dtype())

    def _split(self, theta: Tensor) -> tuple[Tensor, ...]:
        _check_theta(theta, self.dim)
        return theta.split(self.sizes, dim=-1)

    def support_contains(self, theta: Tensor) -> Tensor:
        parts = self._split(theta)
        ok = torch.ones(theta.shape[:-1], dtype=torch.bool, device=theta.device)
        for c, p in zip(self.components, parts, strict=True):
            ok = ok & c.support_contains(p)
        return ok

    def log_prob(self, theta: Tensor) -> Tensor:
        parts = self._split(theta)
        return sum(c.log_prob(p) for c, p in zip(self.components, parts, strict=True))

    def bijection(self) -> Bijection:
        return StackBijection([c.bijection() for c in self.components])

    @property
    def mean(self) -> Tensor:
        return torch.cat([c.mean for c in self.components])

    @property
    def stddev(self) -> Tensor:
        return torch.cat([c.stddev for c in self.components])

    def spec(self) -> dict:
        return {"type": "product", "components": [c.spec() for c in self.components]}


def as_prior(obj) -> Prior:
    """Accept an sbitk prior or any torch distribution."""
    if isinstance(obj, torch.distributions.Distribution):
        return TorchPrior(obj)
    if isinstance(obj, Prior):
        return obj
    raise PriorError(f"expected a prior or a torch distribution, got {type(obj).__name__}")


def prior_from_spec(spec: dict) -> Prior:
    """Rebuild a prior from its JSON spec. Only known constructors run: never arbitrary code."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise PriorError(f"a prior spec is a dict with a 'type', got {spec!r}")
    kind = spec["type"]
    try:
        if kind == "box_uniform":
            return BoxUniform(spec["low"], spec["high"])
        if kind == "normal":
            return Normal(spec["loc"], spec["scale"])
        if kind == "mvn":
            return MultivariateNormal(spec["loc"], spec["covariance"])
        if kind == "lognormal":
            return LogNormal(spec["loc"], spec["scale"])
        if kind == "product":
            return Product([prior_from_spec(c) for c in spec["components"]])
        if kind == "torch":
            cls = getattr(torch.distributions, str(spec["class"]), None)
            if not (isinstance(cls, type) and issubclass(cls, torch.distributions.Distribution)):
                raise PriorError(f"unknown torch distribution {spec['class']!r}")
            params = {k: torch.tensor(v) for k, v in spec["params"].items()}
            dist = cls(**params)
            if spec.get("independent"):
                dist = torch.distributions.Independent(dist, 1)
            return TorchPrior(dist)
    except (KeyError, TypeError) as exc:
        raise PriorError(f"malformed prior spec of type {kind!r}: {exc}") from exc
    raise PriorError(
        f"unknown prior type {kind!r}; known: box_uniform, normal, mvn, lognormal, product, torch"
    )


__all__ = [
    "BoxUniform",
    "LogNormal",
    "MultivariateNormal",
    "Normal",
    "Prior",
    "Product",
    "TorchPrior",
    "Uniform",
    "as_prior",
    "prior_from_spec",
]
