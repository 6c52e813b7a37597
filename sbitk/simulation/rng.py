"""Seeding torch's global generators for a block of code, and restoring them after it.

``torch.manual_seed`` seeds the CPU generator and the generator of every CUDA device, while
``torch.random.fork_rng`` restores only the devices it is given: seeding inside
``fork_rng(devices=[])`` leaves every CUDA generator reseeded once CUDA is in use. :func:`seeded`
seeds, and restores, the same generators: the CPU's and those of the CUDA devices named.

Example:
    >>> with seeded(0):
    ...     a = torch.rand(2)
    >>> with seeded(0):
    ...     b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None, devices: Iterable[torch.device | str] = ()) -> Iterator[None]:
    """Within the block, the CPU generator and those of the CUDA ``devices`` (others are
    ignored) start from ``seed``; after it, all of them are as they were. ``None``: no seeding
    and no restoring, the block draws on from the generators' current state."""
    if seed is None:
        yield
        return
    cuda = [d for d in map(torch.device, devices) if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for device in cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def cuda_in_use() -> list[torch.device]:
    """Every CUDA device, once CUDA is initialised in this process; none before."""
    if not torch.cuda.is_initialized():
        return []
    return [torch.device("cuda", k) for k in range(torch.cuda.device_count())]


__all__ = ["cuda_in_use", "seeded"]
