"""execute_run: what a worker does with one run id. Plain Python, so the task stays one line.

    1. claim the row (`storage.repo.mark_started`: UPDATE ... WHERE status='queued'); not claimed -> "skipped"
       (a redelivered or duplicate message, a run cancelled while queued, or a deleted run). A database error
       during the claim is retried (`claim_run`); when every try fails, `ClaimUnavailable` is raised so that the
       task is retried, never acknowledged as done with the run still queued;
    2. check the run's model against the model roots again (`workers.roots.check_run_source`: links included, so a
       folder swapped for a link after Enqueue is refused), then run the recipe through the pipeline
       (`MOE_STUDIO_PIPELINE`, default compressor.pipeline:run_recipe) into the run's artifact folder, with a
       RunMonitor for progress, heartbeat and the cancel flag;
    3. success: digest the checkpoint, record metrics, per-stage metrics and the artifact, mark succeeded;
       `compressor.progress.Cancelled`: remove the partial files, mark cancelled (the log stays);
       any other error: remove the partial files, store the error and its traceback, mark failed;
    4. whatever the end, drop the run's pin on its upload in the studio cache (`workers.service.pin_run`).

    status = execute_run(17, worker="studio@host", settings=WorkerSettings.from_env())
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from sqlalchemy.exc import InterfaceError, OperationalError

from compressor.progress import Cancelled
from compressor.recipe import Recipe
from storage import artifacts, repo

from .broker import one_line
from .monitor import RunMonitor
from .roots import check_run_source
from .settings import WorkerSettings

log = logging.getLogger(__name__)


# What a database that is briefly away raises (connection refused or dropped, SQLite "database is locked").
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


class ClaimUnavailable(RuntimeError):
    """The database did not take the claim of a run after every retry; the run is still queued."""


def claim_run(run_id: int, *, worker: str, settings: WorkerSettings) -> str | None:
    """`repo.mark_started`, retried on transient database errors: `claim_retries` more tries, waiting
    claim_backoff_s, then twice that, and so on. Every try uses the same token, so a claim that committed but whose
    answer was lost is recognised. Returns the token or None (not queued); raises `ClaimUnavailable`."""
    token, delay, tries = str(uuid.uuid4()), settings.claim_backoff_s, 0
    while True:
        tries += 1
        try:
            return repo.mark_started(run_id, worker=worker, pid=os.getpid(), token=token)
        except TRANSIENT_DB_ERRORS as exc:
            reason = one_line(exc)[:300]
            if tries > settings.claim_retries:
                raise ClaimUnavailable(f"run {run_id}: the database did not take the claim in {tries} tries "
                                       f"({reason})") from exc
            log.warning("run %s: claim failed (%s); try %d of %d in %.1f s", run_id, reason, tries + 1,
                        settings.claim_retries + 1, delay)
            time.sleep(delay)
            delay *= 2


def load_pipeline(spec: str) -> Callable:
    """Import "package.module:function"."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"MOE_STUDIO_PIPELINE={spec!r}: module {module_name} has no {attr!r}") from None


def _jsonable(obj):
    """JSON-safe copy: numpy / torch scalars via .item(), arrays via .tolist(), paths and the rest via str."""
    def default(o):
        for attr in ("item", "tolist"):
            if hasattr(o, attr):
                try:
                    return getattr(o, attr)()
                except (TypeError, ValueError, RuntimeError):
                    pass
        return str(o)
    return json.loads(json.dumps(obj, default=default))


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _record_success(run_id: int, token: str, recipe: Recipe, out_dir: Path, result) -> bool:
    checkpoint = Path(result.checkpoint_dir).resolve()
    if not checkpoint.is_relative_to(out_dir.resolve()):
        raise RuntimeError(f"the pipeline wrote its checkpoint to {checkpoint}, outside the run folder {out_dir}")
    metrics, stages = _jsonable(dict(result.metrics)), _jsonable(list(result.stages))
    # The pipeline contract writes these two; make sure the download has them whatever pipeline ran.
    if not (out_dir / "recipe.yaml").exists():
        (out_dir / "recipe.yaml").write_text(recipe.to_yaml())
    if not (out_dir / "metrics.json").exists():
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    size, digest = artifacts.checkpoint_digest(checkpoint)
    return repo.mark_succeeded(run_id, token, metrics=metrics, stages=stages,
                               artifacts=[("checkpoint", artifacts.relative(checkpoint), size, digest)])


def execute_run(run_id: int, *, worker: str, settings: WorkerSettings) -> str:
    """Run one run to its end; return its final status, or "skipped" when this worker did not claim it."""
    token = claim_run(run_id, worker=worker, settings=settings)
    if token is None:
        log.info("run %s: not queued any more; skipping (duplicate delivery, cancelled or deleted)", run_id)
        return "skipped"
    out_dir = artifacts.run_dir(run_id)
    _remove(out_dir)  # leftovers of an earlier, interrupted attempt
    out_dir.mkdir(parents=True)
    monitor = RunMonitor(run_id, token, heartbeat_s=settings.heartbeat_s,
                         progress_every_s=settings.progress_every_s)
    try:
        return _execute_claimed(run_id, token, out_dir, monitor, settings)
    finally:
        from .service import unpin_run
        unpin_run(run_id)     # the run has ended: its upload may be evicted again


def _execute_claimed(run_id: int, token: str, out_dir: Path, monitor: RunMonitor, settings: WorkerSettings) -> str:
    try:
        with monitor:
            recipe = Recipe.parse(repo.get_run(run_id).recipe)
            check_run_source(recipe.model)   # the roots rule again: a folder may have become a link since Enqueue
            pipeline = load_pipeline(settings.pipeline)
            result = pipeline(recipe, out_dir, on_progress=monitor.on_progress, should_cancel=monitor.should_cancel)
        if _record_success(run_id, token, recipe, out_dir, result):
            return "succeeded"
        log.warning("run %s: finished, but the run was no longer ours (reaped or deleted)", run_id)
        return "lost"
    except Cancelled:
        _remove(out_dir)
        if monitor.lost:
            return "lost"
        repo.mark_cancelled(run_id, token)
        return "cancelled"
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded; interpreter exits are re-raised
        _remove(out_dir)
        interrupted = not isinstance(exc, Exception)
        error = (f"interrupted ({type(exc).__name__}): the worker was stopped during this run; re-run it"
                 if interrupted else f"{type(exc).__name__}: {exc}")
        repo.mark_failed(run_id, error=error, traceback=traceback.format_exc(), token=token)
        log.exception("run %s failed", run_id)
        if interrupted:
            raise
        return "failed"
