"""Runs go to the queue their recipe's device needs: a CPU worker (-Q cpu) never takes a run that needs a GPU, a GPU
worker (-Q gpu) does, the reaper re-sends each run to its own queue, and the embedded worker serves the GPU queue
only on a machine with a GPU. Real Redis (db 15) and PostgreSQL, real worker processes."""
from __future__ import annotations

import json
import os
import uuid

import pytest
import redis

from storage import db, repo
from tests.storage.databases import flushed_test_redis, postgres_schema_url, studio_env
from tests.workers.cluster import FAST_TIMINGS, TEST_PIPELINE, WorkerCluster, wait_for
from workers.broker import read_broker
from workers.embedded import EmbeddedServices, embedded_worker_queues
from workers.reaper import Resender
from workers.service import enqueue_run, run_queue
from workers.settings import WorkerSettings

GPU_RUN = {"model": "test:steps=2", "execution": {"device": "cuda"}}
CPU_RUN = {"model": "test:steps=2", "execution": {"device": "cpu"}}


def test_the_queue_follows_the_device():
    s = WorkerSettings()
    assert (s.queue, s.gpu_queue, s.queues) == ("cpu", "gpu", ("cpu", "gpu"))
    assert [s.queue_for_device(d) for d in ("cpu", "auto", "cuda", "cuda:3")] == ["cpu", "cpu", "gpu", "gpu"]
    gpu_first = WorkerSettings.from_env({"MOE_STUDIO_AUTO_QUEUE": "gpu", "MOE_STUDIO_QUEUE": "small",
                                         "MOE_STUDIO_GPU_QUEUE": "big"})
    assert [gpu_first.queue_for_device(d) for d in ("cpu", "auto", "cuda:1")] == ["small", "big", "big"]
    assert run_queue({"model": "demo"}, s) == "cpu"                              # no execution.device: auto
    assert run_queue({"model": "demo", "execution": {"device": "cuda:0"}}, s) == "gpu"
    assert run_queue({"model": "demo", "stages": "many"}, s) == "cpu"            # the worker will name the error
    with pytest.raises(ValueError, match="MOE_STUDIO_AUTO_QUEUE='fast' must be 'cpu'"):
        WorkerSettings.from_env({"MOE_STUDIO_AUTO_QUEUE": "fast"})
    with pytest.raises(ValueError, match="both 'cpu'; give the GPU queue its own name"):
        WorkerSettings.from_env({"MOE_STUDIO_GPU_QUEUE": "cpu"})
    with pytest.raises(ValueError, match="MOE_STUDIO_WORKER_QUEUES='cpu,gpux' must name some of"):
        WorkerSettings.from_env({"MOE_STUDIO_WORKER_QUEUES": "cpu,gpux"})


def test_the_embedded_worker_serves_the_gpu_queue_only_with_a_gpu():
    s = WorkerSettings(queue="q-cpu", gpu_queue="q-gpu")
    assert embedded_worker_queues(s, has_gpu=lambda: True) == ("q-cpu", "q-gpu")
    assert embedded_worker_queues(s, has_gpu=lambda: False) == ("q-cpu",)
    named = WorkerSettings.from_env({"MOE_STUDIO_QUEUE": "q-cpu", "MOE_STUDIO_WORKER_QUEUES": "gpu"})
    assert named.worker_queues == ("gpu",) and embedded_worker_queues(named, has_gpu=lambda: False) == ("gpu",)
    services = EmbeddedServices(settings=s)
    services.worker_queues = embedded_worker_queues(s, has_gpu=lambda: True)
    cmd = services.worker_command()
    assert cmd[cmd.index("-Q") + 1] == "q-cpu,q-gpu"


def test_this_machine_without_a_gpu_is_seen_without_touching_cuda(tmp_path):
    from compressor.device import visible_gpu_hint
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    assert visible_gpu_hint({}, str(gpus)) == 0
    for i in range(2):
        (gpus / f"0000:0{i}:00.0").mkdir()
    assert visible_gpu_hint({}, str(gpus)) == 2
    assert visible_gpu_hint({"CUDA_VISIBLE_DEVICES": "1"}, str(gpus)) == 1
    assert visible_gpu_hint({"CUDA_VISIBLE_DEVICES": ""}, str(gpus)) == 0
    assert visible_gpu_hint({"CUDA_VISIBLE_DEVICES": "-1"}, str(gpus)) == 0
    assert visible_gpu_hint({}, str(tmp_path / "no-driver")) == 0


