"""The studio cache of staged uploads and extracted archives: where it is, its quota, eviction and discarding.

    $MOE_STUDIO_CACHE (default ~/.cache/moe-studio)/
        uploads/<sha256>.zip | .tar.gz | .tgz | .tar     an uploaded archive, named by its content
        uploads/<sha256>/                                 the loose files of one uploaded model folder
        archives/<sha256>/                                an archive's extraction (compressor.sources.extract_cached)

        .pins/<owner>.json                                the entries a queued or running run needs (`pin`)
        .reserved/<pid>-<id>                              bytes promised to a copy or extraction in progress
        .lock                                             taken (flock) by every eviction, pin and reservation

Rule: uploads/ and archives/ together hold at most `MOE_STUDIO_CACHE_QUOTA` bytes (default 100gb). Before a new
entry of n bytes is added, the least recently used entries (oldest mtime; a hit touches its entry) are deleted
until used + n <= quota, where used counts the entries and the live reservations of copies and extractions still
in progress. Pinned entries (`pin`: a queued or running run's upload and extraction) and the caller's `keep` are
never deleted; when what is left to delete cannot make room, nothing is deleted and CacheFullError says so. Every
eviction happens under one lock on the cache (an flock, so across threads and processes: the web process, the
isolated open process and the workers), so concurrent uploads cannot together go over the quota. Hidden names (a
'.' in front: extractions and copies in progress) are neither counted nor evicted; their reservation counts for
them. No torch here: the web process imports it before any model is opened.

    with reserve(keep=[staged_entries(active_source)]) as room:
        room.make_room(2 * 2**30)                                  # evicts, or raises CacheFullError
        copy_the_upload()                                          # counted as reserved until the block ends
    pin("run-7", str(upload)); ...; unpin("run-7")                # kept until run 7 ends
    discard_staged(str(studio_cache_dir() / "uploads" / f"{sha}.zip"))   # the upload and its extraction
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_PARTS = ("uploads", "archives")
DEFAULT_QUOTA = "100gb"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?")
_SCALE = {"b": 1, None: 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
_DIGEST = re.compile(r"^[0-9a-f]{64}")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PINS, RESERVED, LOCK = ".pins", ".reserved", ".lock"


class CacheFullError(ValueError):
    """A new cache entry larger than the whole quota; the message says how to raise it."""


def studio_cache_dir() -> Path:
    """`$MOE_STUDIO_CACHE`, else `~/.cache/moe-studio`; absolute."""
    env = os.environ.get("MOE_STUDIO_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "moe-studio").absolute()


def parse_size(text: str, *, name: str) -> int:
    """"20gb", "500mb", "1.5tb" or a byte count -> bytes (binary units); `name` is the setting, for the message."""
    raw = str(text).strip().lower()
    m = _SIZE.fullmatch(raw)
    if not m:
        raise ValueError(f"{name}={raw[:40]!r}: give a size such as 500mb or 20gb")
    return int(float(m.group(1)) * _SCALE[m.group(2)])


def cache_quota_bytes() -> int:
    """`MOE_STUDIO_CACHE_QUOTA` (e.g. "100gb"), default 100 GiB."""
    return parse_size(os.environ.get("MOE_STUDIO_CACHE_QUOTA") or DEFAULT_QUOTA, name="MOE_STUDIO_CACHE_QUOTA")


def cache_entries() -> list[Path]:
    """The top-level entries of uploads/ and archives/, hidden ones left out."""
    root = studio_cache_dir()
    return [p for part in CACHE_PARTS if (root / part).is_dir()
            for p in (root / part).iterdir() if not p.name.startswith(".")]


def entry_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links are not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


def touch(path: Path) -> None:
    """Mark a cache entry as just used (its mtime is the LRU clock)."""
    try:
        os.utime(path)
    except OSError:
        pass


@contextmanager
def cache_lock() -> Iterator[None]:
    """The cache's one lock (an flock on `.lock`): held by every eviction, pin and reservation, in any process."""
    root = studio_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_room(needed: int, *, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete least recently used entries until `needed` more bytes fit under the quota; return what was deleted.

    Entries in `keep`, pinned entries (`pin`) and live reservations (`reserve`) stay. Raises CacheFullError, having
    deleted nothing, when `needed` alone is more than the quota or when deleting every other entry would not make
    room. Reserves nothing: a caller that then writes the entry uses `reserve` instead, so that a concurrent
    upload counts the bytes it is about to write.
    """
    with cache_lock():
        return _evict_for(needed, keep)


class Reservation:
    """Bytes promised to an entry being written (`reserve`); counted as used until `release`."""

    def __init__(self, keep: Iterable[Path] = ()):
        self.keep = list(keep)
        self.bytes = 0
        self.path = studio_cache_dir() / RESERVED / f"{os.getpid()}-{uuid.uuid4().hex}"

    def make_room(self, needed: int) -> list[Path]:
        """`make_room(needed)`, and the `needed` bytes stay reserved for this writer until it releases them."""
        with cache_lock():
            evicted = _evict_for(needed, self.keep)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.bytes += needed
            self.path.write_text(str(self.bytes))
        return evicted

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


@contextmanager
def reserve(*, keep: Iterable[Path] = ()) -> Iterator[Reservation]:
    """A reservation for an entry written inside the block: `room.make_room(n)` before writing n bytes. Released at
    the end of the block (the finished entry then counts for itself); a dead writer's reservation is ignored."""
    room = Reservation(keep)
    try:
        yield room
    finally:
        room.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reserved_bytes() -> int:
    """Bytes of the live reservations; a reservation whose process is gone is deleted."""
    total = 0
    folder = studio_cache_dir() / RESERVED
    for f in folder.iterdir() if folder.is_dir() else ():
        try:
            pid = int(f.name.split("-", 1)[0])
            if not _alive(pid):
                f.unlink(missing_ok=True)
                continue
            total += int(f.read_text() or 0)
        except (OSError, ValueError):
            continue
    return total


def _evict_for(needed: int, keep: Iterable[Path]) -> list[Path]:
    """The eviction itself; the caller holds `cache_lock`."""
    quota = cache_quota_bytes()
    if needed > quota:
        raise CacheFullError(f"this model needs {_fmt(needed)} in the studio cache, more than its whole quota of "
                             f"{_fmt(quota)}; raise MOE_STUDIO_CACHE_QUOTA, or put the model folder under a model "
                             "root and open it as a local folder.")
    kept = {os.path.realpath(k) for k in keep} | pinned_entries()
    sized = []
    for entry in cache_entries():
        try:
            sized.append((entry.lstat().st_mtime, entry, entry_bytes(entry)))
        except OSError:       # removed meanwhile (a discard)
            continue
    used = sum(size for _, _, size in sized) + reserved_bytes()
    evictable = [(entry, size) for _, entry, size in sorted(sized, key=lambda t: t[0])
                 if os.path.realpath(entry) not in kept]
    if used - sum(size for _, size in evictable) + needed > quota:
        raise CacheFullError(f"the studio cache cannot take {_fmt(needed)} more: of its {_fmt(quota)} quota, "
                             f"{_fmt(used - sum(size for _, size in evictable))} is held by the uploads of queued "
                             "or running runs and by uploads in progress. Wait for those runs to finish (or cancel "
                             "them), or raise MOE_STUDIO_CACHE_QUOTA.")
    evicted = []
    for entry, size in evictable:
        if used + needed <= quota:
            break
        _remove(entry)
        used -= size
        evicted.append(entry)
    return evicted


def pin(owner: str, source: str) -> list[Path]:
    """Keep the cache entries `source` stands for (`staged_entries`) until `unpin(owner)`; return them. A source
    outside the cache pins nothing (and drops an older pin of `owner`). `owner` names the holder, e.g. "run-7"."""
    path = _pin_path(owner)
    entries = staged_entries(source)
    if not entries:                     # "demo", a hub id, a user's own folder: nothing of the cache to keep
        path.unlink(missing_ok=True)
        return []
    with cache_lock():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps([str(e) for e in entries]))
        os.replace(tmp, path)
    return entries


