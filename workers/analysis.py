"""Importance analysis as a Celery job, for the Explore tab when a model's scores are not cached yet.

The task takes a model id (a row of `storage.catalog`) and the calibration settings and calls
`compressor.scoring.analyze_source` (in memory, or layer by layer for a model that does not fit) on the same
calibration batches a recipe with these settings uses, so the
scores land in the same on-disk cache (`compressor.importance.scores_cache_dir()`) and a later run re-uses them.
Progress goes to the Celery result backend (`update_state(state="PROGRESS", meta=ProgressEvent)`); the analysis
is not a run, so it has no row in the runs table. The task is idempotent: a second delivery finds the cache filled.

    task_id = send_analysis(model_id, AnalysisSettings(tokens=4096))
    analysis_state(task_id)       # {"state": "PROGRESS", "fraction": 0.4, "message": "batch 2/5", ...}
    scores_dir_if_cached("demo", AnalysisSettings(tokens=4096))   # Path once it finished (no weights loaded)
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from celery import shared_task

from compressor.progress import Reporter
from compressor.recipe import CalibrationConfig
from storage import catalog

from .celery_app import get_app
from .roots import check_run_source

log = logging.getLogger(__name__)
ANALYZE_TASK = "workers.analyze_model"


@dataclass(frozen=True)
class AnalysisSettings:
    """Calibration of the Explore tab: the recipe's `calibration` section plus whether to add Taylor scores."""

    tokens: int = 32768
    seq_len: int = 256
    batch_size: int = 8
    taylor: bool = True

    def __post_init__(self):
        CalibrationConfig(tokens=self.tokens, seq_len=self.seq_len, batch_size=self.batch_size)  # validates

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisSettings":
        return cls(**{k: data[k] for k in ("tokens", "seq_len", "batch_size", "taylor") if k in data})


def _inputs(source: str, settings: AnalysisSettings):
    from compressor.scoring import scoring_inputs
    return scoring_inputs(source, tokens=settings.tokens, seq_len=settings.seq_len, batch_size=settings.batch_size,
                          taylor=settings.taylor)


def scores_dir_if_cached(source: str, settings: AnalysisSettings) -> Path | None:
    """The cache folder of this model's scores for `settings` when a finished analysis is there, else None. Reads
    config.json, the tokenizer and the weight files' fingerprint (hashed once per process), never the weights into
    memory: the web process calls it."""
    from compressor.scoring import cached_scores_dir
    return cached_scores_dir(_inputs(source, settings))


@shared_task(name=ANALYZE_TASK, bind=True)
def analyze_model(self, model_id: int, settings: dict) -> dict:
    """Score the catalogued model `model_id` with `settings`; returns {"dir", "hit", "seconds"}."""

    row = catalog.get_model(int(model_id))
    if row is None:
        raise ValueError(f"model {model_id} is not in the catalogue; open it in the Model tab again")
    cfg = AnalysisSettings.from_dict(settings)
    t0 = time.perf_counter()
    check_run_source(row.source)        # the roots rule again, links included: the folder may have changed
    self.update_state(state="PROGRESS", meta={"stage": "load", "fraction": 0.0, "message": f"preparing {row.source}"})
    inputs = _inputs(row.source, cfg)
    last = [0.0]

    def on_progress(event) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or event.step == event.total:
            last[0] = now
            self.update_state(state="PROGRESS", meta=event.to_dict())

    from compressor.scoring import analyze_source
    report = analyze_source(inputs, reporter=Reporter(on_progress))     # in memory, or layer by layer when it must
    cache = report.meta.get("cache", {})
    return {"dir": cache.get("dir"), "hit": bool(cache.get("hit")), "seconds": time.perf_counter() - t0}


def send_analysis(model_id: int, settings: AnalysisSettings) -> str:
    """Queue the analysis; returns the Celery task id to poll with `analysis_state`."""
    return get_app().send_task(ANALYZE_TASK, args=[int(model_id), settings.to_dict()]).id


def analysis_state(task_id: str) -> dict:
    """{"state": PENDING|STARTED|PROGRESS|SUCCESS|FAILURE, "fraction", "message", "dir", "error"} of a task."""
    res = get_app().AsyncResult(task_id)
    state, info = res.state, res.info
    out = {"state": state, "fraction": 0.0, "message": "", "dir": None, "error": None}
    if state == "PROGRESS" and isinstance(info, dict):
        out.update(fraction=float(info.get("fraction") or 0.0), message=str(info.get("message") or info.get("stage")))
    elif state == "SUCCESS" and isinstance(info, dict):
        out.update(fraction=1.0, dir=info.get("dir"), message="done")
    elif state == "FAILURE":
        out["error"] = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
    return out