@pytest.fixture
def queues(db_url, monkeypatch):
    """Private cpu and gpu queues on the test Redis that nobody consumes; yields {role: function listing run ids}."""
    url = flushed_test_redis()
    names = {"cpu": f"cpu-{uuid.uuid4().hex[:8]}", "gpu": f"gpu-{uuid.uuid4().hex[:8]}"}
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("MOE_STUDIO_QUEUE", names["cpu"])
    monkeypatch.setenv("MOE_STUDIO_GPU_QUEUE", names["gpu"])
    client = redis.Redis.from_url(url)

    def lister(name):
        return lambda: [json.loads(json.loads(m)["headers"]["argsrepr"])[0] for m in client.lrange(name, 0, -1)][::-1]

    yield {role: lister(name) for role, name in names.items()} | {"names": names, "client": client}
    client.delete(*names.values())
    client.close()


def test_a_gpu_run_is_sent_to_the_gpu_queue_and_resent_there(queues, monkeypatch):
    gpu, cpu, auto = enqueue_run(GPU_RUN), enqueue_run(CPU_RUN), enqueue_run({"model": "test:steps=2"})
    assert queues["gpu"]() == [gpu] and queues["cpu"]() == [cpu, auto]
    view = read_broker(WorkerSettings.from_env())
    assert view.waiting == {gpu, cpu, auto} and view.waiting_in[queues["names"]["gpu"]] == {gpu}
    monkeypatch.setenv("MOE_STUDIO_REQUEUE_AFTER_S", "1")
    resend = Resender(WorkerSettings.from_env())
    assert resend(older_than_s=0) == []                          # every queue is read: all three are live
    queues["client"].delete(*queues["names"].values())           # what a broker restart does
    assert sorted(resend(older_than_s=0)) == sorted([gpu, cpu, auto])
    assert queues["gpu"]() == [gpu] and sorted(queues["cpu"]()) == sorted([cpu, auto])
    monkeypatch.setenv("MOE_STUDIO_AUTO_QUEUE", "gpu")             # where auto runs go is the app's setting
    queues["client"].delete(*queues["names"].values())
    Resender(WorkerSettings.from_env())(older_than_s=0)
    assert sorted(queues["gpu"]()) == sorted([gpu, auto]) and queues["cpu"]() == [cpu]


def test_a_cpu_worker_leaves_a_gpu_run_to_a_gpu_worker(tmp_path):
    names = {"MOE_STUDIO_QUEUE": f"cpu-{uuid.uuid4().hex[:8]}", "MOE_STUDIO_GPU_QUEUE": f"gpu-{uuid.uuid4().hex[:8]}"}
    with postgres_schema_url() as db_url, studio_env(tmp_path, DATABASE_URL=db_url, REDIS_URL=flushed_test_redis(),
                                                     MOE_STUDIO_PIPELINE=TEST_PIPELINE, **names, **FAST_TIMINGS):
        db.init_db()
        with WorkerCluster(n=1, queues=[names["MOE_STUDIO_QUEUE"]]):
            gpu, cpu = enqueue_run(GPU_RUN), enqueue_run(CPU_RUN)
            wait_for(lambda: repo.get_run(cpu).status == "succeeded", timeout=60, what="the cpu run")
            assert repo.get_run(gpu).status == "queued"             # sent before the cpu run, still not taken
            assert read_broker(WorkerSettings.from_env()).waiting_in[names["MOE_STUDIO_GPU_QUEUE"]] == {gpu}
        with WorkerCluster(n=1, queues=[names["MOE_STUDIO_GPU_QUEUE"]]):
            run = wait_for(lambda: (r := repo.get_run(gpu)).is_finished and r, timeout=60, what="the gpu run")
            assert run.status == "succeeded", run.message
