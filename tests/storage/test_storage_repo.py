"""Run lifecycle in the database, on SQLite and PostgreSQL: claims, progress, verdicts, cancel, reaper, delete."""
from __future__ import annotations

import threading
from datetime import timezone

import pytest
from sqlalchemy import update

from storage import repo
from storage.clock import db_now
from storage.db import session_scope
from storage.models import Run, utcnow


def _claimed(worker: str = "w1@host", pid: int = 4242) -> tuple[int, str]:
    run_id = repo.create_run({"model": "demo"})
    token = repo.mark_started(run_id, worker=worker, pid=pid)
    assert token
    return run_id, token


def _age_heartbeat(run_id: int, seconds: float) -> None:
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=db_now(-seconds)))


def test_create_and_read_back(db_url):
    run_id = repo.create_run({"model": "demo", "seed": 3}, name="first")
    run = repo.get_run(run_id)
    assert (run.status, run.progress, run.name, run.recipe) == ("queued", 0.0, "first", {"model": "demo", "seed": 3})
    assert run.created_at.tzinfo == timezone.utc and abs((utcnow() - run.created_at).total_seconds()) < 60
    assert [r.id for r in repo.list_runs()] == [run_id]
    assert repo.queued_run_ids() == [run_id]
    assert [line.message for line in repo.get_logs(run_id)] == ["queued"]
    with pytest.raises(repo.RunNotFound, match="run 999 does not exist"):
        repo.get_run(999)


def test_a_run_is_claimed_once_even_when_workers_race(db_url):
    run_id = repo.create_run({"model": "demo"})
    tokens, barrier = [], threading.Barrier(8)

    def claim(i):
        barrier.wait()
        tokens.append(repo.mark_started(run_id, worker=f"w{i}", pid=i))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(t is not None for t in tokens) == 1
    run = repo.get_run(run_id)
    assert (run.status, run.attempts) == ("running", 1)
    assert run.started_at is not None and run.heartbeat_at is not None


def test_progress_and_success_are_written_only_by_the_claim_holder(db_url):
    run_id, token = _claimed()
    assert repo.update_progress(run_id, token, progress=0.25, stage="distill", step=5, total=20,
                                message="step 5/20", loss=2.5, eta_s=30.0, tokens_per_s=100.0, log="distill started")
    assert not repo.update_progress(run_id, "not-the-token", progress=0.9, stage="x")
    run = repo.get_run(run_id)
    assert (run.progress, run.stage, run.step, run.total_steps, run.loss, run.eta_s) == (0.25, "distill", 5, 20,
                                                                                        2.5, 30.0)
    assert repo.heartbeat(run_id, token) and not repo.heartbeat(run_id, "other")

    ok = repo.mark_succeeded(run_id, token, metrics={"ppl": 12.5}, stages=[{"stage": "s1", "ppl": 13.0}],
                             artifacts=[("checkpoint", f"{run_id}/checkpoint", 1234, "ab" * 32)])
    assert ok and not repo.mark_succeeded(run_id, token, metrics={}, stages=[], artifacts=[])
    run = repo.get_run(run_id)
    assert (run.status, run.progress, run.metrics, run.stages) == ("succeeded", 1.0, {"ppl": 12.5},
                                                                   [{"stage": "s1", "ppl": 13.0}])
    assert run.finished_at >= run.started_at
    assert [(a.kind, a.bytes, a.sha256) for a in repo.get_artifacts(run_id)] == [("checkpoint", 1234, "ab" * 32)]
    assert [line.message for line in repo.get_logs(run_id)] == ["queued", "started on w1@host (pid 4242)",
                                                               "distill started", "succeeded"]


def test_non_finite_progress_numbers_are_stored_as_null(db_url):
    run_id, token = _claimed()
    assert repo.update_progress(run_id, token, progress=1.7, stage="s", loss=float("nan"), eta_s=float("inf"))
    run = repo.get_run(run_id)
    assert (run.progress, run.loss, run.eta_s) == (1.0, None, None)


