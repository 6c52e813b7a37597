"""A ceiling on what torch's factories allocate inside a block, checked before each allocation.

Building a network from a config allocates its weights through torch's factory functions
(``torch.empty`` and the like). :class:`AllocationBudget` counts the values they ask for and
refuses the call that would take the total past a budget, before it allocates: a config whose
sizes are far too large (layers 100,000 wide, a million members) then fails at once with one
line, not as an out-of-memory kill minutes later.

Example:
    >>> import torch
    >>> with AllocationBudget(1_000, lambda used: ValueError(f"{used} values asked for")):
    ...     small = torch.zeros(10, 10)
    ...     torch.zeros(100, 100)
    Traceback (most recent call last):
    ...
    ValueError: 10100 values asked for
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode


def _prod(size) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, Sequence) and all(isinstance(v, int) for v in size):
        return math.prod(size)
    return 0


def requested(func, args: tuple, kwargs: dict) -> int:
    """Values a torch factory call asks for (0 when it cannot tell)."""
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        return _prod(n) * _prod(m)
    if func is torch.randperm:
        return _prod(args[0] if args else kwargs.get("n", 0))
    if func in (torch.arange, torch.linspace):
        return 0  # sized by values, not a size: small in every constructor here
    if func is torch.randint:
        return _prod(kwargs.get("size", next((a for a in args if isinstance(a, Sequence)), ())))
    if "size" in kwargs:
        return _prod(kwargs["size"])
    return _prod(args[0] if args and (len(args) == 1 or func is torch.full) else args)


class AllocationBudget(TorchFunctionMode):
    """Counts the values torch factories allocate inside the block and raises ``refuse(used)``
    at the call that would take the total past ``budget``, before it allocates."""

    FACTORIES = frozenset(
        {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
         torch.randint, torch.randperm, torch.eye, torch.empty_strided}
    )  # fmt: skip

    def __init__(self, budget: float, refuse: Callable[[int], Exception]):
        super().__init__()
        self.budget, self.refuse, self.used = budget, refuse, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            self.used += requested(func, args, kwargs)
            if self.used > self.budget:
                raise self.refuse(self.used)
        return func(*args, **kwargs)


__all__ = ["AllocationBudget", "requested"]
