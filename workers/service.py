"""What the UI and the CLI call: enqueue, cancel, re-run, delete. Ids in, ids out; the runs table is the truth.

A broker that is down does not lose a run and does not fail the enqueue: the run is stored as queued, its message
says "waiting for the broker (...)", and the reaper sends it at its first round after the broker is back.

A run goes to the queue its recipe's `execution.device` needs (`run_queue`): cuda / cuda:N to the GPU queue, cpu to
the default one, auto to the one MOE_STUDIO_AUTO_QUEUE names (the default queue unless configured).

    run_id = enqueue_run({"model": "demo", "slimming": {"expert_keep_ratio": 0.5}})
    cancel_run(run_id)            # "cancelled" when it was queued, "running" while the worker winds down
    new_id = rerun(run_id)        # same recipe, new run
    delete_run(new_id)            # row, metrics, log and files
"""
from __future__ import annotations

import logging
import os

from celery import Celery

from compressor import studio_cache
from compressor.recipe import Recipe
from storage import artifacts, repo
from storage.models import RunStatus

from .broker import BrokerUnavailable, one_line
from .celery_app import send_run_message
from .settings import WorkerSettings

__all__ = ["BrokerUnavailable", "RunBusy", "cancel_run", "delete_run", "enqueue_run", "rerun", "run_queue",
           "send_run"]

log = logging.getLogger(__name__)


class RunBusy(RuntimeError):
    """The run is running; cancel it and wait for it to stop first."""


def run_queue(recipe: dict | Recipe, settings: WorkerSettings | None = None) -> str:
    """The queue of a run with `recipe` (a stored dict is read through `Recipe.parse`, so an older version routes as
    it runs). A stored recipe that no longer validates goes to the default queue, where the worker fails it with
    the validation message."""
    settings = settings or WorkerSettings.from_env()
    try:
        parsed = recipe if isinstance(recipe, Recipe) else Recipe.parse(recipe or {})
    except ValueError:
        return settings.queue
    return settings.queue_for_device(parsed.execution.device)


def send_run(run_id: int, app: Celery | None = None, *, note: str | None = None, queue: str | None = None) -> None:
    """Put a message for `run_id` on `queue` (default: the one its stored recipe needs, `run_queue`; the worker
    re-reads the row) and record the send on the row (`sent_at`, `send_count`; `note` goes to the run's log).
    Raises `BrokerUnavailable` when the broker did not take it."""
    if queue is None:
        queue = run_queue(repo.get_run(run_id).recipe)
    try:
        send_run_message(run_id, app, queue=queue)
    except Exception as exc:
        raise BrokerUnavailable(
            f"run {run_id} is saved as queued, but the broker did not take it ({one_line(exc)}). Check REDIS_URL / "
            "that Redis is running; the run is sent as soon as the broker is reachable again.", one_line(exc)) from exc
    repo.mark_sent(run_id, note=note)


def enqueue_run(recipe: dict | Recipe, *, name: str = "", parent_run_id: int | None = None) -> int:
    """Validate `recipe` (a `RecipeError` naming every bad field is raised before any row exists), store a queued
    run and send it. Returns the run id, also when the broker is down (the row then says it waits for it)."""
    parsed = recipe if isinstance(recipe, Recipe) else Recipe.parse(recipe)
    run_id = repo.create_run(parsed.to_dict(), name=name, parent_run_id=parent_run_id)
    if pin_run(run_id, parsed.model) and not os.path.exists(parsed.model):
        unpin_run(run_id)
        repo.mark_failed(run_id, error="the uploaded model was removed from the studio cache to make room before "
                                       "this run was queued; upload it again and enqueue again")
        return run_id
    try:
        send_run(run_id, queue=run_queue(parsed))
    except BrokerUnavailable as exc:
        log.warning("%s", exc)
        repo.mark_waiting_for_broker(run_id, exc.reason)
    return run_id


PIN_PREFIX = "run-"


def pin_run(run_id: int, source: str) -> list:
    """Keep the cache entries (upload, extraction) that run `run_id` reads until it ends (`studio_cache.pin`);
    returns them (none for a model outside the cache). A cache that cannot be written is logged, not fatal: the
    reaper's `sync_run_pins` makes the pin at its next round."""
    try:
        return studio_cache.pin(f"{PIN_PREFIX}{run_id}", str(source))
    except OSError as exc:
        log.warning("run %s: cannot pin its model in the studio cache (%s)", run_id, exc)
        return []


def unpin_run(run_id: int) -> None:
    try:
        studio_cache.unpin(f"{PIN_PREFIX}{run_id}")
    except OSError as exc:
        log.warning("run %s: cannot unpin its model in the studio cache (%s)", run_id, exc)


def sync_run_pins() -> None:
    """Pins exactly for the queued and running runs: the reaper's repair for runs that ended where no pin was
    dropped (cancelled while queued, reaped, deleted, a worker killed) or were queued before pins existed."""
    active = [r for st in (RunStatus.queued.value, RunStatus.running.value) for r in repo.list_runs(status=st)]
    studio_cache.sync_pins({f"{PIN_PREFIX}{r.id}": str((r.recipe or {}).get("model", "")) for r in active},
                           prefix=PIN_PREFIX)


def cancel_run(run_id: int) -> str:
    """Cooperative cancel; returns the status right after the request (a queued run's pin goes at once)."""
    status = repo.request_cancel(run_id)
    if status == RunStatus.cancelled.value:
        unpin_run(run_id)
    return status


def rerun(run_id: int, *, recipe: dict | None = None) -> int:
    """A new run with the recipe of `run_id` (or an edited `recipe`), linked to it as its parent."""
    source = repo.get_run(run_id)
    return enqueue_run(recipe if recipe is not None else source.recipe, name=source.name, parent_run_id=run_id)


def delete_run(run_id: int) -> None:
    """Delete a run that is not running: its row, metrics, log and artifact folder. A queued run is cancelled
    first. Raises `RunBusy` for a running run and `RunNotFound` for an unknown id."""
    run = repo.get_run(run_id)
    if run.status == RunStatus.running.value:
        raise RunBusy(f"run {run_id} is running; cancel it and wait until it shows 'cancelled' before deleting")
    if run.status == RunStatus.queued.value and repo.request_cancel(run_id) == RunStatus.running.value:
        raise RunBusy(f"run {run_id} started just now; cancel it and wait until it shows 'cancelled'")
    repo.delete_run(run_id)
    unpin_run(run_id)
    artifacts.remove_run_dir(run_id)
