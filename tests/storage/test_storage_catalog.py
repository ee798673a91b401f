"""Models: one row per weights fingerprint."""
from __future__ import annotations

from storage import catalog


def test_models_are_keyed_by_fingerprint(db_url):
    a = catalog.upsert_model(source="demo", fingerprint="f" * 64, summary={"experts": 8})
    b = catalog.upsert_model(source="/models/demo", fingerprint="f" * 64, summary={"experts": 8, "top_k": 2})
    assert a == b
    model = catalog.get_model(a)
    assert (model.source, model.summary) == ("/models/demo", {"experts": 8, "top_k": 2})


def test_a_label_names_a_source_not_the_weights(db_url):
    """The demo's files uploaded as my-tiny-moe.zip, then the demo opened: the demo is not listed as my-tiny-moe,
    and the upload still is."""
    catalog.upsert_model(source="/cache/uploads/ab.zip", fingerprint="same", summary={}, label="my-tiny-moe")
    assert catalog.labels_by_source() == {"/cache/uploads/ab.zip": "my-tiny-moe"}
    catalog.upsert_model(source="demo", fingerprint="same", summary={})
    assert catalog.labels_by_source() == {"/cache/uploads/ab.zip": "my-tiny-moe"}
    catalog.upsert_model(source="/cache/uploads/ab.zip", fingerprint="same", summary={})    # reopened from the cache
    assert catalog.labels_by_source() == {"/cache/uploads/ab.zip": "my-tiny-moe"}


def test_another_session_naming_the_same_or_an_equal_upload_renames_no_earlier_run(db_url):
    # Issue 28: the label lived on the one row per weights, so a second upload of the same weights (re-zipped:
    # another staged path) moved the row to its path and the first upload's runs lost their name, and the same
    # bytes uploaded as another name renamed them.
    catalog.upsert_model(source="/cache/uploads/aa.zip", fingerprint="w", summary={}, label="first")
    catalog.upsert_model(source="/cache/uploads/bb.tar.gz", fingerprint="w", summary={}, label="second")
    assert catalog.labels_by_source() == {"/cache/uploads/aa.zip": "first", "/cache/uploads/bb.tar.gz": "second"}
    assert catalog.label_source("/cache/uploads/aa.zip", "renamed") == "first"
    assert catalog.labels_by_source()["/cache/uploads/aa.zip"] == "first"
