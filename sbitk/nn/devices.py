"""Device names as the user gives them (``"auto"``, ``"cpu"``, ``"cuda:1"``), checked against
what this machine has: one line naming what is missing, never torch's own error.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import itertools

import torch

from sbitk.errors import SbitkError


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` into CUDA when present, else CPU; check other names."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SbitkError(f"device must be 'auto', 'cpu' or 'cuda[:k]', got {device!r}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise SbitkError(
            f"device {device!r} was asked for, but this machine has no {dev.type} device; "
            "pass --device cpu (or auto)"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise SbitkError(
            f"device {device!r} was asked for, but this machine has {count()} {dev.type} "
            f"device(s), numbered from 0"
        )
    return dev


def module_device(obj: object) -> torch.device:
    """Where a module's tensors live, also for a method bound to a module (``flow.log_prob``);
    the CPU for anything else, or a module without tensors."""
    module = getattr(obj, "__self__", obj)
    if not isinstance(module, torch.nn.Module):
        return torch.device("cpu")
    tensors = itertools.chain(module.buffers(), module.parameters())
    return next((t.device for t in tensors), torch.device("cpu"))


def draw_device(like: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where to draw random numbers meant for ``like``'s device: on the generator's, when one
    is given (a generator draws on its own device only), so that a CPU generator gives a model
    on a GPU the same draws as on the CPU; the draws then move to ``like``'s device."""
    return like.device if generator is None else generator.device


def random_like(
    draw, size, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``draw`` (``torch.rand`` or ``torch.randn``) of ``size`` in ``like``'s dtype and on its
    device, drawn where :func:`draw_device` says (one on ``like``'s device avoids the copy)."""
    device = draw_device(like, generator)
    return draw(tuple(size), generator=generator, dtype=like.dtype, device=device).to(like.device)


__all__ = ["draw_device", "module_device", "random_like", "resolve_device"]
