"""Run timestamps and the reaper's cutoffs come from the database's clock, on SQLite and PostgreSQL: a worker or an app
whose own clock is an hour off is neither reaped early nor kept alive late, and a sent run is not re-sent at once."""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from storage import models, repo
from storage.clock import db_now
from storage.db import session_scope
from storage.models import Run

HOUR = timedelta(hours=1)


@contextmanager
def python_clock_off_by(monkeypatch, offset: timedelta):
    """This process as a machine whose clock is off by `offset`: storage's Python-side "now" (which stamped heartbeats
    and computed the reaper's cutoff before the database's clock did) is shifted."""
    def skewed() -> datetime:
        return datetime.now(timezone.utc) + offset

    with monkeypatch.context() as m:
        m.setattr(models, "utcnow", skewed)
        m.setattr(repo, "utcnow", skewed, raising=False)
        yield


def test_db_now_is_the_database_clock_and_compares_with_stored_times(db_url):
    run_id = repo.create_run({"model": "demo"})
    before = datetime.now(timezone.utc)
    with session_scope() as s:
        now, earlier = s.execute(select(db_now(), db_now(-30.5))).one()
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=before - timedelta(milliseconds=20)))
        older = s.scalar(select(Run.id).where(Run.heartbeat_at < db_now()))
        newer = s.scalar(select(Run.id).where(Run.heartbeat_at > db_now()))
    assert now.tzinfo == timezone.utc and abs((now - before).total_seconds()) < 5
    assert (now - earlier).total_seconds() == pytest.approx(30.5, abs=0.002)
    assert (older, newer) == (run_id, None)  # a Python-written time 20 ms ago sorts before the database's now


@pytest.mark.parametrize("offset", [HOUR, -HOUR], ids=["fast", "slow"])
@pytest.mark.parametrize("skewed", ["worker", "reaper"])
def test_a_skewed_clock_neither_reaps_a_live_run_early_nor_keeps_a_dead_one_alive(db_url, monkeypatch, skewed,
                                                                                 offset):
    stale_after_s = 1.0

    def as_(who: str):
        return python_clock_off_by(monkeypatch, offset if who == skewed else timedelta(0))

    with as_("worker"):
        run_id = repo.create_run({"model": "demo"})
        token = repo.mark_started(run_id, worker="w@skewed", pid=1)
        assert repo.heartbeat(run_id, token)
    beat = repo.get_run(run_id).heartbeat_at
    assert abs((beat - datetime.now(timezone.utc)).total_seconds()) < 5  # stamped by the database, not the worker
    with as_("reaper"):
        assert repo.reap_stale_runs(stale_after_s=stale_after_s) == []  # live: not reaped early
    time.sleep(stale_after_s + 0.3)  # the worker goes silent
    with as_("reaper"):
        assert repo.reap_stale_runs(stale_after_s=stale_after_s) == [run_id]  # dead: not kept alive late


@pytest.mark.parametrize("offset", [HOUR, -HOUR], ids=["fast", "slow"])
def test_a_skewed_app_clock_neither_resends_a_fresh_message_nor_forgets_an_old_one(db_url, monkeypatch, offset):
    with python_clock_off_by(monkeypatch, offset):
        run_id = repo.create_run({"model": "demo"})
        repo.mark_sent(run_id)
        assert repo.runs_due_for_send(older_than_s=1.0) == []
        time.sleep(1.3)
        assert repo.runs_due_for_send(older_than_s=1.0) == [run_id]
