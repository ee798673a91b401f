"""The supervisor's back-off with real processes: one that keeps dying is restarted after 0.1, 0.2, 0.4 ... s (capped),
one that stays up resets it, a failing restart is tried again later, and nothing restarts after `pause()`.
(Restarts of the embedded redis-server and worker are in test_worker_recovery.py.)"""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from tests.workers.cluster import wait_for
from workers.supervisor import Supervisor, Watched, exit_text


class Child:
    """A Python child that exits with `code` after `lives_s`; `restart` starts the next one."""

    def __init__(self, lives_s: float, code: int = 3):
        self.lives_s, self.code = lives_s, code
        self.fail_next = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({self.lives_s}); "
                                 f"raise SystemExit({self.code})"])

    def restart(self, exit_code: int) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("port taken")
        self.proc = self._spawn()


def _supervise(child: Child, **kw) -> Supervisor:
    return Supervisor([Watched("child", lambda: child.proc, child.restart)], check_every_s=0.02, **kw).start()


def test_a_process_that_keeps_dying_is_restarted_with_a_doubling_capped_backoff(caplog):
    caplog.set_level(logging.WARNING, logger="workers.supervisor")
    child = Child(lives_s=0)
    sup = _supervise(child, backoff_s=0.1, max_backoff_s=0.4)
    try:
        wait_for(lambda: len(sup.restarts) >= 4, timeout=20, what="four restarts")
    finally:
        sup.stop()
    waits = [w for _, _, w in sup.restarts[:4]]
    assert [code for _, code, _ in sup.restarts[:4]] == [3] * 4
    for got, want in zip(waits, [0.1, 0.2, 0.4, 0.4]):
        assert want <= got < want + 0.3, waits
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("child (pid ") and "exited with code 3; starting it again in 0.1 s" in m for m in messages)
    assert any("restarted" in m and "restart #2" in m for m in messages)


def test_a_process_that_stayed_up_starts_over_at_the_first_backoff():
    child = Child(lives_s=0.5)
    sup = _supervise(child, backoff_s=0.1, max_backoff_s=5, stable_after_s=0.3)
    try:
        wait_for(lambda: len(sup.restarts) >= 3, timeout=20, what="three restarts")
    finally:
        sup.stop()
    assert all(w < 0.4 for _, _, w in sup.restarts[:3]), sup.restarts  # never 0.2, 0.4: it lived 0.5 s each time


def test_a_failed_restart_is_tried_again_later_and_pause_stops_restarts():
    child = Child(lives_s=0)
    child.fail_next = 2
    sup = _supervise(child, backoff_s=0.1, max_backoff_s=1)
    try:
        wait_for(lambda: sup.restarts, timeout=20, what="a restart after two failed ones")
        assert sup.restarts[0][2] >= 0.1 + 0.2 + 0.4  # died, failed twice: waited 0.1, 0.2, then 0.4 s
        sup.pause()
        count, proc = len(sup.restarts), child.proc
        proc.wait(timeout=10)
        time.sleep(0.5)
        assert len(sup.restarts) == count and child.proc is proc
    finally:
        sup.stop()
        child.proc.wait(timeout=10)


@pytest.mark.parametrize("code, text", [(-9, "signal 9"), (1, "code 1"), (None, "code None")])
def test_exit_text(code, text):
    assert exit_text(code) == text
