"""Ctrl-C during a run (normlab.lab.interrupt): a KeyboardInterrupt that
Python swallowed (SIGINT arriving inside a garbage-collection callback,
which prints "Exception ignored in ..." and carries on) is raised again
at the next check, and training checks after every batch."""

from __future__ import annotations

import signal

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
