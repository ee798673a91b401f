"""Supervisor: start a process again when it dies (the embedded redis-server and Celery worker).

A thread looks every `check_every_s` at each watched process. When one has exited it is started again after a
back-off: `backoff_s` for the first death, doubled for each death that follows quickly on a restart, at most
`max_backoff_s`; a process that stayed up `stable_after_s` starts over at `backoff_s`. A restart that fails (the
binary is gone, the port is taken) counts as a quick death. Every death and restart is logged with the exit status
and the delay, and recorded in `restarts`.

The thread that starts a process is the one its PR_SET_PDEATHSIG is tied to, so the supervisor must outlive what it
started: `pause()` stops the restarts (the owner then stops the processes), `stop()` ends the thread.

    sup = Supervisor([Watched("redis", lambda: svc.redis_proc, svc.restart_redis)]).start()
    ...; sup.pause(); stop the processes; sup.stop()
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class Watched:
    """A process to keep alive: `current()` gives it (None: not started), `restart(exit_code)` starts it again and
    raises when it cannot."""

    name: str
    current: Callable[[], subprocess.Popen | None]
    restart: Callable[[int], None]
    backoff_s: float = 0.0            # the next delay; 0 until the first death
    due_at: float | None = None       # when the pending restart is due (monotonic), None when alive
    died_at: float = 0.0
    up_since: float = field(default_factory=time.monotonic)


def exit_text(code: int | None) -> str:
    """'signal 9' for a negative Popen return code, 'code 1' otherwise."""
    return f"signal {-code}" if code is not None and code < 0 else f"code {code}"


class Supervisor:
    def __init__(self, watched: list[Watched], *, check_every_s: float = 0.5, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, stable_after_s: float = 60.0):
        self.watched = watched
        self.check_every_s, self.backoff_s = check_every_s, backoff_s
        self.max_backoff_s, self.stable_after_s = max_backoff_s, stable_after_s
        self.restarts: list[tuple[str, int | None, float]] = []  # (name, exit code, seconds from death to restart)
        self._paused, self._stop = threading.Event(), threading.Event()
        self._busy = threading.Lock()  # held while a restart runs, so pause() waits for it
        self._thread = threading.Thread(target=self._loop, name="studio-supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self._thread.start()
        return self

    def pause(self) -> None:
        """No restart from now on; returns once a restart under way has finished."""
        self._paused.set()
        with self._busy:
            pass

    def stop(self) -> None:
        self.pause()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.check_every_s):
            with self._busy:
                if self._paused.is_set():
                    continue
                for w in self.watched:
                    try:
                        self._check(w)
                    except Exception:  # never let one bad restart end the supervision of the rest
                        log.exception("supervising %s failed", w.name)

    def _check(self, w: Watched) -> None:
        proc, now = w.current(), time.monotonic()
        if proc is None:
            return
        code = proc.poll()
        if code is None:
            if now - w.up_since >= self.stable_after_s:
                w.backoff_s = 0.0
            return
        if w.due_at is None:
            w.died_at = now
            self._schedule(w, now, f"{w.name} (pid {proc.pid}) exited with {exit_text(code)}")
        if now < w.due_at:
            return
        try:
            w.restart(code)
        except Exception as exc:  # noqa: BLE001 - logged; tried again after a longer back-off
            self._schedule(w, time.monotonic(), f"restarting {w.name} failed ({exc})")
            return
        waited = time.monotonic() - w.died_at
        self.restarts.append((w.name, code, waited))
        w.due_at, w.up_since = None, time.monotonic()
        log.warning("%s restarted (pid %s) %.1f s after it died; restart #%d", w.name, w.current().pid, waited,
                    sum(r[0] == w.name for r in self.restarts))

    def _schedule(self, w: Watched, now: float, what: str) -> None:
        w.backoff_s = min(self.max_backoff_s, w.backoff_s * 2 if w.backoff_s else self.backoff_s)
        w.due_at = now + w.backoff_s
        log.warning("%s; starting it again in %.1f s", what, w.backoff_s)
