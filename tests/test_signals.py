"""A worker's SIGTERM and Ctrl-C land only at safe points (data loading, training), never inside a
storage call, where an interrupt broke the call's connection and printed the pool's traceback."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nasopt.worker import Stopped, _SignalGuard


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


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job without job control
    try:
        with _SignalGuard().installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, previous)
