"""Repository functions for the models the studio has opened (one row per weights fingerprint, with its summary and
label). Importance scores are cached on disk by what they were computed from (compressor/importance/cache.py).

    model_id = upsert_model(source="demo", fingerprint="ab12...", summary={"family": "qwen3_moe"})
"""
from __future__ import annotations

from sqlalchemy import select

from .db import session_scope
from .models import Model


def upsert_model(*, source: str, fingerprint: str, summary: dict, label: str | None = None) -> int:
    """The id of the model with this fingerprint; created, or its source and summary refreshed (and its label,
    when one is given: an upload opened again from its staged path keeps the name it was uploaded under)."""
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
        return model.id


def labels_by_source() -> dict[str, str]:
    """{source: label} of every catalogued model that has a label (the newest row wins for a shared source)."""
    with session_scope() as s:
        rows = s.execute(select(Model.source, Model.label).where(Model.label.is_not(None)).order_by(Model.id))
        return {source: label for source, label in rows}


def get_model(model_id: int) -> Model | None:
    with session_scope() as s:
        return s.get(Model, model_id)
