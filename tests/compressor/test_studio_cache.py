"""The studio cache: least recently used entries make room under the quota, refused models can be discarded."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from compressor import studio_cache
from compressor.sources import SourceError, extract_cached
from compressor.studio_cache import CacheFullError, discard_staged, make_room, parse_size

SHA_A, SHA_B = "a" * 64, "b" * 64


def _entry(path: Path, size: int, age_s: float) -> Path:
    """A cache entry of `size` bytes (a file, or a folder with one file) last used `age_s` seconds ago."""
    if path.suffix:
        path.write_bytes(b"x" * size)
    else:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * size)
    t = os.path.getmtime(path) - age_s
    os.utime(path, (t, t))
    return path


def test_sizes_parse_with_binary_units():
    assert [parse_size(t, name="X") for t in ("512", "1kb", "1.5 MB", "2gb")] == [512, 1024, 3 * 2**19, 2 * 2**30]
    with pytest.raises(ValueError, match="X='lots': give a size such as 500mb"):
        parse_size("lots", name="X")


def test_least_recently_used_entries_go_first_until_the_new_one_fits(cache):
    old = _entry(cache / "uploads" / f"{SHA_A}.zip", 4096, age_s=300)
    mid = _entry(cache / "archives" / SHA_A, 4096, age_s=200)
    new = _entry(cache / "uploads" / SHA_B, 1024, age_s=100)
    (cache / "archives" / ".in-progress").mkdir()                    # hidden: neither counted nor evicted
    assert make_room(2048) == [old]                                  # 9 KiB used + 2 KiB > 10 KiB: one goes
    assert mid.exists() and new.exists() and (cache / "archives" / ".in-progress").exists()
    assert make_room(6 * 1024, keep=[mid]) == [new]                  # kept entries stay, even over the quota
    assert mid.exists()


def test_an_entry_larger_than_the_whole_quota_is_refused(cache):
    kept = _entry(cache / "uploads" / SHA_B, 1024, age_s=10)
    with pytest.raises(CacheFullError, match=r"needs 11.0 KiB .* whole quota of 10.0 KiB; raise MOE_STUDIO_CACHE_QUOTA"):
        make_room(11 * 1024)
    assert kept.exists()                                              # nothing evicted for a refusal


def test_extraction_makes_room_and_a_hit_marks_it_used(cache, tmp_path):
    stale = _entry(cache / "archives" / SHA_B, 8 * 1024, age_s=1000)
    up = tmp_path / "up.zip"
    with zipfile.ZipFile(up, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/model.safetensors", os.urandom(4096))
    root = extract_cached(up)
    assert root.name == "m" and (root / "model.safetensors").stat().st_size == 4096
    assert not stale.exists()                                         # evicted to keep 10 KiB
    past = os.path.getmtime(root.parent) - 500
    os.utime(root.parent, (past, past))
    assert extract_cached(up) == root and os.path.getmtime(root.parent) > past + 400


def test_an_archive_over_the_quota_is_a_source_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_CACHE_QUOTA", "2kb")
    up = tmp_path / "big.zip"
    with zipfile.ZipFile(up, "w") as zf:
        zf.writestr("m/model.safetensors", os.urandom(4096))
    with pytest.raises(SourceError, match="MOE_STUDIO_CACHE_QUOTA"):
        extract_cached(up)
    assert [p.name for p in (cache / "archives").iterdir()] == []    # no half extraction left


def test_discard_staged_removes_an_upload_and_its_extraction_only(cache, tmp_path):
    upload = _entry(cache / "uploads" / f"{SHA_A}.tar.gz", 10, age_s=0)
    extraction = _entry(cache / "archives" / SHA_A, 10, age_s=0)
    other = _entry(cache / "archives" / SHA_B, 10, age_s=0)
    assert discard_staged(str(upload)) == [upload, extraction]
    assert not upload.exists() and not extraction.exists() and other.exists()
    assert discard_staged(str(other / "m")) == [other]                # a folder inside an extraction
    mine = tmp_path / "my-model"
    mine.mkdir()
    for outside in (str(mine), "demo", "org/name", str(cache), str(cache / "uploads")):
        assert discard_staged(outside) == []
    assert mine.exists() and (cache / "uploads").is_dir()


def test_the_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path / "c"))
    assert studio_cache.studio_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MOE_STUDIO_CACHE")
    assert studio_cache.studio_cache_dir() == Path.home() / ".cache" / "moe-studio"
