"""Settings, the Celery configuration for long jobs, and the service verbs against a real Redis (no worker
consumes this queue, so the messages can be counted), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import redis

from compressor.recipe import RECIPE_VERSION, Recipe, RecipeError
from storage import artifacts, repo
from tests.storage.databases import flushed_test_redis
from workers.celery_app import PromptRecycle, get_app, make_app
from workers.broker import read_broker
from workers.reaper import RESENT_NOTE, Resender
from workers.service import BrokerUnavailable, RunBusy, cancel_run, delete_run, enqueue_run, rerun, send_run
from workers.settings import WorkerSettings


def test_settings_from_env_and_their_checks():
    s = WorkerSettings.from_env({"REDIS_URL": "redis://h:1/0", "MOE_STUDIO_HEARTBEAT_S": "2",
                                 "MOE_STUDIO_STALE_AFTER_S": "10", "MOE_STUDIO_MAX_JOB_S": "7200"})
    assert (s.redis_url, s.heartbeat_s, s.stale_after_s, s.max_job_s) == ("redis://h:1/0", 2.0, 10.0, 7200.0)
    assert s.visibility_timeout_s == 7200 + 3600
    assert WorkerSettings.from_env({}).pipeline == "compressor.pipeline:run_recipe"
    with pytest.raises(ValueError, match="must be at least twice MOE_STUDIO_HEARTBEAT_S"):
        WorkerSettings.from_env({"MOE_STUDIO_HEARTBEAT_S": "20"})
    with pytest.raises(ValueError, match="MOE_STUDIO_REAP_EVERY_S='soon' is not a number"):
        WorkerSettings.from_env({"MOE_STUDIO_REAP_EVERY_S": "soon"})
    with pytest.raises(ValueError, match="'package.module:function'"):
        WorkerSettings.from_env({"MOE_STUDIO_PIPELINE": "compressor.pipeline.run_recipe"})
    s = WorkerSettings.from_env({"MOE_STUDIO_REQUEUE_AFTER_S": "5", "MOE_STUDIO_CLAIM_RETRIES": "0",
                                 "MOE_STUDIO_CLAIM_BACKOFF_S": "0.25"})
    assert (s.requeue_after_s, s.claim_retries, s.claim_backoff_s, s.claim_retry_countdown_s) == (5.0, 0, 0.25, 0.25)
    d = WorkerSettings.from_env({})
    assert (d.requeue_after_s, d.claim_retries, d.claim_retry_countdown_s) == (60.0, 5, 16.0)
    with pytest.raises(ValueError, match="MOE_STUDIO_CLAIM_RETRIES='two' is not a whole number"):
        WorkerSettings.from_env({"MOE_STUDIO_CLAIM_RETRIES": "two"})
    with pytest.raises(ValueError, match="MOE_STUDIO_CLAIM_RETRIES='-1' must be zero or more"):
        WorkerSettings.from_env({"MOE_STUDIO_CLAIM_RETRIES": "-1"})
    with pytest.raises(ValueError, match="MOE_STUDIO_REQUEUE_AFTER_S='0' must be positive"):
        WorkerSettings.from_env({"MOE_STUDIO_REQUEUE_AFTER_S": "0"})


def test_the_app_is_configured_for_long_ml_jobs():
    settings = WorkerSettings(redis_url="redis://127.0.0.1:6379/15", max_job_s=36000)
    conf = make_app(settings).conf
    assert (conf.task_acks_late, conf.worker_prefetch_multiplier, conf.task_track_started) == (True, 1, True)
    assert conf.worker_max_tasks_per_child == 1
    hard_limit = conf.task_time_limit
    assert hard_limit >= 36000
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["visibility_timeout"] > hard_limit
    assert PromptRecycle in make_app(settings).steps["worker"]
    assert get_app(settings) is get_app(settings)


def test_without_redis_url_the_app_says_what_to_do():
    with pytest.raises(RuntimeError, match="REDIS_URL is not set.*python app.py"):
        make_app(WorkerSettings())


@pytest.fixture
def queue(db_url, monkeypatch):
    """The test Redis with a private queue nobody consumes; yields a function counting its messages."""
    url, name = flushed_test_redis(), f"svc-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("MOE_STUDIO_QUEUE", name)
    client = redis.Redis.from_url(url)

    def run_ids() -> list[int]:
        return [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(name, 0, -1)][::-1]

    yield run_ids
    client.delete(name)
    client.close()


def test_enqueue_stores_the_validated_recipe_and_sends_only_the_id(queue):
    run_id = enqueue_run({"model": "demo", "slimming": {"experts_keep": 4}}, name="half")
    run = repo.get_run(run_id)
    assert run.status == "queued" and run.name == "half"
    assert run.recipe["slimming"]["experts_keep"] == 4 and run.recipe["version"] == RECIPE_VERSION  # defaults filled
    assert run.recipe["distill"]["final_stage_share"] == 0.8
    assert queue() == [f"[{run_id}]"]


def test_invalid_recipe_is_refused_naming_the_field_and_nothing_is_stored(queue):
    with pytest.raises(RecipeError, match=r"calibration\.seq_len: .*; stages: Input should be less than or equal"):
        enqueue_run({"calibration": {"seq_len": "long"}, "stages": 99})
    assert repo.list_runs() == [] and queue() == []


def test_a_stored_version_1_recipe_reruns_with_its_even_step_split(queue):
    old = {"version": 1, "model": "demo", "stages": 3, "distill": {"steps": 30}}
    first = repo.create_run(old, name="from an older studio")                   # as an older studio stored it
    again = repo.get_run(rerun(first)).recipe
    assert again["version"] == RECIPE_VERSION and again["distill"]["final_stage_share"] is None
    assert Recipe.parse(repo.get_run(first).recipe) == Recipe.parse(again)    # what a worker re-reads


def test_rerun_cancel_and_delete(queue):
    first = enqueue_run({"model": "demo", "seed": 5})
    second = rerun(first)
    edited = rerun(first, recipe={"model": "demo", "seed": 6})
    assert [repo.get_run(i).parent_run_id for i in (second, edited)] == [first, first]
    assert repo.get_run(second).recipe == repo.get_run(first).recipe
    assert repo.get_run(edited).recipe["seed"] == 6
    assert queue() == [f"[{i}]" for i in (first, second, edited)]

    assert cancel_run(first) == "cancelled"
    token = repo.mark_started(second, worker="w", pid=1)
    with pytest.raises(RunBusy, match="cancel it and wait"):
        delete_run(second)
    repo.mark_failed(second, error="x", token=token)
    artifacts.run_dir(second).mkdir(parents=True)
    delete_run(second)
    assert not artifacts.run_dir(second).exists()
    with pytest.raises(repo.RunNotFound):
        repo.get_run(second)
    delete_run(edited)  # a queued run: cancelled, then deleted
    assert [r.id for r in repo.list_runs()] == [first]


def test_enqueue_while_the_broker_is_down_keeps_the_run_queued_and_says_it_waits(db_url, monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        t0 = time.monotonic()
        run_id = enqueue_run({"model": "demo"})  # no error for the user: the run is not lost
        took = time.monotonic() - t0
        with pytest.raises(BrokerUnavailable, match=r"saved as queued.*sent as soon as the broker is reachable"):
            send_run(run_id)
    run = repo.get_run(run_id)
    assert (run.status, run.sent_at, run.send_count) == ("queued", None, 0)
    assert run.message.startswith("waiting for the broker (OperationalError: Error 111 connecting to 127.0.0.1:")
    assert repo.get_logs(run_id)[-1].level == "warning"
    assert repo.runs_due_for_send(older_than_s=3600) == [run_id]  # the reaper's next round sends it
    assert took < 5, took


def test_the_resender_sends_only_the_runs_the_broker_does_not_hold(queue, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_REQUEUE_AFTER_S", "1")
    resend = Resender(WorkerSettings.from_env())
    held = enqueue_run({"model": "demo"})
    never_sent = repo.create_run({"model": "demo"})  # as if the broker had been down at enqueue
    assert resend() == [never_sent] and queue() == [f"[{held}]", f"[{never_sent}]"]
    time.sleep(1.1)  # both are due now, but the broker holds both
    assert resend() == [] and len(queue()) == 2
    lose_messages = redis.Redis.from_url(os.environ["REDIS_URL"]).delete  # what a broker restart or flush does
    lose_messages(os.environ["MOE_STUDIO_QUEUE"])
    assert resend() == [held, never_sent] and queue() == [f"[{held}]", f"[{never_sent}]"]
    assert [repo.get_run(i).send_count for i in (held, never_sent)] == [2, 2]
    assert repo.get_logs(held)[-1].message == RESENT_NOTE
    lose_messages(os.environ["MOE_STUDIO_QUEUE"])
    assert resend() == [] and queue() == []  # sent less than requeue_after_s ago: a worker may be claiming it


def test_a_message_a_consumer_holds_unacknowledged_counts_until_requeue_after_s(queue, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_REQUEUE_AFTER_S", "1")
    settings = WorkerSettings.from_env()
    run_id = enqueue_run({"model": "demo"})
    with get_app(settings).connection_for_read() as conn:
        taken = conn.SimpleQueue(settings.queue, no_ack=False).get(timeout=5)  # a worker that never claims
        assert json.loads(taken.body)[0] == [run_id] and queue() == []
        assert read_broker(settings).delivered and read_broker(settings).waiting == set()
        resend = Resender(settings)
        time.sleep(1.1)
        assert resend() == []  # first seen now: a live worker holds it
        time.sleep(1.1)
        assert resend() == [run_id] and queue() == [f"[{run_id}]"]  # held too long: its worker is gone


class socket_closed_port:
    """A loopback port with nothing listening."""

    def __enter__(self) -> int:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
