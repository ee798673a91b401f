"""Repository functions for models and cached analyses (importance scores).

An analysis is keyed by (model, data fingerprint, settings hash): the same model scored on the same calibration data
with the same settings is computed once, and a new keep ratio re-uses it. `settings_hash` is
sha256(canonical JSON of the settings), so key order in the dict does not matter.

    model_id = upsert_model(source="demo", fingerprint="ab12...", summary={"family": "qwen3_moe"})
    hit = find_analysis(model_id, data_fingerprint="cd34...", settings={"tokens": 4096})
"""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from .db import session_scope
from .models import Analysis, Model, RunStatus, utcnow


def settings_hash(settings: dict) -> str:
    """sha256 of the settings as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def upsert_model(*, source: str, fingerprint: str, summary: dict, label: str | None = None) -> int:
    """The id of the model with this fingerprint; created, or its source and summary refreshed (and its label,
    when one is given: an upload opened again from its staged path keeps the name it was uploaded under)."""
    with session_scope() as s:
        model = s.scalar(select(Model).where(Model.fingerprint == fingerprint))
        if model is None:
            model = Model(source=source, fingerprint=fingerprint, summary=summary, label=label)
            s.add(model)
        else:
            model.source, model.summary = source, summary
            if label:
                model.label = label
        s.flush()
        return model.id


def labels_by_source() -> dict[str, str]:
    """{source: label} of every catalogued model that has a label (the newest row wins for a shared source)."""
    with session_scope() as s:
        rows = s.execute(select(Model.source, Model.label).where(Model.label.is_not(None)).order_by(Model.id))
        return {source: label for source, label in rows}


def get_model(model_id: int) -> Model | None:
    with session_scope() as s:
        return s.get(Model, model_id)


def find_analysis(model_id: int, *, data_fingerprint: str, settings: dict) -> Analysis | None:
    """The finished analysis for exactly this model, data and settings, or None."""
    with session_scope() as s:
        return s.scalar(select(Analysis).where(
            (Analysis.model_id == model_id) & (Analysis.data_fingerprint == data_fingerprint)
            & (Analysis.settings_hash == settings_hash(settings)) & (Analysis.status == RunStatus.succeeded.value)))


def record_analysis(model_id: int, *, data_fingerprint: str, settings: dict, path: str) -> int:
    """Store a finished analysis whose scores live at `path` (relative to the artifact root); replaces an
    earlier record with the same key."""
    key = settings_hash(settings)
    with session_scope() as s:
        row = s.scalar(select(Analysis).where((Analysis.model_id == model_id)
                                              & (Analysis.data_fingerprint == data_fingerprint)
                                              & (Analysis.settings_hash == key)))
        if row is None:
            row = Analysis(model_id=model_id, data_fingerprint=data_fingerprint, settings=settings, settings_hash=key)
            s.add(row)
        row.status, row.path, row.error, row.finished_at = RunStatus.succeeded.value, path, None, utcnow()
        s.flush()
        return row.id
