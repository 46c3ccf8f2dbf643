"""Databases: one per process, SQLite embedded or PostgreSQL in production.

On PostgreSQL each process keeps its tables in its own schema (``courrier``,
``gateway``…), so one database can host the whole hub as well as one database
per process. On SQLite each process has its own file under ``var/``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    Table,
    Update,
    bindparam,
    event,
    func,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from kernel import sqlite_driver
from kernel.settings import normalise_database_url

M = TypeVar("M", bound="Base")

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: An auto-increment primary key that is BIGINT on PostgreSQL and INTEGER
#: (SQLite's rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every table. Which tables a process owns is said by its migrations."""


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    """An async engine for ``url``; ``schema`` is the PostgreSQL schema of this process."""
    url = normalise_database_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database or ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        checkpointer = sqlite_driver.WalCheckpointer(path) if path != ":memory:" else None
        # The statements run on the event loop's thread (kernel.sqlite_driver says why);
        # a writer waits up to 30 s for another connection's write lock.
        # Errors name their statements, not their values: the values are personal data.
        engine = create_async_engine(
            url,
            async_creator=sqlite_driver.connector(path, 30.0, checkpointer),
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "before_cursor_execute", _scans_off_the_loop)
        if checkpointer is not None:
            checkpointer.start()
            _checkpointers[engine.sync_engine] = checkpointer
            event.listen(engine.sync_engine, "engine_disposed", lambda _: checkpointer.stop())
        return engine
    url, connect_args = _asyncpg_arguments(url)
    if schema:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        url, pool_size=10, max_overflow=10, connect_args=connect_args, hide_parameters=True
    )


