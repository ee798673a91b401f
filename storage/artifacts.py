"""The artifact directory: one folder per run, named by the run id only, never by a user string.

    $MOE_STUDIO_ARTIFACTS (default $MOE_STUDIO_HOME/artifacts)/
        <run_id>/checkpoint/      HF directory written by compressor.pipeline.run_recipe
        <run_id>/recipe.yaml
        <run_id>/metrics.json
        <run_id>/run-<run_id>.zip  built on demand for download
        .partial/                  zips being written (never served: app.py blocks it from Gradio's file route)

A checkpoint is a directory, so its digest is that of a manifest, like `sha256sum` output sorted by path:

    sha256( "".join(f"{sha256(file)}  {relative_path}\\n" for file in sorted(files)) ),   bytes = sum(file sizes)

    size, digest = checkpoint_digest(run_dir(17) / "checkpoint")
    zip_path = build_download(17)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
import zipfile
from pathlib import Path

from .db import studio_home

DOWNLOAD_PARTS = ("checkpoint", "recipe.yaml", "metrics.json")
PARTIAL = ".partial"


def artifacts_root() -> Path:
    """`MOE_STUDIO_ARTIFACTS`, or `$MOE_STUDIO_HOME/artifacts`; absolute."""
    env = os.environ.get("MOE_STUDIO_ARTIFACTS")
    return Path(env).expanduser().resolve() if env else studio_home() / "artifacts"


def run_dir(run_id: int) -> Path:
    """`<root>/<run_id>`. Only a positive integer is accepted, so no caller can steer the path."""
    if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id <= 0:
        raise ValueError(f"run id must be a positive integer, got {run_id!r}")
    return artifacts_root() / str(run_id)


def relative(path: Path) -> str:
    """`path` relative to the artifact root (what the database stores, so machines may mount it elsewhere).
    Raises ValueError for a path outside the root."""
    return Path(path).resolve().relative_to(artifacts_root()).as_posix()


def resolve(rel: str) -> Path:
    """The absolute path of a stored relative path, refusing anything that escapes the root."""
    root = artifacts_root()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"artifact path {rel!r} points outside the artifact directory")
    return path


def remove_run_dir(run_id: int) -> bool:
    """Delete the run's folder and everything in it; True if there was one."""
    path = run_dir(run_id)
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file() and not p.is_symlink()),
                  key=lambda p: p.relative_to(path).as_posix())


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file's bytes (`hashlib.file_digest`)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def checkpoint_digest(path: Path) -> tuple[int, str]:
    """(total bytes, manifest sha256) of a checkpoint directory (or a single file: its own sha256)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_file():
        return path.stat().st_size, file_sha256(path)
    manifest, total = hashlib.sha256(), 0
    for f in _files(path):
        total += f.stat().st_size
        manifest.update(f"{file_sha256(f)}  {f.relative_to(path).as_posix()}\n".encode())
    return total, manifest.hexdigest()


def build_download(run_id: int) -> Path:
    """Zip the run's checkpoint, recipe and metrics as `run-<id>/...` into `<root>/<id>/run-<id>.zip`; rebuilt when
    any part is newer than the zip. Raises FileNotFoundError when the run has no checkpoint."""
    base = run_dir(run_id)
    if not (base / "checkpoint").exists():
        raise FileNotFoundError(f"run {run_id} has no checkpoint to download (not finished, failed or deleted)")
    out = base / f"run-{run_id}.zip"
    files = [(f, f"run-{run_id}/{f.relative_to(base).as_posix()}")
             for part in DOWNLOAD_PARTS if (base / part).exists() for f in _files(base / part)]
    if out.exists() and all(f.stat().st_mtime <= out.stat().st_mtime for f, _ in files):
        return out
    partial = partial_dir()
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f"run-{run_id}.{os.getpid()}-{threading.get_ident()}.zip"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for f, name in files:
                zf.write(f, name)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def partial_dir() -> Path:
    """Where zips are written before they are renamed into place: `<root>/.partial/`, on the artifacts folder's
    file system (so the rename is atomic) and blocked from Gradio's file route by app.py, so no half-written zip is
    ever served."""
    return artifacts_root() / PARTIAL
