"""The studio cache of staged uploads and extracted archives: where it is, its quota, eviction and discarding.

    $MOE_STUDIO_CACHE (default ~/.cache/moe-studio)/
        uploads/<sha256>.zip | .tar.gz | .tgz | .tar     an uploaded archive, named by its content
        uploads/<sha256>/                                 the loose files of one uploaded model folder
        archives/<sha256>/                                an archive's extraction (compressor.sources.extract_cached)

Rule: uploads/ and archives/ together hold at most `MOE_STUDIO_CACHE_QUOTA` bytes (default 100gb). Before a new
entry of n bytes is added, the least recently used entries (oldest mtime; a hit touches its entry) are deleted
until used + n <= quota; an entry of n > quota is refused. Hidden names (a '.' in front: extractions and copies in
progress) are neither counted nor evicted. No torch here: the web process imports it before any model is opened.

    make_room(2 * 2**30, keep=[staged_entries(active_source)])   # evicts, or raises CacheFullError
    discard_staged(str(studio_cache_dir() / "uploads" / f"{sha}.zip"))   # the upload and its extraction
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

CACHE_PARTS = ("uploads", "archives")
DEFAULT_QUOTA = "100gb"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?")
_SCALE = {"b": 1, None: 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
_DIGEST = re.compile(r"^[0-9a-f]{64}")


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


def make_room(needed: int, *, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete least recently used entries until `needed` more bytes fit under the quota; return what was deleted.

    Entries in `keep` (e.g. those of queued runs) stay even when that leaves the cache over its quota.
    Raises CacheFullError when `needed` alone is more than the quota.
    """
    quota = cache_quota_bytes()
    if needed > quota:
        raise CacheFullError(f"this model needs {_fmt(needed)} in the studio cache, more than its whole quota of "
                             f"{_fmt(quota)}; raise MOE_STUDIO_CACHE_QUOTA, or put the model folder under a model "
                             "root and open it as a local folder.")
    kept = {os.path.realpath(k) for k in keep}
    sized = []
    for entry in cache_entries():
        try:
            sized.append((entry.lstat().st_mtime, entry, entry_bytes(entry)))
        except OSError:       # removed by a concurrent eviction
            continue
    used = sum(size for _, _, size in sized)
    evicted = []
    for _, entry, size in sorted(sized, key=lambda t: t[0]):
        if used + needed <= quota:
            break
        if os.path.realpath(entry) in kept:
            continue
        _remove(entry)
        used -= size
        evicted.append(entry)
    return evicted


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
    user's own folder passed by mistake is left alone.
    """
    gone = []
    for entry in staged_entries(source):
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