def test_failure_keeps_error_and_traceback(db_url):
    run_id, token = _claimed()
    assert repo.mark_failed(run_id, error="ValueError: boom", traceback="Traceback ...\nValueError: boom",
                            token=token)
    run = repo.get_run(run_id)
    assert (run.status, run.error) == ("failed", "ValueError: boom")
    assert run.traceback.endswith("ValueError: boom")
    assert repo.get_logs(run_id)[-1].level == "error"


def test_cancel_of_a_queued_run_is_immediate_and_it_never_starts(db_url):
    run_id = repo.create_run({"model": "demo"})
    assert repo.request_cancel(run_id) == "cancelled"
    assert repo.mark_started(run_id, worker="w", pid=1) is None
    assert repo.get_run(run_id).finished_at is not None


def test_cancel_of_a_running_run_sets_the_flag_the_worker_reads(db_url):
    run_id, token = _claimed()
    assert not repo.is_cancel_requested(run_id)
    assert repo.request_cancel(run_id) == "running"
    assert repo.is_cancel_requested(run_id)
    assert repo.mark_cancelled(run_id, token)
    assert repo.get_run(run_id).status == "cancelled"
    assert repo.request_cancel(run_id) == "cancelled"  # a finished run stays as it is
    assert [line.message for line in repo.get_logs(run_id)][-2:] == ["cancel requested",
                                                                     "cancelled; partial files removed"]


def test_reaper_fails_only_stale_running_runs_and_the_old_claim_loses(db_url):
    stale, stale_token = _claimed(worker="dead@host", pid=7)
    fresh, _ = _claimed(worker="alive@host", pid=8)
    queued = repo.create_run({"model": "demo"})
    _age_heartbeat(stale, 40)
    _age_heartbeat(queued, 40)
    assert repo.reap_stale_runs(stale_after_s=30) == [stale]
    run = repo.get_run(stale)
    assert run.status == "failed" and run.error.startswith("worker lost: no heartbeat from dead@host (pid 7)")
    assert [repo.get_run(i).status for i in (fresh, queued)] == ["running", "queued"]
    # the worker, if it was only frozen, finds the run is not its own any more
    assert not repo.update_progress(stale, stale_token, progress=0.5, stage="x")
    assert not repo.mark_succeeded(stale, stale_token, metrics={}, stages=[], artifacts=[])
    assert repo.reap_stale_runs(stale_after_s=30) == []


def test_runs_of_a_stopped_worker_go_back_to_the_queue(db_url):
    mine, token = _claimed(worker="studio-1@host")
    other, _ = _claimed(worker="studio-2@host")
    wanted_stopped, _ = _claimed(worker="studio-1@host")
    repo.request_cancel(wanted_stopped)
    assert sorted(repo.requeue_runs_of_worker("studio-1@host")) == [mine, wanted_stopped]
    run = repo.get_run(mine)
    assert (run.status, run.claim_token, run.progress, run.attempts) == ("queued", None, 0.0, 1)
    assert repo.get_run(wanted_stopped).status == "cancelled"
    assert repo.get_run(other).status == "running"
    assert not repo.heartbeat(mine, token)
    assert repo.mark_started(mine, worker="studio-3@host", pid=1) is not None
    assert repo.get_run(mine).attempts == 2


def test_delete_removes_metrics_artifacts_and_log(db_url):
    run_id, token = _claimed()
    repo.mark_succeeded(run_id, token, metrics={}, stages=[],
                        artifacts=[("checkpoint", f"{run_id}/checkpoint", 1, "0" * 64)])
    child = repo.create_run({"model": "demo"}, parent_run_id=run_id)
    assert repo.delete_run(run_id) and not repo.delete_run(run_id)
    assert repo.get_artifacts(run_id) == [] and repo.get_logs(run_id) == []
    assert repo.get_run(child).parent_run_id is None


