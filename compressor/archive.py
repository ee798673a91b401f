"""Safe extraction of uploaded model archives (.zip, .tar, .tar.gz / .tgz).

Rule: every member must land inside `dest`; no absolute paths, no `..`, no links of any kind (symbolic or hard, in
zips and tars alike: a model folder needs none, and refusing them keeps safety independent of the interpreter's tar
filter, which CVE-2025-4517's chains of long symlinks bypass), no device files, no sparse or encrypted members; at
most `max_files` files and `max_bytes` uncompressed bytes, and at most `max_ratio` uncompressed bytes per compressed
byte (model weights barely compress; a zip bomb does, by a thousand or more). Sizes are checked twice: the declared
sizes before anything is written, and the bytes actually written (a zip's declared sizes can lie; a tar's sizes are
its framing, and `tarfile`'s `filter="data"` re-checks every member as it extracts).

    ratio = declared uncompressed bytes / compressed bytes    (each zip member, and the whole archive)
    refused when ratio > max_ratio and the uncompressed side is over RATIO_FLOOR_BYTES

    root = extract_archive(Path("upload.zip"), Path("work/x"))   # -> work/x/my-model if that is the only folder
    (root / "config.json").exists()
    extract_archive(Path("bomb.zip"), Path("work/y"), max_bytes=2**30)   # raises ArchiveError
"""
from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

DEFAULT_MAX_BYTES = 64 * 2**30      # 64 GiB uncompressed: room for a mid-size MoE in bf16
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_RATIO = 200.0           # uncompressed / compressed bytes; safetensors weights compress ~1.1-3x
RATIO_FLOOR_BYTES = 1 << 20         # the ratio is checked only above 1 MiB uncompressed: a tiny config may squeeze well
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
_CHUNK = 1 << 20
_JUNK = ("__MACOSX", ".DS_Store")   # entries macOS adds to zips; skipped, never part of a model


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely; the message says what was wrong and what to do."""


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' or None, from the file name (`.zip`, `.tar`, `.tar.gz`, `.tgz`, any case)."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def extract_archive(path: Path, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO,
                    make_room: Callable[[int], object] | None = None) -> Path:
    """Extract `path` into `dest` (which must be absent or empty) and return the model folder.

    The model folder is `dest` itself, or its only top-level folder when the archive wraps everything in one
    folder (the usual `zip -r my-model.zip my-model/`). On any error nothing is left in `dest`. `make_room`, when
    given, is called with the declared uncompressed size once every member has passed the checks and before the
    first byte is written (the studio evicts old cache entries there, or raises to refuse).
    """
    path, dest = Path(path), Path(dest)
    kind = archive_kind(path)
    if kind is None:
        raise ArchiveError(f"{path.name}: not a supported archive; use one of {', '.join(ARCHIVE_SUFFIXES)}")
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive file")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"{dest}: extraction target must be absent or an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        caps = _Caps(max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio, make_room=make_room)
        (_extract_zip if kind == "zip" else _extract_tar)(path, dest, caps)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return archive_root(dest)


def archive_root(dest: Path) -> Path:
    """`dest`'s only top-level folder when it holds exactly one (ignoring macOS junk), else `dest`."""
    entries = [p for p in Path(dest).iterdir() if p.name not in _JUNK]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return Path(dest)


# ---------------------------------------------------------------------------------------------------------- checks
def _safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or None for junk; raises when it would leave the target."""
    clean = name.replace("\\", "/")
    rel = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise ArchiveError(f"{archive.name}: member {name!r} has an absolute path; refusing the archive. "
                           "Re-create it with relative paths (e.g. `zip -r model.zip my-model/`).")
    if ".." in rel.parts:
        raise ArchiveError(f"{archive.name}: member {name!r} points outside the archive folder ('..'); refusing "
                           "the archive. Re-create it from the model folder itself.")
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or parts[0] in _JUNK or parts[-1] in _JUNK or parts[-1].startswith("._"):
        return None
    return PurePosixPath(*parts)


def _inside(dest: Path, rel: PurePosixPath) -> Path:
    """Absolute target path for `rel`, after checking that it resolves inside `dest` (no links on the way)."""
    root = dest.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise ArchiveError(f"member {str(rel)!r} resolves outside the extraction folder; refusing the archive")
    return target


@dataclass(frozen=True)
class _Caps:
    max_bytes: int
    max_files: int
    max_ratio: float
    make_room: Callable[[int], object] | None


def _count(entries: int, declared: int, *, archive: Path, caps: _Caps) -> None:
    """Raise once the entries seen so far pass `max_files` or their declared sizes pass `max_bytes`."""
    if entries > caps.max_files:
        raise ArchiveError(f"{archive.name}: more than {caps.max_files} files and folders; refusing the archive. "
                           "Upload only the model folder (config.json, *.safetensors, tokenizer files).")
    if declared > caps.max_bytes:
        raise ArchiveError(f"{archive.name}: more than {caps.max_bytes} bytes uncompressed; refusing the archive. "
                           "Upload a smaller model, or raise the size cap if this model is expected to be that big.")


def _check_ratio(uncompressed: int, compressed: int, *, what: str, archive: Path, caps: _Caps) -> None:
    """Refuse `uncompressed / compressed > max_ratio` once `uncompressed` is over RATIO_FLOOR_BYTES."""
    if uncompressed <= RATIO_FLOOR_BYTES:
        return
    ratio = uncompressed / max(compressed, 1)
    if ratio > caps.max_ratio:
        raise ArchiveError(f"{archive.name}: {what} expands {ratio:.0f}x ({uncompressed} bytes from {compressed}), "
                           f"above the cap of {caps.max_ratio:.0f}x; refusing it as a likely archive bomb. Model "
                           "weights barely compress: archive the real model folder, or upload its files.")


def _before_writing(dest: Path, declared: int, archive: Path, caps: _Caps) -> None:
    """The checks on the whole plan: compression ratio of the archive, free disk space, then the caller's room."""
    _check_ratio(declared, archive.stat().st_size, what="the archive", archive=archive, caps=caps)
    free = shutil.disk_usage(dest).free
    if declared > free:
        raise ArchiveError(f"{archive.name}: needs {declared} bytes uncompressed but only {free} are free under "
                           f"{dest}; free some disk space or point the studio cache (MOE_STUDIO_CACHE) elsewhere.")
    if caps.make_room is not None:
        caps.make_room(declared)


