"""Issue 28: entries a queued or running run needs are pinned until it ends, and the quota holds when uploads and
extractions of several sessions (threads, processes) make room at the same time."""
from __future__ import annotations

import multiprocessing
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compressor import studio_cache
from compressor.sources import extract_cached
from compressor.studio_cache import CacheFullError, make_room, pin, pins, reserve, sync_pins, unpin

SHA_A, SHA_B = "a" * 64, "b" * 64
KIB = 1024


def _old_file(path: Path, size: int, age_s: float = 1000) -> Path:
    path.write_bytes(b"x" * size)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_a_pinned_upload_survives_another_sessions_extraction_until_it_is_unpinned(cache, tmp_path):
    queued = _old_file(cache / "uploads" / f"{SHA_A}.zip", 6 * KIB)           # the oldest entry: first to go
    assert pin("run-1", str(queued)) == [queued, cache / "archives" / SHA_A]
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("m/model.safetensors", os.urandom(5 * KIB))
    with pytest.raises(Exception, match="held by the uploads of queued or running runs"):
        extract_cached(other)                                                  # 6 + 5 > 10 KiB: refused, not evicted
    assert queued.exists() and [p.name for p in (cache / "archives").iterdir()] == []
    unpin("run-1")                                                             # the run ended
    assert extract_cached(other).is_dir() and not queued.exists()


def test_make_room_refuses_without_deleting_when_pins_and_keeps_leave_no_room(cache):
    pinned = _old_file(cache / "uploads" / f"{SHA_A}.zip", 4 * KIB)
    kept = _old_file(cache / "uploads" / SHA_B, 3 * KIB, age_s=900)
    free = _old_file(cache / "archives" / ("c" * 64), 2 * KIB, age_s=800)
    pin("run-2", str(pinned))
    with pytest.raises(CacheFullError, match=r"cannot take 4.0 KiB more: of its 10.0 KiB quota, 7.0 KiB is held"):
        make_room(4 * KIB, keep=[kept])
    assert free.exists()                                                       # nothing deleted for a refusal
    assert make_room(3 * KIB, keep=[kept]) == [free]


def test_sync_pins_drops_ended_runs_and_pins_active_ones_only_for_its_prefix(cache):
    a = _old_file(cache / "uploads" / f"{SHA_A}.zip", 10)
    b = _old_file(cache / "uploads" / f"{SHA_B}.tar.gz", 10)
    pin("run-1", str(a))
    pin("other-1", str(a))
    sync_pins({"run-2": str(b), "run-3": "demo"}, prefix="run-")
    assert sorted(pins()) == ["other-1", "run-1", "run-2"]      # run-1 was pinned just now: maybe a new run
    old = time.time() - 120
    os.utime(cache / studio_cache.PINS / "run-1.json", (old, old))
    sync_pins({"run-2": str(b), "run-3": "demo"}, prefix="run-")
    assert sorted(pins()) == ["other-1", "run-2"]
    assert pins()["run-2"][0] == b
    with pytest.raises(ValueError, match="pin owner '../x'"):
        pin("../x", str(a))


def test_a_dead_writers_reservation_is_not_counted(cache):
    folder = cache / studio_cache.RESERVED
    folder.mkdir()
    dead = subprocess_pid()
    (folder / f"{dead}-x").write_text(str(9 * KIB))
    (folder / f"{os.getpid()}-y").write_text(str(2 * KIB))
    assert studio_cache.reserved_bytes() == 2 * KIB
    assert not (folder / f"{dead}-x").exists()


def subprocess_pid() -> int:
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def _stage(name: str, size: int) -> float:
    """What stage_upload does: reserve, make room, write a hidden partial copy, rename it into place. Returns the
    largest cache use (entries + partial copies on disk) seen while holding the cache lock."""
    uploads = studio_cache.studio_cache_dir() / "uploads"
    worst = 0
    with reserve() as room:
        room.make_room(size)
        part = uploads / f".{name}.part"
        with open(part, "wb") as fh:
            for _ in range(size // 512):
                fh.write(b"x" * 512)
                fh.flush()
                time.sleep(0.001)
        os.replace(part, uploads / name)
        with studio_cache.cache_lock():
            worst = sum(studio_cache.entry_bytes(p) for p in uploads.iterdir())
    return worst


def _stage_or_refuse(name: str, size: int) -> float:
    """`_stage`, or -1 when the cache refused it (the others' reservations and the pin left no room)."""
    try:
        return _stage(name, size)
    except CacheFullError:
        return -1


def _stage_in_process(args) -> float:
    cache, name, size = args
    os.environ["MOE_STUDIO_CACHE"] = cache
    os.environ["MOE_STUDIO_CACHE_QUOTA"] = "10kb"
    return _stage_or_refuse(name, size)


def test_the_quota_holds_and_pins_stay_under_concurrent_uploads_from_threads(cache):
    queued = _old_file(cache / "uploads" / f"{SHA_A}.zip", 3 * KIB)
    pin("run-7", str(queued))
    with ThreadPoolExecutor(6) as pool:
        worst = list(pool.map(lambda i: _stage_or_refuse(f"{i:064x}.zip", 3 * KIB), range(12)))
    assert queued.exists()
    assert sum(w > 0 for w in worst) >= 2 and max(worst) <= 10 * KIB
    assert sum(studio_cache.entry_bytes(p) for p in studio_cache.cache_entries()) <= 10 * KIB


def test_the_quota_holds_and_pins_stay_under_concurrent_uploads_from_processes(cache):
    queued = _old_file(cache / "uploads" / f"{SHA_A}.zip", 3 * KIB)
    pin("run-8", str(queued))
    jobs = [(str(cache), f"{i:064x}.zip", 3 * KIB) for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        worst = pool.map(_stage_in_process, jobs)
    assert queued.exists()
    assert sum(w > 0 for w in worst) >= 2 and max(worst) <= 10 * KIB
    assert sum(studio_cache.entry_bytes(p) for p in studio_cache.cache_entries()) <= 10 * KIB
