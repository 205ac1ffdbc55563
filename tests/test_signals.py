"""A worker's SIGTERM and Ctrl-C land only at safe points (data loading, training), never inside a
storage call, where an interrupt broke the call's connection and printed the pool's traceback."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from nasopt.search.worker import Stopped, _SignalGuard


@pytest.fixture(autouse=True)
def interactive_ctrl_c():
    """Ctrl-C as an interactive Python has it, whatever the test run inherited: a run started in
    the background without job control ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _wait_for_the_signal() -> None:
    for _ in range(1000):  # the handler runs at the next bytecode boundary; this only bounds a failure
        time.sleep(0.01)
    pytest.fail("the signal never arrived")


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Stopped)])
def test_a_signal_during_training_interrupts_it(signum, raised):
    guard = _SignalGuard()
    with pytest.raises(raised), guard.installed(), guard.interruptible():
        os.kill(os.getpid(), signum)
        _wait_for_the_signal()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Stopped)])
def test_a_signal_inside_a_storage_call_waits_for_the_next_safe_point(signum, raised):
    guard = _SignalGuard()
    steps: list[str] = []
    with pytest.raises(raised), guard.installed():
        os.kill(os.getpid(), signum)  # as if it arrived inside a storage call
        time.sleep(0.05)
        steps.append("the storage call finished")
        with guard.interruptible():
            steps.append("trained")
    assert steps == ["the storage call finished"]

    guard = _SignalGuard()
    with pytest.raises(raised), guard.installed():  # no safe point follows: raised on leaving
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
        steps.append("the last storage call finished")
    assert steps[-1] == "the last storage call finished"


def test_a_signal_inside_a_shielded_storage_call_of_training_is_raised_when_it_ends():
    guard = _SignalGuard()
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt), guard.installed(), guard.interruptible():
        with guard.shielded():  # the objective's storage call (the genes, a rung, the record)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("the storage call finished")
        steps.append("training")
    assert steps == ["the storage call finished"]


def test_a_signal_whose_interrupt_python_ignored_is_raised_at_the_end_of_the_epoch(monkeypatch):
    guard = _SignalGuard()
    steps: list[str] = []
    ignored: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))

    class Finalized:
        def __del__(self) -> None:  # Python ignores what a finalizer raises (SQLAlchemy's pool has one)
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_the_signal()

    with pytest.raises(KeyboardInterrupt), guard.installed(), guard.interruptible():
        Finalized()
        steps.append("training went on")
        with guard.shielded():  # the end of the epoch (the objective's on_epoch)
            steps.append("the epoch recorded")
        steps.append("the next epoch")
    assert steps == ["training went on", "the epoch recorded"]
    assert ignored == [KeyboardInterrupt]  # Python's "Exception ignored in ... __del__"


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job without job control
    try:
        with _SignalGuard().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
