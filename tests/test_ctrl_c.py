"""ingest.ctrl_c: a Ctrl-C that a library swallows still stops the run; one held while
Ray starts or stops comes afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ingest import ctrl_c


def _ctrl_c_now() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs at the next bytecode


def test_a_swallowed_ctrl_c_is_raised_again_by_check():
    with ctrl_c.watched():
        ctrl_c.check()  # nothing came
        swallowed = False
        try:  # what DuckDB does to one that lands while it reads a registered Arrow table
            _ctrl_c_now()
        except KeyboardInterrupt:
            swallowed = True
        assert swallowed  # it came as usual
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    ctrl_c.check()  # forgotten once the watched block is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nested_blocks_and_other_threads_leave_the_outer_watch_alone():
    with ctrl_c.watched():
        handler = signal.getsignal(signal.SIGINT)
        with ctrl_c.watched():
            assert signal.getsignal(signal.SIGINT) is handler
        assert signal.getsignal(signal.SIGINT) is handler  # the inner block did not restore the default
        t = threading.Thread(target=lambda: ctrl_c.watched().__enter__())
        t.start()
        t.join()
        assert signal.getsignal(signal.SIGINT) is handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_holds_ctrl_c_until_the_block_ends():
    with ctrl_c.watched():
        with ctrl_c.deferred() as came:
            _ctrl_c_now()  # no KeyboardInterrupt here
            assert came
        with pytest.raises(KeyboardInterrupt):  # and a run that checks still stops
            ctrl_c.check()
    with ctrl_c.deferred() as came:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # held inside
    assert came == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_leaves_an_ignored_ctrl_c_ignored():
    """A job started in the background ignores Ctrl-C (SIG_IGN): holding it must not
    turn one sent to the process group into an interrupt."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c.deferred() as came:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _ctrl_c_now()
        assert came == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
