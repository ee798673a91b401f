"""Repository functions for the models the studio has opened (one row per weights fingerprint, with its summary) and
the names of their sources (one per source, the first kept: `label_source`). Importance scores are cached on disk
by what they were computed from (compressor/importance/cache.py).

    model_id = upsert_model(source="demo", fingerprint="ab12...", summary={"family": "qwen3_moe"})
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .db import session_scope
from .models import Model, ModelLabel, utcnow


def upsert_model(*, source: str, fingerprint: str, summary: dict, label: str | None = None) -> int:
    """The id of the model with this fingerprint; created, or its source and summary refreshed. A `label` names the
    source (`label_source`: the first name of a source is kept); `models.label` is still written but no longer
    read (migration 0005)."""
    with session_scope() as s:
        model = s.scalar(select(Model).where(Model.fingerprint == fingerprint))
        if model is None:
            model = Model(source=source, fingerprint=fingerprint, summary=summary, label=label)
            s.add(model)
        else:
            if label:
                model.label = label
            elif model.source != source:      # the same weights under another source (the demo's files uploaded as
                model.label = None            # "x.zip", then the demo opened): a label names a source, not weights
            model.source, model.summary = source, summary
        s.flush()
        model_id = model.id
    if label:
        label_source(source, label)
    return model_id


def label_source(source: str, label: str) -> str:
    """Name `source` `label` unless it already has a name; return the name it has. The first name stays: a staged
    upload is named by its content, so another session uploading the same bytes under another name (or opening
    the same weights from another archive) does not rename the runs made from the first."""
    label = label[:200]
    with session_scope() as s:
        existing = s.get(ModelLabel, source)
        if existing is not None:
            return existing.label
        try:
            with s.begin_nested():
                s.add(ModelLabel(source=source, label=label, created_at=utcnow()))
        except IntegrityError:          # another session named it in between: theirs was first
            return s.get(ModelLabel, source).label
    return label


def labels_by_source() -> dict[str, str]:
    """{source: label} of every named source (`label_source`)."""
    with session_scope() as s:
        return {source: label for source, label in s.execute(select(ModelLabel.source, ModelLabel.label))}


def get_model(model_id: int) -> Model | None:
    with session_scope() as s:
        return s.get(Model, model_id)
