"""What this machine can hold: sizes checked up front, before anything is written.

A request that cannot fit (a trillion simulations, a batch of a billion rows, a trillion posterior
draws) must fail at once with one line that names the request, what it needs and what is there,
never as an out-of-memory kill, a hang or a traceback minutes later. The checks here compare an
estimate in bytes with the memory available now (:func:`available_memory`) or with the free space
of the disk that will hold the data (:func:`free_disk`).

Example:
    >>> check_memory(1024, "a tiny table", "ask for less")
    >>> format_bytes(18 * 10**12)
    '18 TB'
"""

from __future__ import annotations

import os
from pathlib import Path

from sbitk.errors import SbitkError

__all__ = [
    "MAX_BATCHES",
    "MEMORY_FRACTION",
    "available_memory",
    "check_disk",
    "check_memory",
    "format_bytes",
    "free_disk",
]

#: Most batches one bank may plan: each has its own chunk files and a "done" flag, and a plan of
#: more would take longer to list than to simulate.
MAX_BATCHES = 1_000_000
#: Share of the available memory one step may plan to use (the rest is for copies the libraries
#: underneath make, and for everything else running).
MEMORY_FRACTION = 0.5


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units, e.g. ``'18 TB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory this process may still use: what the system has available, capped by
    a cgroup (container) limit where there is one."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 2**63
    return min(free, _cgroup_room())


def _cgroup_room() -> int:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return 2**63
    if limit == "max":
        return 2**63
    return max(int(limit) - int(used), 0)


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would, once created)."""
    import shutil

    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        where = where.parent
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return 2**63


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Raise :class:`SbitkError` when ``what`` needs more than :data:`MEMORY_FRACTION` of the
    available memory.

    Args:
        nbytes: The estimated need in bytes.
        what: The request, as the user said it (``"sampling 10^12 draws"``).
        fix: What to do instead (``"ask for fewer draws (-n)"``).
    """
    room = available_memory()
    if nbytes > MEMORY_FRACTION * room:
        raise SbitkError(
            f"{what} needs about {format_bytes(nbytes)} of memory, more than half of the "
            f"{format_bytes(room)} available; {fix}"
        )


def check_disk(nbytes: float, path: str | os.PathLike, what: str, fix: str) -> None:
    """Raise :class:`SbitkError` when ``what`` needs more than the free space at ``path``."""
    room = free_disk(path)
    if nbytes > room:
        raise SbitkError(
            f"{what} needs about {format_bytes(nbytes)} on disk at {path}, which has "
            f"{format_bytes(room)} free; {fix}"
        )
