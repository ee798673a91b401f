"""One studio for the UI tests: `python app.py` in a subprocess (embedded Redis + one real Celery worker, SQLite,
artifacts and caches in a temporary folder), driven over HTTP by gradio_client and by a headless browser.

The data folder is outside the working directory (the repository) and outside the studio's temp folder (TMPDIR and
GRADIO_TEMP_DIR point to `<home>/tmp`), as in the Docker layout (MOE_STUDIO_HOME=/data): Gradio serves the download
zips only because app.py names the artifacts folder in `allowed_paths`.

Recipes and calibration are tiny so that the whole folder runs in a few minutes on 2 cores.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ui.studio import MAX_UPLOAD, TINY, compress_args, open_demo, wait_run

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the studio did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Mark a failed test (`item.failed`) so fixtures can leave evidence (the browser test's screenshot)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.failed = True


class Studio:
    def __init__(self, url: str, home: Path, startup_s: float, log: Path):
        self.url, self.home, self.log = url, home, log
        self.timings: dict[str, float] = {"app start to HTTP 200 (s)": startup_s}

    def client(self):
        from gradio_client import Client
        return Client(self.url, verbose=False)


def studio_env(home: Path, **extra: str) -> dict:
    """The environment of a private studio: this one's, without studio settings, a broker or a database URL, with
    its home (and cache) under `home`, offline."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MOE_STUDIO_", "GRADIO_")) and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(MOE_STUDIO_HOME=str(home), MOE_STUDIO_CACHE=str(home / "cache"), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), **extra)
    return env


def start_app(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py --port P` in a session of its own, once its page answers: (process, url)."""
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, log, timeout=120)
    except BaseException:
        stop_app(proc)
        raise
    return proc, url


def stop_app(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send `sig` (SIGTERM: the studio stops Redis and the worker); SIGKILL the session after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """`python app.py --port P` with its own home; stopped with SIGTERM (which also stops Redis and the worker)."""
    home = tmp_path_factory.mktemp("studio")
    (home / "tmp").mkdir()
    env = studio_env(home, TMPDIR=str(home / "tmp"), GRADIO_TEMP_DIR=str(home / "tmp" / "gradio"),
                     MOE_STUDIO_MAX_UPLOAD=MAX_UPLOAD, MOE_STUDIO_PROGRESS_EVERY_S="0.5")
    log = home / "app.log"
    t0 = time.monotonic()
    proc, url = start_app(env, log)
    try:
        studio = Studio(url, home, time.monotonic() - t0, log)
        yield studio
    finally:
        stop_app(proc)
    lines = "".join(f"  {k}: {v:.3f}\n" for k, v in studio.timings.items())
    print(f"\nUI timings:\n{lines}")


@pytest.fixture(scope="session")
def finished_run(studio) -> int:
    """A tiny run of the demo model, enqueued through the Compress tab and finished by the worker."""
    c = studio.client()
    open_demo(c)
    status = c.predict("fixture run", *compress_args(**TINY), api_name="/enqueue")
    run_id = int(re.search(r"Run #(\d+) queued", status).group(1))
    row = wait_run(c, run_id)
    assert "succeeded" in row["status"], row
    return run_id


@pytest.fixture
def guarded(monkeypatch):
    """The studio's Blocks served in this process with --auth alice:s3cret (login back-off base 1 s): its URL."""
    import app
    from ui import login
    monkeypatch.setattr(login, "BASE_S", 1.0)
    demo = app.build_app()
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, auth=[("alice", "s3cret")], block=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def workbench(studio, finished_run):
    """Two more finished runs, one of the demo (keep 0.75) and one of a second model (tests/ui/workbench.py)."""
    from tests.ui.workbench import make_workbench
    return make_workbench(studio, finished_run)