# ------------------------------------------------------------------------------------------------------------- zip
def _extract_zip(path: Path, dest: Path, caps: _Caps) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path.name}: not a readable zip file ({e}); re-create the archive.") from e
    with zf:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        declared = 0
        for info in zf.infolist():
            rel = _safe_relpath(info.filename, path)
            if rel is None:
                continue
            _check_zip_member(info, path, caps)
            if not info.is_dir():
                declared += info.file_size
            plan.append((info, rel))
            _count(len(plan), declared, archive=path, caps=caps)
        _before_writing(dest, declared, path, caps)
        written = 0
        for info, rel in plan:
            target = _inside(dest, rel)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(dest, rel)   # re-check: the parent chain exists now
            written += _copy_member(zf, info, target, budget=caps.max_bytes - written, archive=path)


def _check_zip_member(info: zipfile.ZipInfo, archive: Path, caps: _Caps) -> None:
    """Refuse links, devices, encrypted members and members that inflate more than `max_ratio`."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; refusing the archive. "
                           "Zip the real files (without `zip -y`).")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):   # 0: no unix type recorded
        raise ArchiveError(f"{archive.name}: member {info.filename!r} is not a regular file or folder; "
                           "refusing the archive.")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{archive.name}: member {info.filename!r} is encrypted; upload an archive without "
                           "a password.")
    _check_ratio(info.file_size, info.compress_size, what=f"member {info.filename!r}", archive=archive, caps=caps)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, *, budget: int, archive: Path) -> int:
    """Stream one member to `target`, counting bytes; a member larger than declared or than the budget aborts."""
    n = 0
    try:
        with zf.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(_CHUNK):
                n += len(chunk)
                if n > info.file_size:
                    raise ArchiveError(f"{archive.name}: member {info.filename!r} holds more bytes than it declares "
                                       f"({info.file_size}); the archive is corrupt or hostile. Refusing it.")
                if n > budget:
                    raise ArchiveError(f"{archive.name}: uncompressed size passes the cap while extracting "
                                       f"{info.filename!r}; refusing the archive.")
                out.write(chunk)
    except FileExistsError as e:
        raise ArchiveError(f"{archive.name}: member {info.filename!r} appears twice; re-create the archive.") from e
    except NotImplementedError as e:
        raise ArchiveError(f"{archive.name}: {info.filename!r} uses an unsupported compression ({e}); re-create the "
                           "archive with standard (deflate) compression.") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:   # a bad CRC also catches sizes that lie
        raise ArchiveError(f"{archive.name}: {info.filename!r} is corrupt or its sizes lie ({e}); refusing the "
                           "archive. Re-create it.") from e
    return n


# ------------------------------------------------------------------------------------------------------------- tar
def _extract_tar(path: Path, dest: Path, caps: _Caps) -> None:
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{path.name}: not a readable tar archive ({e}); re-create the archive.") from e
    with tf:
        members: list[tarfile.TarInfo] = []
        declared = 0
        try:
            for member in tf:      # streams headers; stops early on a bomb instead of decompressing it all
                rel = _safe_relpath(member.name, path)
                if rel is None:
                    continue
                _check_tar_member(member, rel, dest, path)
                if member.isfile():
                    declared += member.size
                members.append(member)
                _count(len(members), declared, archive=path, caps=caps)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{path.name}: corrupt tar archive ({e}); re-create the archive.") from e
        _before_writing(dest, declared, path, caps)
        try:
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as e:
            raise ArchiveError(f"{path.name}: unsafe member refused by the tar data filter ({e}); refusing the "
                               "archive.") from e
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{path.name}: cannot extract ({e}); re-create the archive.") from e
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    if written > caps.max_bytes:
        raise ArchiveError(f"{path.name}: extracted {written} bytes, over the cap of {caps.max_bytes}; refusing it.")


def _check_tar_member(member: tarfile.TarInfo, rel: PurePosixPath, dest: Path, archive: Path) -> None:
    """Refuse links of every kind, devices, fifos and sparse files (a clear message before anything is written).

    Links are refused wherever they point: a model folder needs none, and a chain of links that each look safe can
    still resolve outside `dest` (CVE-2025-4517 passes the `data` filter of unpatched interpreters that way).
    """
    if member.issym() or member.islnk():
        kind = "a symbolic link" if member.issym() else "a hard link"
        raise ArchiveError(f"{archive.name}: member {member.name[:200]!r} is {kind}; refusing the archive (links are "
                           "never extracted). Archive the real files instead, e.g. `tar -h -czf model.tgz my-model/` "
                           "(-h follows links).")
    if member.ischr() or member.isblk() or member.isfifo():
        raise ArchiveError(f"{archive.name}: member {member.name!r} is a device or fifo; refusing the archive.")
    if member.issparse():
        raise ArchiveError(f"{archive.name}: member {member.name!r} is a sparse file; re-create the archive "
                           "without --sparse.")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive.name}: member {member.name!r} has an unsupported type; refusing the archive.")
    _inside(dest, rel)
