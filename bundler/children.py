"""Child processes that must not outlive the service."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """Run in the child: SIGKILL it when the service dies, even by kill -9 (Linux; elsewhere
    the deadlines still hold), so nothing goes on writing into a work dir that the next
    start removes."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)
