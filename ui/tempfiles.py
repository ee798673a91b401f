"""Gradio's temporary folder, which the studio owns: uploads as Gradio receives them, the copies of returned files
(download zips, runs CSV) it serves, and the CSV exports themselves.

    $GRADIO_TEMP_DIR (default $MOE_STUDIO_HOME/gradio-tmp)/
        <hash>/<name>          an upload, or a returned file copied into Gradio's cache
        runs-csv-<random>/     one CSV export (`export_dir`)

Rule: emptied when the studio starts and when it stops, files not modified for `MAX_AGE_S` removed every
`SWEEP_EVERY_S` (a file still being uploaded is modified all the time, so it stays), and a deleted run's zip copies
removed at once (`forget_download`). `python app.py` points GRADIO_TEMP_DIR at the data folder unless it is set;
a GRADIO_TEMP_DIR set by hand must be a folder for the studio alone.

    sweep(None)                      # everything (start, stop)
    sweep(3600)                      # files untouched for an hour
    forget_download(7)               # every served copy of run-7.zip
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from storage.db import studio_home

MAX_AGE_S = 3600.0
SWEEP_EVERY_S = 600.0
log = logging.getLogger("ui.tempfiles")


def gradio_temp_dir() -> Path:
    """`GRADIO_TEMP_DIR` (what Gradio itself reads), else `$MOE_STUDIO_HOME/gradio-tmp`."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or studio_home() / "gradio-tmp").absolute()


def use_private_gradio_temp_dir() -> Path:
    """Point Gradio at the studio's own temporary folder (unless GRADIO_TEMP_DIR is set); call before the Blocks
    are built, which read it."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(studio_home() / "gradio-tmp"))
    path = gradio_temp_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_dir(prefix: str) -> Path:
    """A new folder for one exported file, inside the swept folder (Gradio serves files from there)."""
    root = gradio_temp_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def sweep(older_than_s: float | None) -> int:
    """Delete the files in Gradio's temporary folder not modified for `older_than_s` seconds (None: all of them),
    then the folders left empty; return how many files went."""
    root = gradio_temp_dir()
    if not root.is_dir():
        return 0
    cutoff = None if older_than_s is None else time.time() - older_than_s
    gone = 0
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(top) / name
            try:
                if cutoff is None or path.lstat().st_mtime < cutoff:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                continue
        for name in dirs:
            try:
                (Path(top) / name).rmdir()      # only when empty
            except OSError:
                pass
    return gone


def forget_download(run_id: int) -> list[Path]:
    """Delete every copy of `run-<id>.zip` Gradio keeps to serve (a deleted run's zip must not stay downloadable)."""
    root = gradio_temp_dir()
    gone = []
    for path in root.glob(f"*/run-{int(run_id)}.zip") if root.is_dir() else ():
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()                 # the hash folder, when it held only this zip
        except OSError:
            pass
        gone.append(path)
    return gone


class Sweeper:
    """A daemon thread: `sweep(MAX_AGE_S)` every `SWEEP_EVERY_S` seconds until `stop()`."""

    def __init__(self, every_s: float = SWEEP_EVERY_S, max_age_s: float = MAX_AGE_S):
        self.every_s, self.max_age_s = every_s, max_age_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gradio-temp-sweeper", daemon=True)

    def start(self) -> "Sweeper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                sweep(self.max_age_s)
            except OSError:
                log.warning("sweeping Gradio's temporary folder failed", exc_info=True)