def _asyncpg_arguments(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without the libpq parameters asyncpg does not take, and what they say as
    asyncpg's ``connect`` arguments: ``connect_timeout`` its ``timeout``, the certificate
    files an SSL context. SQLAlchemy gives asyncpg the URL's parameters as they are, and
    those stopped the start with a TypeError."""
    parsed = make_url(url)
    # The others as given: several ``host`` (a failover list) are a tuple SQLAlchemy reads.
    query: dict[str, str | tuple[str, ...]] = dict(parsed.query)

    def taken(name: str) -> str:
        """One of ours, out of the URL; given twice, the last, as libpq reads it."""
        value = query.pop(name)
        return value if isinstance(value, str) else value[-1]

    arguments: dict[str, Any] = {}
    if "connect_timeout" in query:
        arguments["timeout"] = _connect_timeout(taken("connect_timeout"))
    files = {name: taken(name) for name in ("sslrootcert", "sslcert", "sslkey") if name in query}
    if files:
        arguments["ssl"] = _ssl_context(taken("ssl") if "ssl" in query else None, **files)
    if not arguments:
        return url, arguments
    return parsed.set(query=query).render_as_string(hide_password=False), arguments


def _connect_timeout(value: str) -> float | None:
    """libpq's ``connect_timeout`` in seconds; zero or less waits as long as it takes."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"DATABASE_URL: connect_timeout={value!r} is not seconds") from None
    return seconds if seconds > 0 else None


def _ssl_context(
    mode: str | None,
    sslrootcert: str | None = None,
    sslcert: str | None = None,
    sslkey: str | None = None,
) -> ssl.SSLContext:
    """The SSL context libpq makes of ``sslmode`` and its certificate files: ``require``
    encrypts, checking the server's certificate only against a ``sslrootcert`` given;
    ``verify-ca`` checks it against ``sslrootcert`` (else the system's authorities);
    ``verify-full`` checks the host name too. ``sslcert`` and ``sslkey``: the hub's
    own certificate, for a server that asks for one."""
    mode = mode.replace("_", "-") if mode else mode  # asyncpg takes verify_full too
    if mode not in ("require", "verify-ca", "verify-full"):
        # The weaker modes fall back to plain text, or never encrypt: with a context
        # asyncpg would always encrypt, which is not what they say.
        raise ValueError(
            "DATABASE_URL: sslrootcert, sslcert and sslkey need sslmode=require, verify-ca"
            " or verify-full" + (f", not {mode}" if mode else "")
        )
    if sslkey and not sslcert:
        raise ValueError("DATABASE_URL: sslkey needs sslcert, the certificate of that key")
    context = ssl.create_default_context(cafile=sslrootcert)
    if mode != "verify-full":
        context.check_hostname = False
    if mode == "require" and not sslrootcert:
        context.verify_mode = ssl.CERT_NONE
    if sslcert:
        context.load_cert_chain(sslcert, keyfile=sslkey)
    return context


_checkpointers: WeakKeyDictionary[Engine, sqlite_driver.WalCheckpointer] = WeakKeyDictionary()


def wal_checkpointer(engine: AsyncEngine) -> sqlite_driver.WalCheckpointer | None:
    """The thread that checkpoints ``engine``'s SQLite file; None for PostgreSQL or memory."""
    return _checkpointers.get(engine.sync_engine)


#: Execution option of a query that may read much of a table (``listing_page``).
MAY_SCAN = "hub_may_scan"


def _scans_off_the_loop(
    connection: Connection, _cursor: Any, _sql: str, _parameters: Any, context: Any, _many: bool
) -> None:
    driver = connection.connection.driver_connection
    if not isinstance(driver, sqlite_driver.Connection) or context is None:
        return
    if context.execution_options.get(MAY_SCAN):
        driver.next_may_scan()


async def listing_page(
    session: AsyncSession,
    model: type[M],
    conditions: Sequence[ColumnElement[bool]],
    order: Sequence[Any],
    *,
    limit: int,
    offset: int,
) -> tuple[list[M], int]:
    """One page of the ``model`` rows meeting ``conditions``, and how many meet them in all.

    The one way an API lists documents. A page far down the list and the count
    read much of the table (with 100,000 urban files, a count took tens of
    milliseconds under load); on SQLite both run in a worker thread instead of
    on the event loop's, which serves the process's other requests meanwhile.
    """
    page = select(model).where(*conditions).order_by(*order).limit(limit).offset(offset)
    count = select(func.count()).select_from(model).where(*conditions)
    rows = list((await session.scalars(page.execution_options(**{MAY_SCAN: True}))).all())
    total = await session.scalar(count.execution_options(**{MAY_SCAN: True}))
    return rows, int(total or 0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the outbox relay read while the API writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    # 16 KiB pages (the default is 4 KiB): a 1 MB annex or scan is a chain of 62 pages
    # instead of 245, which halves the CPU of writing it (measured: 3.6 → 1.8 ms).
    # Only a new database file takes it; an existing one keeps its page size.
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")
    # Durable against the process's crash, not a power loss, which may undo the last
    # commits while their events went out: the embedded database's trade-off for speed
    # (README), PostgreSQL's not.
    cursor.execute("PRAGMA synchronous=NORMAL")
    # The log is copied back by a thread of its own (sqlite_driver.WalCheckpointer);
    # SQLite's own checkpoint in a commit is only its backstop.
    cursor.execute(f"PRAGMA wal_autocheckpoint={sqlite_driver.WalCheckpointer.BACKSTOP_PAGES}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


_writer_turns: WeakKeyDictionary[Engine, asyncio.Lock] = WeakKeyDictionary()


@asynccontextmanager
async def writer_turn(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    """Wrap a write transaction: on SQLite the process's writers take turns; elsewhere nothing.

    SQLite lets one transaction write at a time. A writer that finds the lock
    taken is refused and retries after growing sleeps (``kernel.sqlite_driver``)
    instead of waking when the lock is freed: under load, writers spent more
    time asleep than writing, and a busy API's latency grew to seconds.
    Waiting for an asyncio lock here instead wakes the next writer the moment
    its turn comes. Take it before the session's first statement, so that a
    writer waiting for its turn holds no pooled connection (measured: taking
    it at the first write instead made the spine slower); ``write_transaction``
    does, and is the way to write. A write outside ``writer_turn`` is still
    correct; it only may sleep. Never nest two: the inner one would wait for
    the outer.
    """
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or not is_sqlite(bind):
        yield
        return
    turn = _writer_turns.setdefault(bind.sync_engine, asyncio.Lock())
    async with turn:
        yield


@asynccontextmanager
async def write_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A session in one write transaction, begun and committed (or rolled back) in the
    writer's turn (``writer_turn``), and closed after the turn is given up.

    The order matters. Closing an ``AsyncSession`` runs in a task of its own
    (SQLAlchemy shields it from cancellation), so it waits at least one turn of
    the event loop, and everything else ready on the loop runs first: closed
    inside the turn, a createItem with a 1 MB annex held the turn for 8-10 ms
    (measured), of which 3-4 ms were its own SQL and most of the rest other
    requests' work done meanwhile, and the turn was busy 90% of the time; after,
    5-7 ms and 63%. After the commit the session holds no lock, so the next
    writer may begin while it closes. A new session holds no pooled connection
    until its first statement, so the turn is still waited for without one.
    """
    # Left last on the way out: the session is closed after the turn is given up.
    async with sessions() as session, writer_turn(sessions), session.begin():
        yield session


async def next_in_sequence(
    session: AsyncSession, table: Table, key: dict[str, Any], column: str = "last_sequence"
) -> int:
    """Add one to ``column`` of the counter row at ``key`` (created at 0 if new); the new value.

    Runs in the caller's transaction: the UPDATE holds the row's write lock
    (PostgreSQL) or the database's (SQLite) until commit, so concurrent callers
    queue on it and the values they get are unique and, when every caller
    commits, gap-free. A rolled-back caller gives its value back.
    """
    increment = _increment_statement(table, tuple(key), column)
    # The key's values bind to parameters named apart from the columns: SQLAlchemy keeps
    # a column's own name for the SET clause of an UPDATE.
    parameters = {f"key_{name}": value for name, value in key.items()}
    value = (await session.execute(increment, parameters)).scalar_one_or_none()
    if value is not None:  # the counter exists: every call but a key's first
        return int(value)
    start = {**key, column: 0}
    # Another transaction may create the row between the two statements: do nothing then.
    if session.bind.dialect.name == "postgresql":
        await session.execute(postgresql.insert(table).values(start).on_conflict_do_nothing())
    else:
        await session.execute(sqlite.insert(table).values(start).on_conflict_do_nothing())
    return int((await session.execute(increment, parameters)).scalar_one())


#: The counters' UPDATE statements, built once per table, key and column: a statement
#: with its key as bound parameters keeps its cache key, which SQLAlchemy otherwise
#: computes again for each new statement object (with building it, a third of the
#: increment's CPU, measured in courrier's registration).
_INCREMENTS: dict[tuple[Table, tuple[str, ...], str], Update] = {}


def _increment_statement(table: Table, key_columns: tuple[str, ...], column: str) -> Update:
    found = _INCREMENTS.get((table, key_columns, column))
    if found is None:
        found = (
            update(table)
            .where(*(table.c[name] == bindparam(f"key_{name}") for name in key_columns))
            .values({column: table.c[column] + 1})
            .returning(table.c[column])
        )
        _INCREMENTS[(table, key_columns, column)] = found
    return found
