"""Progress reporting and cooperative cancellation, shared by the library, the CLI, the workers and the UI.

The library never prints: long operations take `on_progress` (a callable receiving `ProgressEvent`) and
`should_cancel` (a callable returning True when the user asked to stop). They call `report(...)` between steps.

    events = []
    reporter = Reporter(on_progress=events.append, should_cancel=lambda: False)
    reporter.report(stage="calibrate", step=1, total=4, message="batch 1/4")
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable


class Cancelled(RuntimeError):
    """Raised between steps when `should_cancel()` returned True."""


@dataclass
class ProgressEvent:
    stage: str                  # e.g. "load", "calibrate", "slim", "distill", "evaluate", "export"
    step: int = 0               # step inside the stage
    total: int = 0              # steps in the stage (0 = unknown)
    fraction: float = 0.0       # overall progress of the whole job, 0..1
    message: str = ""
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


class Reporter:
    """Forwards events to a callback and raises `Cancelled` when asked to stop.

    `span(lo, hi)` returns a child reporter whose fraction 0..1 maps onto lo..hi of the parent, so nested
    operations (a stage of a multi-stage job) report an overall fraction without knowing about each other.
    """

    def __init__(self, on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                 lo: float = 0.0, hi: float = 1.0):
        self._on_progress = on_progress
        self._should_cancel = should_cancel
        self.lo, self.hi = lo, hi

    def span(self, lo: float, hi: float) -> "Reporter":
        width = self.hi - self.lo
        return Reporter(self._on_progress, self._should_cancel, self.lo + width * lo, self.lo + width * hi)

    def check_cancel(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise Cancelled("cancelled by request")

    def report(self, stage: str, step: int = 0, total: int = 0, message: str = "", **kw) -> None:
        self.check_cancel()
        if self._on_progress is None:
            return
        local = (step / total) if total else 0.0
        frac = self.lo + (self.hi - self.lo) * min(max(local, 0.0), 1.0)
        self._on_progress(ProgressEvent(stage=stage, step=step, total=total, fraction=frac, message=message, **kw))


class Eta:
    """Tokens/s and remaining time from wall clock: eta = (total - done) / done * elapsed."""

    def __init__(self, total: int):
        self.total, self.t0 = total, time.perf_counter()

    def update(self, done: int, tokens: int) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = tokens / elapsed
        eta = (self.total - done) / max(done, 1) * elapsed
        return rate, eta
