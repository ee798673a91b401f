"""Issue 28: a `kill -9` of the process that opened a model leaves neither the isolated child nor multiprocessing's
resource tracker running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import multiprocessing.resource_tracker as rt, os, sys, time
from compressor.isolate import run_isolated
child = run_isolated(os.getpid, memory_bytes=2 << 30)
print(child, rt._resource_tracker._pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """A live process (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_the_open_model_child_and_the_resource_tracker_die_with_a_killed_parent():
    app = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child, tracker = (int(x) for x in app.stdout.readline().split())
        assert _running(child) and _running(tracker)
        app.send_signal(signal.SIGKILL)
        app.wait(10)
        deadline = time.monotonic() + 10
        while (_running(child) or _running(tracker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [name for name, pid in (("child", child), ("resource tracker", tracker)) if _running(pid)]
        assert left == [], f"still running after the parent was killed: {left}"
    finally:
        app.kill()
        for pid in (locals().get("child"), locals().get("tracker")):
            if pid and _running(pid):
                os.kill(pid, signal.SIGKILL)
