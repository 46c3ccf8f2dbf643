"""SQLite for SQLAlchemy's asyncio engine, run on the event loop's own thread.

SQLAlchemy's ``aiosqlite`` dialect talks to a driver with aiosqlite's
interface. aiosqlite itself runs every call in a thread of its own and hands
the result back through the event loop: measured on the 2-vCPU machine of
docs/benchmarks.md, a round trip costs 0.28 ms (a ``SELECT 1`` costs 1 µs),
and SQLAlchemy makes three of them per statement (open a cursor, execute,
close). Under load each hand-off also waits for the GIL and for a turn of the
busy event loop, so a transaction of four small statements held SQLite's
write lock for 8-13 ms.

This module gives SQLAlchemy the same interface with the calls made at once,
on the loop's thread: the hub's statements are short (indexed lookups,
inserts of one document), so running them in place costs less than handing
them over. What must not happen on the loop's thread is waiting: SQLite's
busy handler sleeps while another connection holds the write lock, which
would block the whole process. So connections are opened with no busy
timeout, and a statement refused with ``SQLITE_BUSY`` is retried after an
``asyncio.sleep`` (1 ms, doubling to 50 ms, for up to ``busy_timeout``
seconds), which lets the holder of the lock, often a coroutine of the same
loop, finish. ``kernel.database.writer_turn`` makes that rare within a process.
The exceptions run in a worker thread: a statement carrying a large document
(``LARGE_PARAMETERS_BYTES``) and the commit of its transaction, and a query its
caller said may scan (a listing's page and count, ``next_may_scan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: What SQLite answers when another connection holds the lock it needs (its
#: extended codes keep it in their low byte). SQLITE_BUSY_SNAPSHOT (a read
#: snapshot went stale before the write) is not retried: only the whole
#: transaction could be, so it fails at once, as with SQLite's busy handler.
_SQLITE_BUSY, _SQLITE_BUSY_SNAPSHOT = 5, 517
_FIRST_WAIT, _LONGEST_WAIT = 0.001, 0.05


#: A statement whose parameters hold more bytes than this (a large scan or annex) runs in
#: a worker thread, and so does the commit of its transaction, which writes those pages to
#: the WAL; sqlite3 lets go of the GIL meanwhile. Below it the loop's thread writes them:
#: a megabyte's insert and commit take ~4 ms there (measured, with the WAL copied back by
#: ``WalCheckpointer``), while each hand-off to a thread inside the writer's turn kept the
#: turn until the thread got the GIL back (up to the interpreter's 5 ms switch interval),
#: so that the 1 MB createItem went 77 -> 90/s when its annex stayed on the loop (measured,
#: docs/benchmarks.md). At 2 MiB a statement holds the loop ~8 ms, about what two such
#: hand-offs cost.
LARGE_PARAMETERS_BYTES = 2 * 1024 * 1024


def _size_of(parameters: Sequence[Any]) -> int:
    """The bytes a statement's text and blob parameters carry. SQLAlchemy binds a
    ``LargeBinary`` column as a ``memoryview``, so that counts as much as ``bytes``."""
    size = 0
    for value in parameters:
        if isinstance(value, bytes | bytearray | str):
            size += len(value)
        elif isinstance(value, memoryview):
            size += value.nbytes
    return size


async def _in_thread(call: Callable[[], T]) -> T:
    """``call`` in a worker thread; a cancelled caller still waits for it to end.

    A statement cannot be stopped from the loop, and a cancelled caller's
    connection is closed next (SQLAlchemy invalidates it): closed under the
    thread still using it, sqlite3 crashed the process. The caller's
    cancellation is raised once the thread is done with the connection.
    """
    running = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(running)
        raise


async def _until_not_busy(
    call: Callable[[], T], busy_timeout: float, *, in_thread: bool = False
) -> T:
    deadline = time.monotonic() + busy_timeout
    wait = _FIRST_WAIT
    while True:
        try:
            return await _in_thread(call) if in_thread else call()
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0)  # absent when Python raised it itself
            busy = code & 0xFF == _SQLITE_BUSY and code != _SQLITE_BUSY_SNAPSHOT
            if not busy or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT)


class Cursor:
    """aiosqlite's cursor interface over a ``sqlite3.Cursor``, called in place (or, for
    the statements said above, in a worker thread)."""

    def __init__(self, cursor: sqlite3.Cursor, connection: Connection) -> None:
        self._cursor = cursor
        self._connection = connection
        #: The last statement ran in a worker thread; so do its fetches, which compute the
        #: rows after the first one.
        self._in_thread = False

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        arguments = () if parameters is None else parameters
        self._in_thread = self._connection.runs_in_thread(_size_of(arguments))
        await _until_not_busy(
            lambda: self._cursor.execute(sql, arguments),
            self._connection.busy_timeout,
            in_thread=self._in_thread,
        )
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        rows = list(parameters)  # a retry must see every row again
        self._in_thread = self._connection.runs_in_thread(sum(map(_size_of, rows)))
        await _until_not_busy(
            lambda: self._cursor.executemany(sql, rows),
            self._connection.busy_timeout,
            in_thread=self._in_thread,
        )
        return self

    async def _fetch(self, fetch: Callable[[], T]) -> T:
        return await _in_thread(fetch) if self._in_thread else fetch()

    async def fetchone(self) -> Any:
        return await self._fetch(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self._cursor.arraysize if size is None else size
        return await self._fetch(lambda: self._cursor.fetchmany(count))

    async def fetchall(self) -> list[Any]:
        return await self._fetch(self._cursor.fetchall)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _ImmediateQueue:
    """The dialect sets ``isolation_level`` by queueing a call for aiosqlite's thread: run it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def put_nowait(self, job: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = job
        try:
            result = function()
        except Exception as exc:
            if future is None:
                raise
            future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)


