"""Issue 28: nothing half-written or deleted stays downloadable, and Gradio's temporary folder is swept."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from gradio.utils import is_allowed_file

import app
from storage import artifacts, repo
from tests.ui.conftest import start_app, stop_app, studio_env
from ui import runs, services, tempfiles


@pytest.fixture
def gradio_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    (tmp_path / "gradio").mkdir()
    return tmp_path / "gradio"


def _file(path: Path, age_s: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_a_zip_being_written_is_never_in_a_folder_gradio_serves(studio_home, monkeypatch):
    ckpt = artifacts.run_dir(5) / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        served, _ = is_allowed_file(Path(src), blocked_paths=app.blocked_paths(), allowed_paths=app.allowed_paths(),
                                    created_paths=[])
        renames.append((Path(src), Path(dst), served))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    out = artifacts.build_download(5)
    [(src, dst, served)] = renames
    assert dst == out and not served, src          # the partial zip: not servable while it is written
    assert is_allowed_file(out, blocked_paths=app.blocked_paths(), allowed_paths=app.allowed_paths(),
                           created_paths=[])[0]     # the finished zip is
    assert not src.exists() and list(artifacts.partial_dir().iterdir()) == []


def test_deleting_a_run_deletes_the_copies_of_its_zip_gradio_serves(db_url, gradio_tmp):
    run_id = repo.create_run({"model": "demo"})
    mine = _file(gradio_tmp / "a1b2" / f"run-{run_id}.zip")
    other = _file(gradio_tmp / "c3d4" / f"run-{run_id}0.zip")
    services.delete(run_id)
    assert not mine.exists() and not mine.parent.exists() and other.exists()


def test_sweep_removes_old_files_and_empty_folders_and_everything_at_start_and_stop(gradio_tmp):
    old = _file(gradio_tmp / "h1" / "upload.zip", age_s=7200)
    fresh = _file(gradio_tmp / "h2" / "uploading.zip", age_s=10)
    assert tempfiles.sweep(3600) == 1
    assert not old.parent.exists() and fresh.exists()
    assert tempfiles.sweep(None) == 1 and list(gradio_tmp.iterdir()) == []


def test_the_runs_csv_is_written_inside_the_swept_folder(db_url, gradio_tmp):
    repo.create_run({"model": "demo"}, name="=1+1")
    update = runs.export_csv(*[None] * 6)
    path = Path(update["value"])
    assert path.is_relative_to(gradio_tmp) and "'=1+1" in path.read_text()
    tempfiles.sweep(None)
    assert not path.exists()


def test_the_studio_uses_its_own_gradio_temp_folder_unless_one_is_set(studio_home, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", "recorded, so that monkeypatch restores it")
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    assert tempfiles.use_private_gradio_temp_dir() == studio_home / "gradio-tmp"
    assert os.environ["GRADIO_TEMP_DIR"] == str(studio_home / "gradio-tmp")


def test_the_studio_empties_its_gradio_temp_folder_when_it_starts_and_when_it_stops(tmp_path):
    # Issue 28: 40 MB of uploads and CSV exports stayed in Gradio's temp folder after a stop.
    gtmp = tmp_path / "home" / "gradio-tmp"
    stale = _file(gtmp / "0123abcd" / "left-by-a-killed-studio.zip")
    proc, log = _start_studio(tmp_path)
    try:
        assert not stale.exists() and gtmp.is_dir()
        during = _file(gtmp / "4567ef01" / "runs.csv")
    finally:
        stop_app(proc)
    assert proc.returncode is not None
    assert not during.exists() and list(gtmp.iterdir()) == [], log.read_text()[-3000:]


def test_ctrl_c_stops_the_studio_without_a_traceback_or_a_redis_restart(tmp_path):
    """Issue 27, item 10: SIGINT printed a KeyboardInterrupt traceback, and the terminal's Ctrl-C also reached the
    embedded Redis, which the supervisor started again during the shutdown."""
    proc, log = _start_studio(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)               # what a terminal's Ctrl-C sends: the whole foreground group
    stop_app(proc, timeout=60)                       # waits; SIGKILLs the session if it did not stop
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "restarted" not in text and "starting it again" not in text, text[-3000:]
    assert "studio stopped" in text


def _start_studio(tmp_path):
    """`python app.py` with its home under `tmp_path` (`start_app`): (process, log path)."""
    log = tmp_path / "app.log"
    proc, _ = start_app(studio_env(tmp_path / "home"), log)
    return proc, log
