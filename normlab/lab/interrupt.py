"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT
arrives. If that is inside a garbage-collection callback (JAX registers
one, and Keras imports JAX on every backend), Python prints "Exception
ignored in ..." with a traceback and carries on: the run the user meant to
stop trains to the end. :func:`handling` therefore also records the
request, and :func:`check`, which training calls after every batch, raises
it again until it is handled. Python's report of the swallowed interrupt
is dropped (through ``sys.unraisablehook``), since it is raised again: the
user sees one line, not a traceback from JAX's internals.

Example:
    >>> from normlab.lab.interrupt import check, handling
    >>> with handling():
    ...     check()  # nothing requested: returns
"""

from __future__ import annotations

import contextlib
import signal
import sys
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
    ``KeyboardInterrupt`` as Python's default handler does; a
    ``KeyboardInterrupt`` that Python then swallows is not reported. The
    previous handlers are restored on exit, and the request cleared.
    Outside the main thread (where no signal handler can be set) it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        request()
        raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def unraisable(info: "sys.UnraisableHookArgs") -> None:
        if not (isinstance(info.exc_value, KeyboardInterrupt) and _requested.is_set()):
            previous_hook(info)

    previous = signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = unraisable
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _requested.clear()
