"""Repository functions for runs: small verbs, each one short transaction.

Lifecycle and the rules that keep it consistent with several workers and a reaper:

    queued --mark_started (atomic: UPDATE ... WHERE status='queued')--> running --> succeeded | failed | cancelled
    queued --request_cancel--> cancelled (never starts)

`mark_started` hands the worker a claim token; every later write of that worker (progress, heartbeat, the final
status) matches `id AND claim_token AND status='running'`, so a redelivered task cannot run a run twice and a worker
the reaper already gave up on cannot overwrite the verdict. A write that matches no row returns False: the run is no
longer yours, stop.

Every run timestamp (created, sent, started, heartbeat, finished) and every cutoff is the database's clock
(`storage.clock.db_now`), never the calling machine's: a worker whose clock is off is neither reaped early nor kept
alive late.

    run_id = create_run({"model": "demo"})
    token = mark_started(run_id, worker="w1@host", pid=123)   # None if another worker has it
    update_progress(run_id, token, progress=0.5, stage="distill", message="step 5/10")
"""
from __future__ import annotations

import math
import uuid

from sqlalchemy import case, delete, select, update

from .clock import db_now
from .db import session_scope
from .models import Artifact, Run, RunLog, RunStatus

RUNNING, QUEUED = RunStatus.running.value, RunStatus.queued.value
WAITING = "waiting for the broker"


class RunNotFound(LookupError):
    """No run with this id (it was never created, or it was deleted)."""


def _ours(run_id: int, token: str):
    return (Run.id == run_id) & (Run.claim_token == token) & (Run.status == RUNNING)


def _log(session, run_id: int, message: str, level: str = "info") -> None:
    session.add(RunLog(run_id=run_id, message=message, level=level))


def _fail_running(session, run_id: int, error: str, where=True) -> bool:
    """Mark a running run failed with `error` (and `where`, e.g. still stale) and log it; False if it was not."""
    res = session.execute(update(Run).where((Run.id == run_id) & (Run.status == RUNNING) & where).values(
        status=RunStatus.failed.value, error=error, finished_at=db_now(), message="failed: worker lost"))
    if res.rowcount != 1:
        return False
    _log(session, run_id, error, "error")
    return True


# -- create / read --------------------------------------------------------------------------------------------
def create_run(recipe: dict, *, name: str = "", parent_run_id: int | None = None) -> int:
    """Insert a queued run holding `recipe` (already validated by the caller) and return its id."""
    with session_scope() as s:
        run = Run(recipe=recipe, name=name, parent_run_id=parent_run_id,
                  status=QUEUED, progress=0.0, stage="", step=0, total_steps=0, message="queued",
                  attempts=0, cancel_requested=False, created_at=db_now(), send_count=0, tags=[], notes="")
        s.add(run)
        s.flush()
        _log(s, run.id, "queued" + (f" (re-run of run {parent_run_id})" if parent_run_id else ""))
        return run.id


def get_run(run_id: int) -> Run:
    """The run row (detached; column attributes only). Raises `RunNotFound`."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist (deleted, or never created)")
        return run


def list_runs(*, status: str | None = None, limit: int = 500) -> list[Run]:
    """Newest first; optionally only one status."""
    with session_scope() as s:
        q = select(Run).order_by(Run.id.desc()).limit(limit)
        if status is not None:
            q = q.where(Run.status == status)
        return list(s.scalars(q))


TAG_MAX, TAGS_MAX, NOTES_MAX = 40, 20, 4000


def clean_tags(tags) -> list[str]:
    """Tags as stored: stripped, non-empty, at most `TAG_MAX` characters each, no duplicates (first kept), at most
    `TAGS_MAX`. A string is split at commas.

        clean_tags("baseline, keep-0.5,baseline")     # ["baseline", "keep-0.5"]
    """
    if isinstance(tags, str):
        tags = tags.split(",")
    out = [t.strip()[:TAG_MAX] for t in tags or [] if isinstance(t, str) and t.strip()]
    return list(dict.fromkeys(out))[:TAGS_MAX]


def set_run_notes(run_id: int, *, tags=None, notes: str | None = None) -> Run:
    """Replace a run's tags (`clean_tags`) and / or notes (cut to `NOTES_MAX`), in any status; the updated row.
    Raises `RunNotFound`."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist (deleted, or never created)")
        if tags is not None:
            run.tags = clean_tags(tags)
        if notes is not None:
            run.notes = str(notes)[:NOTES_MAX]
        s.flush()
        return run


def queued_run_ids() -> list[int]:
    with session_scope() as s:
        return list(s.scalars(select(Run.id).where(Run.status == QUEUED).order_by(Run.id)))


# -- the broker's side: which queued runs need a message ----------------------------------------------------------
def runs_due_for_send(*, older_than_s: float) -> list[int]:
    """Queued runs never sent, or last sent more than `older_than_s` ago by the database's clock; oldest first."""
    due = Run.sent_at.is_(None) | (Run.sent_at < db_now(-older_than_s))
    with session_scope() as s:
        return list(s.scalars(select(Run.id).where((Run.status == QUEUED) & due).order_by(Run.id)))


