"""The CPU threads torch uses in sbitk's work: one rule for the command line and the Python API.

Lowest layer that needs it (training, the posteriors' sampling and the workflow all use it).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch

from sbitk.errors import SbitkError

#: The environment variable that sets torch's CPU threads in sbitk's work (the CLI's --threads).
THREADS_ENV = "SBITK_THREADS"


def torch_threads() -> int:
    """CPU threads torch uses while sbitk trains or samples: ``SBITK_THREADS``, else 1.

    The networks here are small: one thread is usually fastest, and more on a busy machine can
    be many times slower (NPE on 3,000 two_moons rows on two busy cores: 11 s on one thread,
    62 s on torch's default of two). The command line's ``--threads`` sets the same variable.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return 1
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise SbitkError(f"{THREADS_ENV} must be an integer >= 1, got {text!r}")
    return threads


@contextlib.contextmanager
def thread_limit():
    """Run the block with :func:`torch_threads` CPU threads, then restore torch's setting (the
    library changes no global state that outlives a call)."""
    threads, before = torch_threads(), torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def limited_threads(step: Callable) -> Callable:
    """``step`` run under :func:`thread_limit`: the decorator of the public calls that sample,
    train or diagnose, so that the Python API is as fast as the command line."""

    @functools.wraps(step)
    def limited(*args, **kwargs):
        with thread_limit():
            return step(*args, **kwargs)

    return limited


__all__ = ["THREADS_ENV", "limited_threads", "thread_limit", "torch_threads"]
