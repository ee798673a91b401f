"""Importance analysis as a Celery job, for the Explore tab when a model's scores are not cached yet.

The task takes a model id (a row of `storage.catalog`) and the calibration settings, loads the model, and calls
`compressor.importance.load_or_analyze` on the same calibration batches a recipe with these settings uses, so the
scores land in the same on-disk cache (`compressor.importance.scores_cache_dir()`) and a later run re-uses them.
Progress goes to the Celery result backend (`update_state(state="PROGRESS", meta=ProgressEvent)`); the analysis
is not a run, so it has no row in the runs table. The task is idempotent: a second delivery finds the cache filled.

    task_id = send_analysis(model_id, AnalysisSettings(tokens=4096))
    analysis_state(task_id)       # {"state": "PROGRESS", "fraction": 0.4, "message": "batch 2/5", ...}
    scores_dir_if_cached(loaded, AnalysisSettings(tokens=4096))   # Path once it finished
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from celery import shared_task

from compressor.recipe import CalibrationConfig
from storage import catalog

from .celery_app import get_app

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


def _inputs(loaded, settings: AnalysisSettings):
    from compressor.data import calibration_batches
    from compressor.importance import AnalyzeConfig

    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source}: the model folder has no tokenizer files, so calibration text cannot be "
                         "encoded; add tokenizer.json / tokenizer_config.json next to config.json")
    batches = calibration_batches(loaded.tokenizer, tokens=settings.tokens, seq_len=settings.seq_len,
                                  batch_size=settings.batch_size)
    return batches, AnalyzeConfig(taylor=settings.taylor)


def scores_dir_if_cached(loaded, settings: AnalysisSettings) -> Path | None:
    """The cache folder of this model's scores for `settings` when a finished analysis is there, else None."""
    from compressor.importance import cache_key, data_fingerprint, scores_cache_dir
    from compressor.importance.cache import model_settings
    from compressor.importance.scores import SUMMARY_FILE

    batches, config = _inputs(loaded, settings)
    key = cache_key(weights_fp=loaded.fingerprint, data_fp=data_fingerprint(batches), config=config,
                    settings=model_settings(loaded.model))
    target = scores_cache_dir() / key
    return target if (target / SUMMARY_FILE).is_file() else None


def run_analysis(loaded, settings: AnalysisSettings, *, on_progress=None, should_cancel=None):
    """`load_or_analyze` on the calibration batches of `settings`; returns the ImportanceReport."""
    from compressor.importance import load_or_analyze

    batches, config = _inputs(loaded, settings)
    return load_or_analyze(loaded.model, batches, config=config, weights_fp=loaded.fingerprint,
                           on_progress=on_progress, should_cancel=should_cancel)


@shared_task(name=ANALYZE_TASK, bind=True)
def analyze_model(self, model_id: int, settings: dict) -> dict:
    """Score the catalogued model `model_id` with `settings`; returns {"dir", "hit", "seconds"}."""
    from compressor.sources import load_model

    row = catalog.get_model(int(model_id))
    if row is None:
        raise ValueError(f"model {model_id} is not in the catalogue; open it in the Model tab again")
    cfg = AnalysisSettings.from_dict(settings)
    t0 = time.perf_counter()
    self.update_state(state="PROGRESS", meta={"stage": "load", "fraction": 0.0, "message": f"loading {row.source}"})
    loaded = load_model(row.source)
    last = [0.0]

    def on_progress(event) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or event.step == event.total:
            last[0] = now
            self.update_state(state="PROGRESS", meta=event.to_dict())

    report = run_analysis(loaded, cfg, on_progress=on_progress)
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
