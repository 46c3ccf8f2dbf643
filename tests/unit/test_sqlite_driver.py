"""kernel.sqlite_driver: statements on the loop's thread; waiting for a lock without blocking it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from kernel import sqlite_driver
from kernel.consumer import RejectedEvent
from kernel.database import (
    create_engine,
    listing_page,
    session_factory,
    utcnow,
    wal_checkpointer,
)
from kernel.migrations import Migration, create_tables, migrate, table_of
from tests.support.gateway_hub import eventually


def kept_record(event_id: str, value: bytes = b"") -> RejectedEvent:
    """A row of a kernel table with a blob column, for statements through the ORM."""
    return RejectedEvent(
        event_id=event_id,
        event_type="t",
        topic="t",
        headers={},
        value=value,
        reason="r",
        received_at=utcnow(),
    )


async def test_statements_run_on_the_event_loops_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}")

    def expose_thread(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("thread_ident", 0, threading.get_ident)

    event.listen(engine.sync_engine, "connect", expose_thread)
    try:
        async with engine.connect() as connection:
            ran_on = (await connection.execute(text("SELECT thread_ident()"))).scalar_one()
    finally:
        await engine.dispose()
    assert ran_on == threading.get_ident()


async def test_a_writer_finding_the_database_locked_waits_while_the_loop_runs_on(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'locked.db'}"
    holder, waiter = create_engine(url), create_engine(url)  # two pools: two connections
    steps: list[str] = []
    try:
        async with holder.begin() as connection:
            await connection.execute(text("CREATE TABLE letters (id INTEGER PRIMARY KEY)"))

        async def second_writer() -> None:
            async with waiter.begin() as connection:
                await connection.execute(text("INSERT INTO letters (id) VALUES (2)"))
            steps.append("second committed")

        async with holder.begin() as connection:
            await connection.execute(text("INSERT INTO letters (id) VALUES (1)"))
            started = time.monotonic()
            second = asyncio.create_task(second_writer())
            # The second writer is refused (SQLITE_BUSY) and waits; if it waited in SQLite's
            # busy handler on this thread, this sleep could not end before it gave up.
            await asyncio.sleep(0.2)
            steps.append("first commits")
        await second
        assert time.monotonic() - started < 2
        async with holder.connect() as connection:
            rows = (await connection.execute(text("SELECT id FROM letters ORDER BY id"))).all()
    finally:
        await holder.dispose()
        await waiter.dispose()
    assert steps == ["first commits", "second committed"]
    assert [row.id for row in rows] == [1, 2]


async def test_a_writer_gives_up_with_database_is_locked_after_its_busy_timeout(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "held.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE letters (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock and never lets go
    connection = await sqlite_driver.connector(path, busy_timeout=0.1)()
    started = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            await connection.execute("INSERT INTO letters (id) VALUES (1)")
    finally:
        await connection.close()
        holder.close()
    assert 0.1 <= time.monotonic() - started < 1


async def test_a_large_document_and_its_commit_are_written_in_a_worker_thread(
    tmp_path: Path,
) -> None:
    connection = await sqlite_driver.connector(str(tmp_path / "large.db"), busy_timeout=1.0)()
    ran_on: list[tuple[str, int]] = []
    await connection.set_trace_callback(
        lambda statement: ran_on.append((statement.split()[0], threading.get_ident()))
    )
    large = b"%" * (sqlite_driver.LARGE_PARAMETERS_BYTES + 1)
    try:
        await connection.execute("CREATE TABLE annexes (content BLOB)")
        await connection.commit()
        await connection.execute("INSERT INTO annexes (content) VALUES (?)", (b"small",))
        await connection.commit()
        await connection.execute("INSERT INTO annexes (content) VALUES (?)", (large,))
        await connection.commit()
        await connection.execute("INSERT INTO annexes (content) VALUES (?)", (b"small again",))
        await connection.commit()
    finally:
        await connection.close()
    loop = threading.get_ident()
    where = [(verb, "loop" if ident == loop else "worker") for verb, ident in ran_on]
    assert where == [
        ("CREATE", "loop"),
        ("BEGIN", "loop"),
        ("INSERT", "loop"),
        ("COMMIT", "loop"),
        ("BEGIN", "worker"),
        ("INSERT", "worker"),
        ("COMMIT", "worker"),
        ("BEGIN", "loop"),
        ("INSERT", "loop"),
        ("COMMIT", "loop"),
    ]


async def test_a_large_binary_column_written_through_the_orm_goes_to_the_worker_thread(
    tmp_path: Path,
) -> None:
    # SQLAlchemy binds a LargeBinary value as a memoryview, not bytes: the size rule must
    # count it, or an annex written by a service would never leave the loop's thread.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'orm.db'}")

    def expose_thread(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("thread_ident", 0, threading.get_ident)

    event.listen(engine.sync_engine, "connect", expose_thread)
    await migrate(engine, "test", [Migration(1, "kept", create_tables(table_of(RejectedEvent)))])
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE inserted_on (size INTEGER, ident INTEGER)"))
        await connection.execute(
            text(
                "CREATE TRIGGER note_thread AFTER INSERT ON rejected_events BEGIN "
                "INSERT INTO inserted_on VALUES (length(NEW.value), thread_ident()); END"
            )
        )
    sessions = session_factory(engine)
    large = sqlite_driver.LARGE_PARAMETERS_BYTES + 1
    try:
        for size in (10, large):
            async with sessions() as session, session.begin():
                session.add(kept_record(f"e-{size}", b"%" * size))
        async with engine.connect() as connection:
            ran_on = dict((await connection.execute(text("SELECT * FROM inserted_on"))).all())
    finally:
        await engine.dispose()
    assert ran_on[10] == threading.get_ident()
    assert ran_on[large] != threading.get_ident()


async def test_a_listings_page_and_count_run_in_a_worker_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'listing.db'}")
    ran_on: list[int] = []

    def expose_thread(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function(
            "note_thread", 0, lambda: ran_on.append(threading.get_ident()) or 1
        )

    event.listen(engine.sync_engine, "connect", expose_thread)
    await migrate(engine, "test", [Migration(1, "kept", create_tables(table_of(RejectedEvent)))])
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            session.add_all(kept_record(f"e-{n}") for n in range(3))
        async with sessions() as session:
            await session.scalar(select(func.note_thread()))
            on_the_loop = set(ran_on)
            ran_on.clear()
            rows, total = await listing_page(
                session,
                RejectedEvent,
                [func.note_thread() == 1],
                [RejectedEvent.id],
                limit=2,
                offset=0,
            )
    finally:
        await engine.dispose()
    assert (len(rows), total) == (2, 3)
    assert on_the_loop == {threading.get_ident()}
    assert ran_on and threading.get_ident() not in ran_on


async def test_the_log_is_copied_into_the_database_by_a_thread_not_by_the_commit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpointed.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    checkpointer = wal_checkpointer(engine)
    assert checkpointer is not None
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE annexes (content BLOB)"))
        for _ in range(2):
            async with engine.begin() as connection:
                await connection.execute(
                    text("INSERT INTO annexes VALUES (:content)"), {"content": b"x" * 1_000_000}
                )

        # 2 MB is far below SQLite's backstop: only the thread copies it into the file.
        async def copied() -> bool:  # the file grows while the checkpoint copies: wait for both
            return path.stat().st_size >= 2_000_000 and checkpointer.checkpoints >= 1

        assert await eventually(copied, timeout=5, pause=0.05)
    finally:
        await engine.dispose()
    assert not checkpointer._thread.is_alive()  # dispose stopped it


def wait_for_a_checkpoint(checkpointer: sqlite_driver.WalCheckpointer) -> None:
    """Until the checkpointer's thread has checkpointed once, for 5 s at most."""
    deadline = time.monotonic() + 5
    while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_small_writes_wait_for_the_interval_and_large_ones_for_the_next_tick(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "paced.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # only the thread checkpoints here
    writer.execute("CREATE TABLE mails (subject TEXT)")
    checkpointer = sqlite_driver.WalCheckpointer(path, interval=60, tick=0.01)
    checkpointer.start()
    try:
        writer.execute("INSERT INTO mails VALUES ('a small mail')")
        checkpointer.note_written(len("a small mail"))
        time.sleep(0.3)  # thirty ticks: the log changed, but a minute has not passed
        assert checkpointer.checkpoints == 0

        writer.execute("INSERT INTO mails VALUES ('an annex')")
        checkpointer.note_written(sqlite_driver.WalCheckpointer.LARGE_WRITES_BYTES)
        wait_for_a_checkpoint(checkpointer)
        assert checkpointer.checkpoints == 1
    finally:
        checkpointer.stop()
        writer.close()

    quick = sqlite_driver.WalCheckpointer(path, interval=0.05, tick=0.01)
    writer = sqlite3.connect(path, isolation_level=None)
    quick.start()
    try:
        writer.execute("INSERT INTO mails VALUES ('another small mail')")
        wait_for_a_checkpoint(quick)
        assert quick.checkpoints == 1  # the interval passed and the log had changed
    finally:
        quick.stop()
        writer.close()


def test_a_log_that_cannot_be_looked_at_for_a_while_does_not_end_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "unreadable.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE mails (subject TEXT)")
    refusals = [PermissionError(13, "Permission denied")] * 3
    real_stat = os.stat

    def stat(name: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(name).endswith("-wal") and refusals:
            raise refusals.pop()
        return real_stat(name, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver.os, "stat", stat)
    checkpointer = sqlite_driver.WalCheckpointer(path, interval=0.01, tick=0.01)
    checkpointer.start()
    try:
        writer.execute("INSERT INTO mails VALUES ('a mail')")
        wait_for_a_checkpoint(checkpointer)
        assert checkpointer.checkpoints == 1  # once the log could be looked at again
        assert "cannot look at the log" in caplog.text
    finally:
        checkpointer.stop()
        writer.close()


async def test_the_driver_tells_the_checkpointer_what_its_statements_write(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "told.db")
    checkpointer = sqlite_driver.WalCheckpointer(path)  # not started: only counts
    connection = await sqlite_driver.connector(path, 1.0, checkpointer)()
    try:
        await connection.execute("CREATE TABLE annexes (name TEXT, content BLOB)")
        await connection.execute("INSERT INTO annexes VALUES (?, ?)", ["a.pdf", b"x" * 5000])
        await connection.commit()
    finally:
        await connection.close()
    assert checkpointer._written == len("a.pdf") + 5000


async def test_a_memory_database_has_no_checkpointer() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    try:
        assert wal_checkpointer(engine) is None
    finally:
        await engine.dispose()


async def test_a_cancelled_statement_in_a_worker_thread_ends_before_its_caller_does(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cancelled.db'}")
    started, finished = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        time.sleep(1.0)
        finished.set()
        return 1

    event.listen(engine.sync_engine, "connect", lambda c, _r: c.create_function("slow", 0, slow))
    await migrate(engine, "test", [Migration(1, "kept", create_tables(table_of(RejectedEvent)))])
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        session.add(kept_record("e-1"))  # the listing's condition runs slow() on it

    async def listing() -> None:
        async with sessions() as session:
            await listing_page(
                session, RejectedEvent, [func.slow() == 1], [RejectedEvent.id], limit=2, offset=0
            )

    gaps: list[float] = []

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - before)

    ticker = asyncio.create_task(tick())
    try:
        task = asyncio.create_task(listing())
        await asyncio.to_thread(started.wait, 5)
        gaps.clear()
        task.cancel()  # a shutdown, say: the session's connection is closed next
        with pytest.raises(asyncio.CancelledError):
            await task
        # The statement had ended before its connection was closed, and the loop ran on
        # meanwhile: closing the connection under the thread held the loop until the
        # statement ended (or, with sqlite3 alone, crashed the process).
        assert finished.is_set()
        assert max(gaps) < 0.5
    finally:
        ticker.cancel()
        await engine.dispose()