def unpin(owner: str) -> None:
    """Drop `owner`'s pin (nothing happens when it has none)."""
    _pin_path(owner).unlink(missing_ok=True)


def pins() -> dict[str, list[Path]]:
    """{owner: pinned entries} of every pin."""
    folder = studio_cache_dir() / PINS
    found = {}
    for f in folder.glob("*.json") if folder.is_dir() else ():
        try:
            found[f.stem] = [Path(p) for p in json.loads(f.read_text())]
        except (OSError, ValueError, TypeError):
            continue
    return found


def pinned_entries() -> set[str]:
    """Real paths of every pinned entry."""
    return {os.path.realpath(e) for entries in pins().values() for e in entries}


PIN_GRACE_S = 60.0


def sync_pins(wanted: dict[str, str], *, prefix: str, grace_s: float = PIN_GRACE_S) -> None:
    """Make the pins whose owner starts with `prefix` exactly `wanted` ({owner: source}): pins of owners that are
    gone (a run that ended, was cancelled while queued or was deleted) are dropped, missing ones are made. A pin
    younger than `grace_s` stays even when it is not wanted: it may belong to a run enqueued after `wanted` was
    read."""
    folder = studio_cache_dir() / PINS
    now = time.time()
    for owner in pins():
        if owner.startswith(prefix) and owner not in wanted:
            try:
                young = now - (folder / f"{owner}.json").stat().st_mtime < grace_s
            except OSError:
                continue
            if not young:
                unpin(owner)
    for owner, source in wanted.items():
        pin(owner, source)


def _pin_path(owner: str) -> Path:
    if not _OWNER.match(owner or ""):
        raise ValueError(f"pin owner {owner!r}: use letters, digits, '.', '_' and '-' (e.g. 'run-7')")
    return studio_cache_dir() / PINS / f"{owner}.json"


def staged_entries(source: str) -> list[Path]:
    """The cache entries a staged source stands for: an upload and its extraction, or an extraction alone.

    A path outside uploads/ and archives/ (a user's own folder, a hub id, "demo") stands for none.
    """
    root = Path(os.path.realpath(studio_cache_dir()))
    path = Path(os.path.realpath(str(source)))
    for part in CACHE_PARTS:
        base = root / part
        if path == base or not path.is_relative_to(base):
            continue
        entry = base / path.relative_to(base).parts[0]
        entries = [entry]
        digest = _DIGEST.match(entry.name)
        if part == "uploads" and digest and entry.name != digest.group(0):   # <sha256>.zip: also its extraction
            entries.append(root / "archives" / digest.group(0))
        return entries
    return []


def discard_staged(source: str) -> list[Path]:
    """Delete what a staged upload left in the cache (the upload, its extraction); return the paths deleted.

    For a model the studio refused: only entries under the cache's uploads/ and archives/ are ever deleted, so a
    user's own folder passed by mistake is left alone, and never a pinned one (a run reads it).
    """
    gone = []
    pinned = pinned_entries()
    for entry in staged_entries(source):
        if os.path.realpath(entry) in pinned:     # a queued or running run reads it
            continue
        if entry.exists() or entry.is_symlink():
            _remove(entry)
            gone.append(entry)
    return gone


def _fmt(n: int) -> str:
    """Bytes for people: 10240 -> '10.0 KiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
