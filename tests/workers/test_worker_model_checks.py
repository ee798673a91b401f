"""Issue 28: the worker keeps a queued run's upload pinned in the studio cache until the run ends, and checks the run's
model folder against the model roots again right before it loads it (links inside included)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from compressor import studio_cache
from storage import repo
from tests.workers.cluster import TEST_PIPELINE
from workers import service
from workers.job import execute_run
from workers.settings import WorkerSettings

SETTINGS = WorkerSettings(pipeline=TEST_PIPELINE, heartbeat_s=0.2, stale_after_s=5, progress_every_s=0.2)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "uploads").mkdir(parents=True)
    return tmp_path / "cache"


@pytest.fixture
def roots(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(a model root holding the folder `m` with a config, a folder outside every root)."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    for folder in (root / "m", outside):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (outside / "secret.jinja").write_text("{{ secret }}")
    monkeypatch.setenv("MOE_STUDIO_MODEL_ROOTS", str(root))
    return root, outside


def test_enqueue_pins_the_upload_and_the_end_of_the_run_unpins_it(db_url, cache, monkeypatch):
    upload = cache / "uploads" / f"{'a' * 64}.zip"
    upload.write_bytes(b"zip")
    monkeypatch.setattr(service, "send_run", lambda *a, **k: None)     # no broker here: the row is what counts
    run_id = service.enqueue_run({"model": str(upload)})
    assert studio_cache.pins()[f"run-{run_id}"][0] == upload
    assert execute_run(run_id, worker="w", settings=SETTINGS) == "succeeded"   # the test pipeline; the run ended
    assert studio_cache.pins() == {}


def test_a_queued_run_whose_upload_was_evicted_before_its_pin_fails_at_once(db_url, cache, monkeypatch):
    monkeypatch.setattr(service, "send_run", lambda *a, **k: pytest.fail("a run without its model was sent"))
    run_id = service.enqueue_run({"model": str(cache / "uploads" / f"{'b' * 64}.zip")})
    run = repo.get_run(run_id)
    assert run.status == "failed" and "upload it again" in run.error
    assert studio_cache.pins() == {}


def test_the_reapers_sync_drops_pins_of_runs_that_ended_and_pins_queued_ones(db_url, cache):
    upload = cache / "uploads" / f"{'c' * 64}.zip"
    upload.write_bytes(b"zip")
    queued = repo.create_run({"model": str(upload)})
    cancelled = repo.create_run({"model": str(upload)})
    service.pin_run(cancelled, str(upload))
    repo.request_cancel(cancelled)                          # cancelled while queued, by another process
    old = time.time() - 120
    os.utime(cache / studio_cache.PINS / f"run-{cancelled}.json", (old, old))    # past the grace of a new pin
    service.sync_run_pins()
    assert sorted(studio_cache.pins()) == [f"run-{queued}"]


def test_the_worker_refuses_a_model_folder_swapped_for_a_link_after_enqueue(db_url, roots):
    root, outside = roots
    ok = repo.create_run({"model": str(root / "m")})
    assert execute_run(ok, worker="w", settings=SETTINGS) == "succeeded"   # the folder as it was enqueued
    run_id = repo.create_run({"model": str(root / "m")})
    (root / "m" / "config.json").unlink()
    (root / "m").rmdir()
    (root / "m").symlink_to(outside, target_is_directory=True)
    assert execute_run(run_id, worker="w", settings=SETTINGS) == "failed"
    assert "outside the folders this studio opens models from" in repo.get_run(run_id).error


def test_the_worker_refuses_a_model_folder_with_a_file_linked_outside(db_url, roots):
    root, outside = roots
    (root / "m" / "chat_template.jinja").symlink_to(outside / "secret.jinja")
    run_id = repo.create_run({"model": str(root / "m")})
    assert execute_run(run_id, worker="w", settings=SETTINGS) == "failed"
    error = repo.get_run(run_id).error
    assert "'chat_template.jinja' in the model folder links outside" in error and str(outside) not in error
    os.unlink(root / "m" / "chat_template.jinja")
    (root / "m" / "inner.jinja").write_text("x")
    (root / "m" / "chat_template.jinja").symlink_to(root / "m" / "inner.jinja")   # a link inside the roots is fine
    again = repo.create_run({"model": str(root / "m")})
    assert execute_run(again, worker="w", settings=SETTINGS) == "succeeded"


def test_the_embedded_worker_checks_against_the_apps_model_roots(db_url, tmp_path, monkeypatch):
    # The worker process runs from the repository, the app from wherever it was started: the default root "the
    # working directory" must be the app's, or a folder the UI accepted would be refused by the worker.
    from workers.embedded import EmbeddedServices
    from workers.roots import allowed_model_roots
    monkeypatch.delenv("MOE_STUDIO_MODEL_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    env = EmbeddedServices(start_worker=False).worker_env()
    roots = env["MOE_STUDIO_MODEL_ROOTS"].split(os.pathsep)
    assert str(tmp_path) in roots and roots == [str(r) for r in allowed_model_roots()]


def test_compare_and_explore_jobs_check_the_roots_again_before_loading(db_url, roots):
    from compressor.sources import SourceError
    from storage import catalog
    from workers.analysis import analyze_model
    from workers.compare_job import _load
    root, outside = roots
    (root / "m" / "chat_template.jinja").symlink_to(outside / "secret.jinja")
    loads = []
    with pytest.raises(SourceError, match="'chat_template.jinja' in the model folder links outside"):
        _load(str(root / "m"), "A", loads.append)
    assert loads == []                                   # refused before "loading model A"
    model_id = catalog.upsert_model(source=str(root / "m"), fingerprint="f", summary={})
    with pytest.raises(SourceError, match="'chat_template.jinja' in the model folder links outside"):
        analyze_model.run(model_id, {})
