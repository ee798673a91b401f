"""The Compare tab's side-by-side generation as a short Celery job, so the web process never loads weights.

The task takes the two model sources (already resolved by the app: "demo", a folder under the model roots, a hub id,
or a run's checkpoint folder, see `ui.services.compare_source`), the prompt and the decoding settings; it loads both
models in the worker's job process (one model when both sources are the same), calls
`compressor.compare.compare_models` and returns `Comparison.to_dict()`, which the JSON result backend carries back.
Progress goes to the result backend (`update_state(state="PROGRESS", meta=...)`), as for the analysis job; a
comparison is not a run, so it has no row in the runs table. It reads and writes nothing else, so a second delivery
simply computes the same answer again.

    task_id = send_compare("demo", compare_source("run:7", "demo"), "The economy", DecodeSettings(max_new_tokens=24))
    compare_state(task_id)     # {"state": "PROGRESS", "fraction": 0.3, "message": "loading model B", ...}
    compare_state(task_id)     # {"state": "SUCCESS", "result": {...Comparison.to_dict()...}, ...}
"""
from __future__ import annotations

import time

from celery import shared_task

from storage.artifacts import artifacts_root

from .celery_app import get_app
from .roots import check_run_source

COMPARE_TASK = "workers.compare_models"
WAITING = {"PENDING": "waiting for the worker (it runs one job at a time)", "STARTED": "starting"}


def _load(source: str, label: str, report):
    from compressor.sources import load_model
    check_run_source(source, extra_roots=(artifacts_root(),))   # the roots rule again, links included
    report(f"loading model {label}")
    return load_model(source)


@shared_task(name=COMPARE_TASK, bind=True)
def compare_job(self, source_a: str, source_b: str, prompt: str, settings: dict) -> dict:
    """Generate with both models from `prompt` with the same `settings` (a `DecodeSettings.to_dict()`) and score
    them; returns `Comparison.to_dict()` plus "seconds". Raises ValueError when neither model ships a tokenizer."""
    from compressor.compare import DecodeSettings, compare_models

    cfg = DecodeSettings.from_dict(settings)
    t0 = time.perf_counter()
    steps = iter((0.1, 0.4, 0.7))

    def report(message: str) -> None:
        self.update_state(state="PROGRESS", meta={"fraction": next(steps), "message": message})

    a = _load(source_a, "A", report)
    b = a if source_b == source_a else _load(source_b, "B", report)
    tokenizer = a.tokenizer or b.tokenizer
    if tokenizer is None:
        raise ValueError("neither model ships tokenizer files, so the prompt cannot be encoded; compare a model "
                         "whose folder has tokenizer.json (or tokenizer.model)")
    report(f"generating {cfg.max_new_tokens} tokens with both models")
    cmp = compare_models(a.model, b.model, tokenizer, prompt, settings=cfg)
    return {**cmp.to_dict(), "seconds": time.perf_counter() - t0}


def send_compare(source_a: str, source_b: str, prompt: str, settings) -> str:
    """Queue the comparison of two sources with `settings` (a DecodeSettings); returns the task id for
    `compare_state`."""
    return get_app().send_task(COMPARE_TASK, args=[str(source_a), str(source_b), str(prompt), settings.to_dict()]).id


def _error_of(info) -> str:
    """The worker's error as one line: the message alone for a refusal (ValueError, LookupError), else with its type."""
    if not isinstance(info, BaseException):
        return str(info)
    return str(info) if isinstance(info, (ValueError, LookupError)) else f"{type(info).__name__}: {info}"


def compare_state(task_id: str) -> dict:
    """{"state": PENDING|STARTED|PROGRESS|SUCCESS|FAILURE, "fraction", "message", "result", "error"} of a comparison;
    "result" is the task's `Comparison.to_dict()` (plus "seconds") once it succeeded."""
    res = get_app().AsyncResult(task_id)
    state, info = res.state, res.info
    out = {"state": state, "fraction": 0.0, "message": WAITING.get(state, ""), "result": None, "error": None}
    if state == "PROGRESS" and isinstance(info, dict):
        out.update(fraction=float(info.get("fraction") or 0.0), message=str(info.get("message") or ""))
    elif state == "SUCCESS" and isinstance(info, dict):
        out.update(fraction=1.0, message="done", result=info)
    elif state == "FAILURE":
        out["error"] = _error_of(info)
    return out
