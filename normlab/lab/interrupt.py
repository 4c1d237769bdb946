"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT
arrives. If that is inside a garbage-collection callback (JAX registers
one, and a process on any backend may have imported JAX), Python prints
"Exception ignored in ..." and carries on: the run the user meant to stop
trains to the end. :func:`handling` therefore also records the request,
and :func:`check`, which training calls after every batch, raises it again
until it is handled.

Example:
    >>> with handling():
    ...     check()  # nothing requested: returns
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


def check() -> None:
    """Raises ``KeyboardInterrupt`` if Ctrl-C was pressed inside
    :func:`handling` (whether or not its first ``KeyboardInterrupt`` got
    through)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def request() -> None:
    """Records a Ctrl-C (what the SIGINT handler does before raising)."""
    _requested.set()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Context manager: SIGINT records the request, then raises
    ``KeyboardInterrupt`` as Python's default handler does. The previous
    handler is restored on exit, and the request cleared. Outside the main
    thread (where no signal handler can be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        request()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
