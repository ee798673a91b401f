"""Engine, sessions and automatic migrations.

    MOE_STUDIO_HOME  the studio data directory (default `./studio-data/`): SQLite file, artifacts, logs
    DATABASE_URL     SQLAlchemy URL; unset = `sqlite:///$MOE_STUDIO_HOME/studio.db`;
                     PostgreSQL: `postgresql+psycopg://user:pass@host:5432/db`
    MOE_STUDIO_SQLITE_BUSY_S  SQLite: how long a writer waits for another process's lock before the statement fails
                     with "database is locked" (default 30)

`init_db(url)` applies the Alembic migrations shipped in `storage/migrations/` (`alembic upgrade head`), under a
lock so that an app and several workers starting together migrate once, and makes that engine the process
default. Every repository function opens its own short transaction with `session_scope()`.

Upgrading a SQLite file: the studio first copies it aside as `studio.db.bak-<its revision>` (SQLite's online backup,
so rows still in the WAL are in the copy), and the migrations run with foreign keys off. A migration that rebuilds a
table (SQLite cannot alter a column in place, so 0004 copies `runs` and drops the old one) would otherwise cascade
the drop into every row that points at it: run logs, artifacts and parent links. After the migrations
`PRAGMA foreign_key_check` must find nothing, or the upgrade is rolled back with the offending rows named.

    engine = init_db("sqlite:///studio-data/studio.db")
    with session_scope() as s:
        s.add(Run(recipe={"model": "demo"}))
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 7_361_204_519  # arbitrary constant key for pg_advisory_xact_lock

_engines: dict[str, Engine] = {}
_default: Engine | None = None
_lock = threading.Lock()


def studio_home() -> Path:
    """The studio data directory, absolute (`MOE_STUDIO_HOME`, default `./studio-data`)."""
    return Path(os.environ.get("MOE_STUDIO_HOME") or "studio-data").expanduser().resolve()


def database_url() -> str:
    """`DATABASE_URL`, or the SQLite file `$MOE_STUDIO_HOME/studio.db`."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{studio_home() / 'studio.db'}"


def sqlite_busy_s() -> float:
    """`MOE_STUDIO_SQLITE_BUSY_S` (default 30): seconds a SQLite writer waits for a lock before failing."""
    raw = os.environ.get("MOE_STUDIO_SQLITE_BUSY_S") or "30"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"MOE_STUDIO_SQLITE_BUSY_S={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"MOE_STUDIO_SQLITE_BUSY_S={raw!r} must not be negative")
    return value


def _sqlite_pragmas(busy_ms: int):
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        # WAL: the app reads while a worker writes; busy_timeout: writers queue instead of failing.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
    return on_connect


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        busy_s = sqlite_busy_s()
        engine = create_engine(url, connect_args={"timeout": busy_s})
        event.listen(engine, "connect", _sqlite_pragmas(int(busy_s * 1000)))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """SQLite: an flock on `<db>.lock`; PostgreSQL takes an advisory lock inside the migration transaction."""
    db = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not db or db == ":memory:":
        yield
        return
    with open(f"{db}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sqlite_file(engine: Engine) -> Path | None:
    db = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    return Path(db).expanduser()


def backup_sqlite(path: Path, revision: str) -> Path:
    """Copy the SQLite database at `path` to `<path>.bak-<revision>` with SQLite's online backup (a consistent copy
    that includes what is still in the WAL); an existing copy of the same revision is kept, not overwritten."""
    import sqlite3

    target = path.with_name(f"{path.name}.bak-{revision}")
    if target.exists():
        return target
    partial = target.with_name(target.name + ".part")
    try:
        with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        with suppress(OSError):
            partial.unlink()
        raise RuntimeError(f"cannot copy {path.name} aside as {target.name} before upgrading it ({exc}); the "
                           "database was not changed. Free some space next to it (or copy it yourself) and start "
                           "the studio again.") from exc
    return target


def _check_foreign_keys(conn, backup: Path | None) -> None:
    bad = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if bad:
        rows = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in bad[:10])
        kept = f"; the database as it was before is in {backup.name}" if backup else ""
        raise RuntimeError(f"the migration left {len(bad)} rows pointing at rows that do not exist ({rows}){kept}. "
                           "Report this with the rows named here; do not start the studio on this file")


def migrate(engine: Engine, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on this engine, programmatically.

    SQLite: a file that has a revision older than the target is copied aside first (`backup_sqlite`), and the
    migrations run with `PRAGMA foreign_keys=OFF` (the pragma is a no-op inside a transaction, so it is set before
    the migration's transaction begins), then `PRAGMA foreign_key_check` must come back empty."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    sqlite = engine.url.get_backend_name() == "sqlite"
    with _migration_lock(engine), engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if engine.url.get_backend_name() == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                path = _sqlite_file(engine)
                current = MigrationContext.configure(conn).get_current_revision()
                target = ScriptDirectory.from_config(cfg).as_revision_number(revision)
                backup = None
                if path is not None and current is not None and current != target:
                    backup = backup_sqlite(path, current)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    _check_foreign_keys(conn, backup)
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def init_db(url: str | None = None) -> Engine:
    """Open (once per URL and process) the database at `url` (default `database_url()`), migrate it to head,
    and make it the default engine for `session_scope()`."""
    global _default
    url = url or database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            migrate(engine)
            _engines[url] = engine
        _default = engine
    return engine


def get_engine() -> Engine:
    """The default engine; opens `database_url()` on first use."""
    return _default if _default is not None else init_db()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error. Objects stay readable after."""
    with Session(get_engine(), expire_on_commit=False) as session, session.begin():
        yield session


def dispose_all() -> None:
    """Close every engine this process opened (tests; shutdown)."""
    global _default
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _default = None


def _after_fork_in_child() -> None:
    # A forked worker child must not reuse its parent's pooled connections (two processes, one socket),
    # nor inherit a lock that a parent thread happened to hold at the fork.
    global _lock
    _lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)
