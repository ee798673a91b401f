"""RunMonitor: the bookkeeping thread beside one running job.

- Progress: `on_progress(event)` only stores the newest event (the pipeline never waits on the database); the thread
  writes it to the run row as soon as `progress_every_s` has passed since the previous write. So the row lags the
  pipeline by at most `progress_every_s` (plus one write), and a chatty pipeline costs one UPDATE per interval.
- Heartbeat: every `heartbeat_s` without a progress write, the thread stamps `heartbeat_at`.
- Cancel: `should_cancel()` reads the run's cancel flag from the database at most every `cancel_poll_s`.
- Lost claim: if a write matches no row (the reaper failed the run, or it was deleted), `lost` turns True and
  `should_cancel()` answers True, so the pipeline stops instead of finishing a run nobody owns.

    with RunMonitor(run_id, token, heartbeat_s=5, progress_every_s=1) as mon:
        run_recipe(recipe, out_dir, on_progress=mon.on_progress, should_cancel=mon.should_cancel)
"""
from __future__ import annotations

import logging
import threading
import time

from compressor.progress import ProgressEvent
from storage import repo

log = logging.getLogger(__name__)


class RunMonitor:
    def __init__(self, run_id: int, token: str, *, heartbeat_s: float, progress_every_s: float,
                 cancel_poll_s: float = 0.5, log_every_s: float = 10.0):
        self.run_id, self.token = run_id, token
        self.heartbeat_s, self.progress_every_s = heartbeat_s, progress_every_s
        self.cancel_poll_s, self.log_every_s = cancel_poll_s, log_every_s
        self.lost = False
        self.writes = 0
        self._pending: ProgressEvent | None = None
        self._mutex = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        now = time.monotonic()
        self._last_beat = self._last_log = now
        self._last_write = now - progress_every_s  # the first event is written at once
        self._logged_stage: str | None = None
        self._cancel, self._last_cancel_check = False, 0.0
        self._thread = threading.Thread(target=self._loop, name=f"run-{run_id}-monitor", daemon=True)

    # -- called by the pipeline (its own thread) ----------------------------------------------------------------
    def on_progress(self, event: ProgressEvent) -> None:
        with self._mutex:
            self._pending = event
        self._wake.set()

    def should_cancel(self) -> bool:
        if self.lost or self._cancel:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= self.cancel_poll_s:
            self._last_cancel_check = now
            try:
                self._cancel = repo.is_cancel_requested(self.run_id)
            except Exception:  # a database hiccup must not kill the job; ask again next time
                log.warning("run %s: could not read the cancel flag", self.run_id, exc_info=True)
        return self._cancel

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "RunMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(flush=exc[0] is None)

    def stop(self, *, flush: bool = True) -> None:
        """Stop the thread; with `flush`, write the last pending event first."""
        if self._thread.is_alive():
            self._stop.set()
            self._wake.set()
            self._thread.join()
        if flush:
            self._write_pending()

    # -- the thread -----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set() and not self.lost:
            now = time.monotonic()
            try:
                if self._pending is not None and now - self._last_write >= self.progress_every_s:
                    self._write_pending()
                elif now - self._last_beat >= self.heartbeat_s:
                    self._beat()
            except Exception:
                log.warning("run %s: progress/heartbeat write failed; retrying", self.run_id, exc_info=True)
                self._last_beat = time.monotonic() - self.heartbeat_s + min(1.0, self.heartbeat_s)
            due = [self._last_beat + self.heartbeat_s]
            if self._pending is not None:
                due.append(self._last_write + self.progress_every_s)
            self._wake.wait(max(0.0, min(due) - time.monotonic()))
            self._wake.clear()

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        if not repo.heartbeat(self.run_id, self.token):
            self.lost = True

    def _write_pending(self) -> None:
        with self._mutex:
            event, self._pending = self._pending, None
        if event is None or self.lost:
            return
        now = time.monotonic()
        line = None
        if event.stage != self._logged_stage or (event.message and now - self._last_log >= self.log_every_s):
            line = f"{event.stage}: {event.message}" if event.message else f"{event.stage}"
            self._logged_stage, self._last_log = event.stage, now
        ok = repo.update_progress(self.run_id, self.token, progress=event.fraction, stage=event.stage,
                                  step=event.step, total=event.total, message=event.message, loss=event.loss,
                                  eta_s=event.eta_s, tokens_per_s=event.tokens_per_s, log=line)
        self._last_write = self._last_beat = now
        self.writes += 1
        if not ok:
            self.lost = True
