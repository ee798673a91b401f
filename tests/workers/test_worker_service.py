"""Settings, the Celery configuration for long jobs, and the service verbs against a real Redis (no worker
consumes this queue, so the messages can be counted), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import uuid

import pytest
import redis

from compressor.recipe import RECIPE_VERSION, Recipe, RecipeError
from storage import artifacts, repo
from tests.storage.databases import flushed_test_redis
from workers.celery_app import PromptRecycle, get_app, make_app
from workers.service import BrokerUnavailable, RunBusy, cancel_run, delete_run, enqueue_run, rerun
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


def test_a_broker_that_is_down_leaves_the_run_queued_for_the_next_start(db_url, monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        with pytest.raises(BrokerUnavailable, match=r"saved as queued.*sent again when the studio restarts"):
            enqueue_run({"model": "demo"})
    assert [r.status for r in repo.list_runs()] == ["queued"]


class socket_closed_port:
    """A loopback port with nothing listening."""

    def __enter__(self) -> int:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None