class Connection:
    """aiosqlite's connection interface over a ``sqlite3.Connection``, called in place (or,
    for the commit of a transaction that wrote a large document, in a worker thread)."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        busy_timeout: float,
        checkpointer: WalCheckpointer | None = None,
    ) -> None:
        self._connection: sqlite3.Connection | None = connection
        self.busy_timeout = busy_timeout
        self._checkpointer = checkpointer
        self._tx = _ImmediateQueue(connection)
        #: The current transaction wrote large parameters: its commit runs in a thread.
        self._wrote_large = False
        self._next_may_scan = False

    def next_may_scan(self) -> None:
        """The next statement may read much of a table (``kernel.database.listing_page``):
        run it in a worker thread, so that the loop serves other requests meanwhile."""
        self._next_may_scan = True

    def runs_in_thread(self, parameter_bytes: int) -> bool:
        """Whether the statement about to run, with ``parameter_bytes`` of parameters,
        goes to a worker thread: a large document, or a query that may scan."""
        large = parameter_bytes > LARGE_PARAMETERS_BYTES
        self._wrote_large = self._wrote_large or large
        if self._checkpointer is not None:
            self._checkpointer.note_written(parameter_bytes)
        may_scan, self._next_may_scan = self._next_may_scan, False
        return large or may_scan

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor(), self)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        cursor = await self.cursor()
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await _until_not_busy(self._conn.commit, self.busy_timeout, in_thread=self._wrote_large)
        self._wrote_large = False

    async def rollback(self) -> None:
        self._wrote_large = False
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def set_trace_callback(self, callback: Callable[[str], object] | None) -> None:
        self._conn.set_trace_callback(callback)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


#: SQL name of a ``lower()`` for all of Unicode: SQLite's own lowers ASCII letters only
#: (``lower('Église')`` is ``'Église'``), where PostgreSQL's follows the locale. Named
#: apart, so that the built-in keeps meaning what SQLite says it means.
UNICODE_LOWER = "unicode_lower"


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def connector(
    path: str, busy_timeout: float, checkpointer: WalCheckpointer | None = None
) -> Callable[[], Any]:
    """The ``async_creator`` of an engine on the SQLite file at ``path``; its connections
    tell ``checkpointer`` how much they write."""

    async def connect() -> Connection:
        # timeout=0: no sleeping in SQLite's busy handler on the loop's thread (see above).
        # check_same_thread=False: the pool may close a connection from the garbage collector.
        connection = sqlite3.connect(path, timeout=0, check_same_thread=False)
        connection.create_function(UNICODE_LOWER, 1, _unicode_lower, deterministic=True)
        return Connection(connection, busy_timeout, checkpointer)

    return connect


class WalCheckpointer:
    """Copies a database's write-ahead log back into the database, on a thread of its own.

    By default SQLite does this in the commit that takes the log past 1,000
    pages, on the committing connection: here the loop's thread, inside the
    writer's turn (``kernel.database.writer_turn``), so every other writer of
    the process waits for it. With 1 MB annexes that was a copy of 16 MB
    every 16 items, 100 ms each (the p99 of a createItem's transaction). This
    thread instead checkpoints with its own connection: a PASSIVE checkpoint
    waits for no reader or writer, and sqlite3 lets go of the GIL while it
    copies. The connections of the process keep SQLite's own checkpoint as a
    backstop, at ``BACKSTOP_PAGES``, should this thread fall behind.

    When: the thread looks at the log every ``tick`` seconds and checkpoints
    once ``LARGE_WRITES_BYTES`` were written since the last checkpoint (large
    documents: the copies stay small), or once ``interval`` seconds have passed
    and the log has changed. Each checkpoint syncs the log and the database to
    disk, and on the benchmark's ext4 disk the writes of the loop's thread
    stalled behind those syncs: checkpointing courrier's small mails every
    0.2 s, its event loop's lag was 52 ms at p99 (135 ms at most) at 100 mails/s,
    every 1 s 23-28 ms (54 ms at most), every 3 s 54 ms again (larger copies);
    with this policy 14 and 42 ms in two runs (docs/benchmarks.md).
    The writers report what they write (``note_written``, the bytes of their
    statements' parameters, which approximates the pages of the log).
    """

    BACKSTOP_PAGES = 8192
    #: Written since the last checkpoint, this many bytes make the next tick checkpoint.
    LARGE_WRITES_BYTES = 8 * 1024 * 1024

    def __init__(self, path: str, interval: float = 1.0, tick: float = 0.2) -> None:
        self._path = path
        self._log = f"{path}-wal"
        self._interval = interval
        self._tick = tick
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"wal-checkpoint {os.path.basename(path)}", daemon=True
        )
        #: Bytes written since the last checkpoint; added to by the writers' thread. A lost
        #: update between the two threads only moves one checkpoint by a tick.
        self._written = 0
        #: How many checkpoints ran (for tests and the curious).
        self.checkpoints = 0

    def note_written(self, size: int) -> None:
        """A statement with ``size`` bytes of parameters ran on this database."""
        self._written += size

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        checkpointed: tuple[int, int] | None = None
        last = time.monotonic()
        try:
            while not self._stopped.wait(self._tick):
                due = time.monotonic() - last >= self._interval
                if not due and self._written < self.LARGE_WRITES_BYTES:
                    continue
                try:
                    stat = os.stat(self._log)
                except FileNotFoundError:
                    if not os.path.exists(self._path):
                        return  # the database is gone (a test's directory): nothing to do
                    continue
                except OSError as exc:  # not readable for now: SQLite's backstop still runs
                    log.warning("cannot look at the log of %s: %s", self._path, exc)
                    continue
                # The log is rewritten from its start, not truncated, after a checkpoint:
                # its size alone may not change; its modification time does.
                state = (stat.st_mtime_ns, stat.st_size)
                if state == checkpointed:
                    continue
                try:
                    if connection is None:
                        connection = sqlite3.connect(self._path, timeout=1.0)
                    self._written = 0
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    checkpointed, last = state, time.monotonic()
                except sqlite3.Error as exc:  # e.g. the file went away: try again next time
                    log.debug("checkpoint of %s failed: %s", self._path, exc)
        finally:
            if connection is not None:
                connection.close()
