"""Ctrl-C during a run (normlab.lab.interrupt): a KeyboardInterrupt that
Python swallowed (SIGINT arriving inside a garbage-collection callback,
which prints "Exception ignored in ..." and carries on) is raised again
at the next check, and training checks after every batch."""

from __future__ import annotations

import gc
import signal
import sys

import pytest

from normlab.lab import interrupt, training
from normlab.lab.data import load_dataset
from normlab.lab.experiments import RunConfig


def _swallowed_sigint():
    """The installed SIGINT handler, called as Python calls it, its
    KeyboardInterrupt then discarded as Python discards an exception raised
    in a gc callback (no real signal: the CLI test sends one)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        handler(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass


def test_a_swallowed_ctrl_c_is_raised_at_the_next_check():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.handling():
        interrupt.check()  # nothing requested yet
        _swallowed_sigint()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()  # until handled: the request stands
    assert signal.getsignal(signal.SIGINT) is before
    interrupt.check()  # cleared on exit


class _Finalized:
    """An object whose finalizer is where SIGINT lands, as JAX's gc callback
    was in the CLI test: a real signal, delivered by Python inside
    ``__del__``, whose KeyboardInterrupt CPython then reports and drops."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # Python runs the handler between bytecodes: here
            pass


def _reported(body):
    """What reaches the unraisable hook in place before :func:`handling`
    (Python's default prints "Exception ignored in ..." and a traceback)
    while ``body`` runs inside it."""
    seen = []
    hook, sys.unraisablehook = sys.unraisablehook, seen.append
    try:
        with interrupt.handling():
            body()
    finally:
        sys.unraisablehook = hook
    return [type(info.exc_value) for info in seen]


def test_ctrl_c_lost_in_a_finalizer_is_not_reported_and_is_raised_again():
    def body():
        _Finalized()  # dropped at once: SIGINT lands in its __del__ and is swallowed
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()

    assert _reported(body) == []  # no traceback from inside a finalizer


def test_other_lost_exceptions_are_still_reported():
    class Broken:
        def __del__(self):
            raise ValueError("a finalizer's own bug")

    def body():
        Broken()
        gc.collect()
        interrupt.check()  # nothing requested: a ValueError is not a Ctrl-C

    assert _reported(body) == [ValueError]


def test_training_stops_after_the_batch_in_which_ctrl_c_was_lost(tmp_path):
    config = RunConfig(experiment="t", norms="batch", dataset="synthetic", max_steps=20, batch_size=8,
                       test_subset=32, backend="")
    steps = []

    def on_step():  # Keras may call it off the main thread: it only records the request
        steps.append(1)
        if len(steps) == 2:
            interrupt.request()  # what the handler does before its KeyboardInterrupt got lost

    with interrupt.handling(), pytest.raises(KeyboardInterrupt):
        training.run_one(config, tmp_path / "run", load_dataset("synthetic"), on_step=on_step)
    assert 2 <= len(steps) <= 3, len(steps)  # stopped at the end of the batch that saw it
    assert not (tmp_path / "run" / "summary.json").exists()
