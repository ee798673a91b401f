"""Models: one row per weights fingerprint."""
from __future__ import annotations

from storage import catalog


def test_models_are_keyed_by_fingerprint(db_url):
    a = catalog.upsert_model(source="demo", fingerprint="f" * 64, summary={"experts": 8})
    b = catalog.upsert_model(source="/models/demo", fingerprint="f" * 64, summary={"experts": 8, "top_k": 2})
    assert a == b
    model = catalog.get_model(a)
    assert (model.source, model.summary) == ("/models/demo", {"experts": 8, "top_k": 2})
