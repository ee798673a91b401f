"""Models and cached analyses: one row per fingerprint, analyses found again by (model, data, settings)."""
from __future__ import annotations

import hashlib

from storage import catalog


def test_models_are_keyed_by_fingerprint(db_url):
    a = catalog.upsert_model(source="demo", fingerprint="f" * 64, summary={"experts": 8})
    b = catalog.upsert_model(source="/models/demo", fingerprint="f" * 64, summary={"experts": 8, "top_k": 2})
    assert a == b
    model = catalog.get_model(a)
    assert (model.source, model.summary) == ("/models/demo", {"experts": 8, "top_k": 2})


def test_settings_hash_ignores_key_order():
    expected = hashlib.sha256(b'{"seq_len":256,"tokens":4096}').hexdigest()
    assert catalog.settings_hash({"tokens": 4096, "seq_len": 256}) == expected
    assert catalog.settings_hash({"seq_len": 256, "tokens": 4096}) == expected


def test_an_analysis_is_found_only_for_the_same_model_data_and_settings(db_url):
    model_id = catalog.upsert_model(source="demo", fingerprint="m1", summary={})
    settings = {"tokens": 4096, "seq_len": 256}
    assert catalog.find_analysis(model_id, data_fingerprint="d1", settings=settings) is None
    first = catalog.record_analysis(model_id, data_fingerprint="d1", settings=settings, path="analyses/1.pt")
    hit = catalog.find_analysis(model_id, data_fingerprint="d1", settings={"seq_len": 256, "tokens": 4096})
    assert (hit.id, hit.path, hit.status) == (first, "analyses/1.pt", "succeeded")
    assert catalog.find_analysis(model_id, data_fingerprint="d2", settings=settings) is None
    assert catalog.find_analysis(model_id, data_fingerprint="d1", settings={"tokens": 8192, "seq_len": 256}) is None
    again = catalog.record_analysis(model_id, data_fingerprint="d1", settings=settings, path="analyses/2.pt")
    assert again == first and catalog.find_analysis(model_id, data_fingerprint="d1",
                                                    settings=settings).path == "analyses/2.pt"