def test_ids_are_never_reused_after_a_delete(db_url):
    first = repo.create_run({"model": "demo"})
    repo.delete_run(first)
    assert repo.create_run({"model": "demo"}) == first + 1


def _age_sent(run_id: int, seconds: float) -> None:
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(sent_at=db_now(-seconds)))


def test_queued_runs_are_due_for_a_send_until_sent_and_again_once_the_send_is_old(db_url):
    unsent, sent, claimed = (repo.create_run({"model": "demo"}) for _ in range(3))
    assert repo.runs_due_for_send(older_than_s=60) == [unsent, sent, claimed]
    repo.mark_waiting_for_broker(unsent, "ConnectionError: refused")
    assert repo.get_run(unsent).message.startswith("waiting for the broker (ConnectionError: refused); it is sent")
    assert repo.mark_sent(sent) and repo.mark_sent(claimed)
    repo.mark_started(claimed, worker="w", pid=1)
    assert repo.runs_due_for_send(older_than_s=60) == [unsent]
    _age_sent(sent, 61)
    assert repo.runs_due_for_send(older_than_s=60) == [unsent, sent]
    assert repo.mark_sent(unsent, note="sent to the broker again")
    run = repo.get_run(unsent)
    assert (run.message, run.send_count, repo.get_logs(unsent)[-1].message) == ("queued", 1, "sent to the broker again")
    assert not repo.mark_sent(claimed)  # running: nothing to send
    assert repo.get_run(claimed).send_count == 1


def test_a_retried_claim_with_the_same_token_gets_the_run_and_no_other_token_does(db_url):
    run_id = repo.create_run({"model": "demo"})
    token = repo.mark_started(run_id, worker="w1", pid=1, token="t-1")
    assert token == "t-1"
    assert repo.mark_started(run_id, worker="w1", pid=1, token="t-1") == "t-1"  # the commit of try 1 had landed
    assert repo.mark_started(run_id, worker="w2", pid=2) is None
    assert repo.get_run(run_id).attempts == 1


def test_the_runs_of_a_dead_worker_are_failed_and_others_kept(db_url):
    dead, _ = _claimed(worker="studio-1@host")
    alive, _ = _claimed(worker="studio-2@host")
    assert repo.fail_runs_of_worker("studio-1@host", reason="the embedded worker exited (signal 9)") == [dead]
    run = repo.get_run(dead)
    assert (run.status, run.error) == ("failed", "worker lost: the embedded worker exited (signal 9). Re-run it.")
    assert repo.get_run(alive).status == "running"


def test_tags_and_notes_are_cleaned_and_kept_in_any_status(db_url):
    from storage import catalog
    run_id = repo.create_run({"model": "demo"})
    assert (repo.get_run(run_id).tags, repo.get_run(run_id).notes) == ([], "")
    repo.set_run_notes(run_id, tags=[" baseline ", "", "x" * 99, "baseline"], notes="n" * 5000)
    run = repo.get_run(run_id)
    assert run.tags == ["baseline", "x" * repo.TAG_MAX] and len(run.notes) == repo.NOTES_MAX
    repo.mark_cancelled(run_id)
    assert repo.set_run_notes(run_id, notes="why it stopped").tags == ["baseline", "x" * repo.TAG_MAX]
    assert repo.get_run(run_id).notes == "why it stopped"
    with pytest.raises(repo.RunNotFound):
        repo.set_run_notes(run_id + 1000, notes="x")
    model_id = catalog.upsert_model(source="/cache/uploads/ab12.zip", fingerprint="fp1", summary={},
                                    label="mixtral-tiny.zip")
    assert catalog.upsert_model(source="/cache/uploads/ab12.zip", fingerprint="fp1", summary={}) == model_id
    assert catalog.labels_by_source() == {"/cache/uploads/ab12.zip": "mixtral-tiny.zip"}
