"""Uploads from the Model tab, staged into the studio cache under its quota (compressor.studio_cache) before
`services.open_model` opens them: copied under their content hash (never under the uploaded name), pickles refused,
one archive or the files of one model folder.

    source = stage_upload(["/tmp/gradio/abc/model.zip"])      # ".../cache/uploads/<sha256>.zip", a model source
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from pathlib import Path

from compressor.archive import archive_kind
from compressor.studio_cache import parse_size, reserve, staged_entries, studio_cache_dir, touch
from storage import repo
from storage.models import RunStatus

log = logging.getLogger("ui.uploads")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FOLDER_FILES = re.compile(r"^(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|"
                           r"tokenizer(_config)?\.json|special_tokens_map\.json|tokenizer\.model|vocab\.(json|txt)|"
                           r"merges\.txt|added_tokens\.json|chat_template\.(jinja|json)|README\.md)$")
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UploadError(ValueError):
    """An upload the studio will not use; the message says what to upload instead."""


def max_upload_bytes() -> int:
    """`MOE_STUDIO_MAX_UPLOAD` (e.g. "20gb", "500mb", or bytes), default 20 GB."""
    return parse_size(os.environ.get("MOE_STUDIO_MAX_UPLOAD") or "20gb", name="MOE_STUDIO_MAX_UPLOAD")


def stage_upload(paths: list[str]) -> str:
    """Copy uploaded files into the studio cache (named by content hash, never by the uploaded name) and return a
    model source: one archive (.zip/.tar.gz/.tgz/.tar), or the files of one model folder (config.json +
    *.safetensors + tokenizer files)."""
    files = [Path(p) for p in paths or [] if p]
    total = _check_upload(files)
    uploads = studio_cache_dir() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    if len(files) == 1 and archive_kind(files[0]) is not None:
        return _stage_archive(files[0], uploads, total)
    _check_folder_files(files)
    return _stage_folder(files, uploads, total)


def _check_upload(files: list[Path]) -> int:
    """Refuse an empty upload, one over `max_upload_bytes`, and pickle checkpoints; returns the upload's bytes."""
    if not files:
        raise UploadError("nothing was uploaded; choose a .zip / .tar.gz of a model folder, or the folder's files")
    total, cap = sum(f.stat().st_size for f in files), max_upload_bytes()
    if total > cap:
        raise UploadError(f"the upload is {total / 2**30:.2f} GB, above the {cap / 2**30:.2f} GB limit "
                          "(MOE_STUDIO_MAX_UPLOAD); pass a local folder path instead")
    pickles = [f.name for f in files if f.name.lower().endswith(_PICKLES)]
    if pickles:
        raise UploadError(f"{', '.join(pickles[:3])}: pickle checkpoints can run code when loaded, so uploads of them "
                          "are refused. Convert the weights to safetensors (model.save_pretrained(dir)) and upload "
                          "the folder's files or a zip of it.")
    return total


def _stage_archive(file: Path, uploads: Path, total: int) -> str:
    """The archive as uploads/<sha256><suffix>: touched when already staged, else copied under a hidden partial
    name (room made for `total` bytes) and renamed into place."""
    kind = file.name.lower()
    suffix = next(s for s in (".tar.gz", ".tgz", ".tar", ".zip") if kind.endswith(s))
    return _stage_once(uploads / f"{_sha256(file)}{suffix}", total, lambda partial: shutil.copyfile(file, partial))


def _check_folder_files(files: list[Path]) -> None:
    """Loose files must be those of one model folder: no archive among them, only safe names of the files a model
    folder holds, config.json included."""
    if any(archive_kind(f) for f in files):
        raise UploadError("upload one archive on its own, or the loose files of one model folder, not both")
    names = [f.name for f in files]
    bad = [n for n in names if not _SAFE_NAME.match(n) or not _FOLDER_FILES.match(n)]
    if bad:
        raise UploadError(f"unexpected file(s) {', '.join(sorted(bad)[:4])}: upload a .zip / .tar.gz of the model "
                          "folder, or only its config.json, *.safetensors and tokenizer files")
    if "config.json" not in names:
        what = "a single safetensors file is not a model by itself" if len(files) == 1 else "config.json is missing"
        raise UploadError(f"{what}: upload config.json together with the *.safetensors and tokenizer files (select "
                          "them all at once), or a zip of the whole folder")


def _stage_folder(files: list[Path], uploads: Path, total: int) -> str:
    """The files as folder uploads/<sha256 of (name, sha256) pairs>: touched when already staged, else copied into a
    hidden partial folder (room made for `total` bytes) and renamed into place; when another session staged the same
    files meanwhile, theirs is used."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode() + b"\0" + _sha256(f).encode())

    def copy_into(partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for f in files:
            shutil.copyfile(f, partial / f.name)

    return _stage_once(uploads / digest.hexdigest(), total, copy_into)


def _stage_once(target: Path, total: int, write) -> str:
    """`target` touched when already staged; else `write(partial)` fills a hidden partial name beside it (room made
    for `total` bytes) and the partial is renamed into place. When another session staged the same content
    meanwhile (the rename of a folder fails), theirs is ours."""
    if target.exists():
        touch(target)
        return str(target)
    with reserve(keep=_entries_in_use()) as room:
        room.make_room(total)
        partial = target.parent / f".{target.name}.{os.getpid()}-{threading.get_ident()}.part"
        write(partial)
        try:
            os.replace(partial, target)
        except OSError:
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
            if not target.exists():
                raise
    return str(target)


def _entries_in_use() -> list[Path]:
    """Cache entries that queued and running runs read: never evicted to make room (none known when the database
    cannot be read: staging an upload does not wait for it)."""
    from sqlalchemy.exc import SQLAlchemyError
    try:
        runs = [r for st in (RunStatus.queued.value, RunStatus.running.value) for r in repo.list_runs(status=st)]
    except SQLAlchemyError:
        log.warning("cannot read the active runs; cache eviction may remove an upload that a queued run needs")
        return []
    return [e for r in runs for e in staged_entries(str((r.recipe or {}).get("model", "")))]


def _sha256(path: Path) -> str:
    from storage.artifacts import file_sha256
    return file_sha256(path)