def mark_sent(run_id: int, *, note: str | None = None) -> bool:
    """Record that a message for the queued run went to the broker (`sent_at = now`, `send_count + 1`), log `note`.
    A "waiting for the broker" message goes back to "queued". False when the run is not queued any more."""
    with session_scope() as s:
        res = s.execute(update(Run).where((Run.id == run_id) & (Run.status == QUEUED)).values(
            sent_at=db_now(), send_count=Run.send_count + 1,
            message=case((Run.message.startswith(WAITING), "queued"), else_=Run.message)))
        if res.rowcount == 1 and note:
            _log(s, run_id, note)
        return res.rowcount == 1


def mark_waiting_for_broker(run_id: int, reason: str) -> None:
    """The broker did not take the run's message: say so on the queued row (the reaper sends it when it is back)."""
    message = f"{WAITING} ({reason}); it is sent as soon as the broker is reachable again"
    with session_scope() as s:
        if s.execute(update(Run).where((Run.id == run_id) & (Run.status == QUEUED)).values(
                message=message[:2000])).rowcount == 1:
            _log(s, run_id, message, "warning")


def get_logs(run_id: int) -> list[RunLog]:
    with session_scope() as s:
        return list(s.scalars(select(RunLog).where(RunLog.run_id == run_id).order_by(RunLog.id)))


def get_artifacts(run_id: int) -> list[Artifact]:
    with session_scope() as s:
        return list(s.scalars(select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)))


def add_log(run_id: int, message: str, *, level: str = "info") -> None:
    with session_scope() as s:
        _log(s, run_id, message, level)


# -- the worker's side ----------------------------------------------------------------------------------------
def mark_started(run_id: int, *, worker: str, pid: int, token: str | None = None) -> str | None:
    """Claim a queued run atomically; return the claim token, or None when it is not queued any more
    (already running elsewhere, finished, cancelled or deleted).

    Retrying after a database error, pass the same `token`: when the first attempt committed but its answer was
    lost, the retry finds the run running under this token and returns it instead of None."""
    token = token or str(uuid.uuid4())
    with session_scope() as s:
        res = s.execute(update(Run).where((Run.id == run_id) & (Run.status == QUEUED)).values(
            status=RUNNING, claim_token=token, started_at=db_now(), heartbeat_at=db_now(), worker=worker,
            worker_pid=pid, attempts=Run.attempts + 1, message="started", finished_at=None))
        if res.rowcount != 1:
            held = s.scalar(select(Run.claim_token).where((Run.id == run_id) & (Run.status == RUNNING)))
            return token if held == token else None
        _log(s, run_id, f"started on {worker} (pid {pid})")
    return token


def heartbeat(run_id: int, token: str) -> bool:
    """Stamp `heartbeat_at = now`. False when the run is no longer this worker's."""
    with session_scope() as s:
        return s.execute(update(Run).where(_ours(run_id, token)).values(heartbeat_at=db_now())).rowcount == 1


def update_progress(run_id: int, token: str, *, progress: float, stage: str, step: int = 0, total: int = 0,
                    message: str = "", loss: float | None = None, eta_s: float | None = None,
                    tokens_per_s: float | None = None, log: str | None = None) -> bool:
    """Write the live progress (also a heartbeat); optionally append `log` to the run's log."""
    def finite(x):
        return None if x is None or not math.isfinite(x) else float(x)
    values = dict(progress=min(max(float(progress), 0.0), 1.0), stage=stage[:64], step=int(step),
                  total_steps=int(total), message=message, loss=finite(loss), eta_s=finite(eta_s),
                  tokens_per_s=finite(tokens_per_s), heartbeat_at=db_now())
    with session_scope() as s:
        ok = s.execute(update(Run).where(_ours(run_id, token)).values(**values)).rowcount == 1
        if ok and log:
            _log(s, run_id, log)
        return ok


