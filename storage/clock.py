"""The database server's clock as a SQL expression, so that times compared across machines come from one clock.

A worker stamps `heartbeat_at` and the reaper computes its cutoff; when both used their own machine's clock, a
worker whose clock ran an hour fast was never reaped and one an hour slow was reaped at once. Every run timestamp
and every cutoff is therefore computed by the database in the statement itself:

    db_now()       the database's current UTC time
    db_now(-30)    30 s before it (a cutoff: `Run.heartbeat_at < db_now(-30)`)

PostgreSQL: `CURRENT_TIMESTAMP + make_interval(secs => s)`, a timestamptz (the start of the transaction, the same
for every statement in it). SQLite has no server: its "now" is the OS clock of the process running the statement,
read by the SQLite library rather than by Python. It is rendered as `YYYY-MM-DD HH:MM:SS.ffffff`, the exact text
SQLAlchemy stores for a naive UTC datetime there, so stored and computed times compare correctly as text.

    with session_scope() as s:
        s.execute(update(Run).where(Run.id == 7).values(heartbeat_at=db_now()))
        stale = s.scalars(select(Run.id).where(Run.heartbeat_at < db_now(-30))).all()
"""
from __future__ import annotations

from sqlalchemy import Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .models import UTCDateTime


class db_now(FunctionElement):  # noqa: N801 - reads as a SQL function, like func.now()
    """The database's current UTC time plus `offset_s` seconds (negative: in the past)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, offset_s: float = 0.0):
        super().__init__(literal(float(offset_s), Float()))


@compiles(db_now)
def _compile_default(element, compiler, **kw) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(CURRENT_TIMESTAMP + make_interval(secs => {offset}))"


@compiles(db_now, "sqlite")
def _compile_sqlite(element, compiler, **kw) -> str:
    # %f is "SS.SSS" (milliseconds); '000' pads it to the microseconds SQLAlchemy writes.
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {offset})) || '000')"
