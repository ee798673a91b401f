"""Safe extraction of uploaded model archives (.zip, .tar, .tar.gz / .tgz).

Rule: every member must land inside `dest`; no absolute paths, no `..`, no links leaving `dest`, no device files,
no sparse or encrypted members; at most `max_files` files and `max_bytes` uncompressed bytes. Sizes are checked
twice: the declared sizes before anything is written, and the bytes actually written (a zip's declared sizes can
lie; a tar's sizes are its framing, and `tarfile`'s `filter="data"` re-checks every member as it extracts).

    root = extract_archive(Path("upload.zip"), Path("/tmp/x"))   # -> /tmp/x/my-model if that is the only folder
    (root / "config.json").exists()
    extract_archive(Path("bomb.zip"), Path("/tmp/y"), max_bytes=2**30)   # raises ArchiveError
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

DEFAULT_MAX_BYTES = 64 * 2**30      # 64 GiB uncompressed: room for a mid-size MoE in bf16
DEFAULT_MAX_FILES = 10_000
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
                    max_files: int = DEFAULT_MAX_FILES) -> Path:
    """Extract `path` into `dest` (which must be absent or empty) and return the model folder.

    The model folder is `dest` itself, or its only top-level folder when the archive wraps everything in one
    folder (the usual `zip -r my-model.zip my-model/`). On any error nothing is left in `dest`.
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
        if kind == "zip":
            _extract_zip(path, dest, max_bytes=max_bytes, max_files=max_files)
        else:
            _extract_tar(path, dest, max_bytes=max_bytes, max_files=max_files)
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


def _count(entries: int, declared: int, *, archive: Path, max_bytes: int, max_files: int) -> None:
    """Raise once the entries seen so far pass `max_files` or their declared sizes pass `max_bytes`."""
    if entries > max_files:
        raise ArchiveError(f"{archive.name}: more than {max_files} files and folders; refusing the archive. Upload "
                           "only the model folder (config.json, *.safetensors, tokenizer files).")
    if declared > max_bytes:
        raise ArchiveError(f"{archive.name}: more than {max_bytes} bytes uncompressed; refusing the archive. "
                           "Upload a smaller model, or raise the size cap if this model is expected to be that big.")


def _check_free_space(dest: Path, needed: int, archive: Path) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise ArchiveError(f"{archive.name}: needs {needed} bytes uncompressed but only {free} are free under "
                           f"{dest}; free some disk space or point the studio cache (MOE_STUDIO_CACHE) elsewhere.")


# ------------------------------------------------------------------------------------------------------------- zip
def _extract_zip(path: Path, dest: Path, *, max_bytes: int, max_files: int) -> None:
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
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{path.name}: member {info.filename!r} is a symbolic link; refusing the archive. "
                                   "Zip the real files (without `zip -y`).")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):   # 0: no unix type recorded
                raise ArchiveError(f"{path.name}: member {info.filename!r} is not a regular file or folder; "
                                   "refusing the archive.")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{path.name}: member {info.filename!r} is encrypted; upload an archive without "
                                   "a password.")
            if not info.is_dir():
                declared += info.file_size
            plan.append((info, rel))
            _count(len(plan), declared, archive=path, max_bytes=max_bytes, max_files=max_files)
        _check_free_space(dest, declared, path)
        written = 0
        for info, rel in plan:
            target = _inside(dest, rel)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(dest, rel)   # re-check: the parent chain exists now
            written += _copy_member(zf, info, target, budget=max_bytes - written, archive=path)


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
def _extract_tar(path: Path, dest: Path, *, max_bytes: int, max_files: int) -> None:
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
                _count(len(members), declared, archive=path, max_bytes=max_bytes, max_files=max_files)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{path.name}: corrupt tar archive ({e}); re-create the archive.") from e
        _check_free_space(dest, declared, path)
        try:
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as e:
            raise ArchiveError(f"{path.name}: unsafe member refused by the tar data filter ({e}); refusing the "
                               "archive.") from e
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArchiveError(f"{path.name}: cannot extract ({e}); re-create the archive.") from e
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    if written > max_bytes:
        raise ArchiveError(f"{path.name}: extracted {written} bytes, over the cap of {max_bytes}; refusing it.")


def _check_tar_member(member: tarfile.TarInfo, rel: PurePosixPath, dest: Path, archive: Path) -> None:
    """Refuse devices, fifos, sparse files and links whose target leaves `dest` (clear message before extracting)."""
    if member.ischr() or member.isblk() or member.isfifo():
        raise ArchiveError(f"{archive.name}: member {member.name!r} is a device or fifo; refusing the archive.")
    if member.issparse():
        raise ArchiveError(f"{archive.name}: member {member.name!r} is a sparse file; re-create the archive "
                           "without --sparse.")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ArchiveError(f"{archive.name}: member {member.name!r} has an unsupported type; refusing the archive.")
    _inside(dest, rel)
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        if link.startswith("/"):
            raise ArchiveError(f"{archive.name}: link {member.name!r} -> {member.linkname!r} is absolute; refusing "
                               "the archive. Archive the real files instead (`tar -h` follows links).")
        base = rel.parent if member.issym() else PurePosixPath()
        target = os.path.normpath(str(base / link))
        if target == ".." or target.startswith("../") or os.path.isabs(target):
            raise ArchiveError(f"{archive.name}: link {member.name!r} -> {member.linkname!r} points outside the "
                               "archive folder; refusing the archive.")