def is_cancel_requested(run_id: int) -> bool:
    with session_scope() as s:
        return bool(s.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def mark_succeeded(run_id: int, token: str, *, metrics: dict, stages: list[dict],
                   artifacts: list[tuple[str, str, int, str]]) -> bool:
    """Record the results (`metrics` is the result contract of compressor/result.py, `stages` its per-stage
    part) and the verdict in one transaction. `artifacts`: (kind, path, bytes, sha256)."""
    with session_scope() as s:
        res = s.execute(update(Run).where(_ours(run_id, token)).values(
            status=RunStatus.succeeded.value, progress=1.0, finished_at=db_now(), metrics=metrics, stages=stages,
            message="succeeded", eta_s=0.0))
        if res.rowcount != 1:
            return False
        s.add_all(Artifact(run_id=run_id, kind=k, path=p, bytes=b, sha256=h) for k, p, b, h in artifacts)
        _log(s, run_id, "succeeded")
        return True


def mark_failed(run_id: int, *, error: str, traceback: str = "", token: str | None = None) -> bool:
    """Fail a running run (only this claim when `token` is given) or a queued one; keep error and traceback."""
    cond = _ours(run_id, token) if token else (Run.id == run_id) & Run.status.in_([RUNNING, QUEUED])
    with session_scope() as s:
        res = s.execute(update(Run).where(cond).values(
            status=RunStatus.failed.value, error=error, traceback=traceback or None, finished_at=db_now(),
            message=f"failed: {error}"[:2000]))
        if res.rowcount != 1:
            return False
        _log(s, run_id, f"failed: {error}", "error")
        return True


def mark_cancelled(run_id: int, token: str | None = None) -> bool:
    """Cancel a running run (this claim when `token` is given) or a queued one."""
    cond = _ours(run_id, token) if token else (Run.id == run_id) & Run.status.in_([RUNNING, QUEUED])
    with session_scope() as s:
        res = s.execute(update(Run).where(cond).values(
            status=RunStatus.cancelled.value, finished_at=db_now(), message="cancelled", eta_s=None))
        if res.rowcount != 1:
            return False
        _log(s, run_id, "cancelled; partial files removed")
        return True


# -- the user's and the reaper's side ---------------------------------------------------------------------------
def request_cancel(run_id: int) -> str:
    """Ask a run to stop. A queued run is cancelled at once; a running one gets the flag its worker checks between
    steps. Returns the status after the call (a finished run is left as it is)."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} does not exist (deleted, or never created)")
        s.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
        if s.execute(update(Run).where((Run.id == run_id) & (Run.status == QUEUED)).values(
                status=RunStatus.cancelled.value, finished_at=db_now(), message="cancelled before it started"
        )).rowcount == 1:
            _log(s, run_id, "cancelled before it started")
            return RunStatus.cancelled.value
        if run.status == RUNNING:
            _log(s, run_id, "cancel requested")
        return s.scalar(select(Run.status).where(Run.id == run_id))


def reap_stale_runs(*, stale_after_s: float) -> list[int]:
    """Mark failed every running run whose heartbeat is older than `stale_after_s` ("worker lost").
    Rule: `heartbeat_at < db_now() - stale_after_s`, both sides by the database's clock."""
    stale_cond = Run.heartbeat_at < db_now(-stale_after_s)
    reaped = []
    with session_scope() as s:
        stale = s.execute(select(Run.id, Run.worker, Run.worker_pid).where((Run.status == RUNNING) & stale_cond))
        for run_id, worker, pid in stale.all():
            error = (f"worker lost: no heartbeat from {worker} (pid {pid}) for more than {stale_after_s:g} s; "
                     "the process was killed or the machine stopped. Re-run it.")
            if _fail_running(s, run_id, error, stale_cond):
                reaped.append(run_id)
    return reaped


def fail_runs_of_worker(worker: str, *, reason: str) -> list[int]:
    """Mark failed the running runs of a worker node known to be dead (`reason`: how it died); their ids."""
    with session_scope() as s:
        ids = s.scalars(select(Run.id).where((Run.status == RUNNING) & (Run.worker == worker))).all()
        return [i for i in ids if _fail_running(s, i, f"worker lost: {reason}. Re-run it.", Run.worker == worker)]


def requeue_runs_of_worker(worker: str) -> list[int]:
    """Put the running runs of one worker node back in the queue (the node was stopped on purpose, e.g. the studio
    shut down): they start again from the beginning; one whose cancel was requested is cancelled instead.
    Returns the ids of both (their partial files are the caller's to remove)."""
    requeued = []
    with session_scope() as s:
        rows = s.execute(select(Run.id, Run.cancel_requested).where(
            (Run.status == RUNNING) & (Run.worker == worker))).all()
        for run_id, cancel_requested in rows:
            if cancel_requested:  # the user wanted it stopped anyway
                s.execute(update(Run).where((Run.id == run_id) & (Run.status == RUNNING)).values(
                    status=RunStatus.cancelled.value, finished_at=db_now(), message="cancelled"))
                _log(s, run_id, "cancelled (its worker stopped)")
                requeued.append(run_id)
                continue
            res = s.execute(update(Run).where((Run.id == run_id) & (Run.status == RUNNING)).values(
                status=QUEUED, claim_token=None, progress=0.0, stage="", step=0, total_steps=0, started_at=None,
                heartbeat_at=None, sent_at=None, loss=None, eta_s=None, tokens_per_s=None,
                message="queued again: the studio stopped while this run was running"))
            if res.rowcount == 1:
                _log(s, run_id, f"interrupted: {worker} was stopped; queued again (starts from the beginning)",
                     "warning")
                requeued.append(run_id)
    return requeued


def delete_run(run_id: int) -> bool:
    """Delete the row with its metrics, artifacts rows and log (files are the caller's: storage.artifacts)."""
    with session_scope() as s:
        s.execute(update(Run).where(Run.parent_run_id == run_id).values(parent_run_id=None))
        return s.execute(delete(Run).where(Run.id == run_id)).rowcount == 1
