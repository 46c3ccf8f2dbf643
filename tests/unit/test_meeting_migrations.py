"""meeting's later migrations bring a database made before them up to date."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.database import create_engine
from kernel.migrations import migrate
from services.meeting.tables import MIGRATIONS


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'meeting.db'}")
    yield engine
    await engine.dispose()


async def test_migrations_6_and_7_add_the_generation_table_and_the_publishable_column(
    engine: AsyncEngine,
) -> None:
    await migrate(engine, "meeting", MIGRATIONS[:5])
    async with engine.begin() as connection:  # as a database made before the column existed
        await connection.execute(text("ALTER TABLE meeting_annexes DROP COLUMN publishable"))
        before = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert "meeting_publication_generations" not in before

    assert await migrate(engine, "meeting", MIGRATIONS) == len(MIGRATIONS)

    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        columns = await connection.run_sync(
            lambda sync: {c["name"] for c in inspect(sync).get_columns("meeting_annexes")}
        )
    assert "meeting_publication_generations" in tables
    assert "publishable" in columns


async def test_migration_11_places_each_published_meeting_at_its_first_publication(
    engine: AsyncEngine,
) -> None:
    await migrate(engine, "meeting", MIGRATIONS[:10])
    async with engine.begin() as connection:  # as a database made before the column existed
        await connection.execute(text("DROP INDEX ix_meeting_meetings_published"))
        await connection.execute(
            text("ALTER TABLE meeting_meetings DROP COLUMN first_published_at")
        )
        for meeting in ("m-published", "m-not-yet"):
            await connection.execute(
                text(
                    "INSERT INTO meeting_meetings (id, tenant, meeting_config, date, place, state,"
                    " attendees, created_at, updated_at) VALUES (:id, '92137', 'college',"
                    " '2026-03-01 18:00:00', 'ici', 'closed', '[]', '2026-02-01 10:00:00',"
                    " '2026-03-02 10:00:00')"
                ),
                {"id": meeting},
            )
        for item, published_at in (("i-1", "2026-03-05 09:00:00"), ("i-2", "2026-03-04 09:00:00")):
            await connection.execute(
                text(
                    "INSERT INTO meeting_items (id, tenant, meeting_config, state, title,"
                    " proposing_service, origin, creator, created_at, updated_at, version)"
                    " VALUES (:item, '92137', 'college', 'accepted', 't', 's', 'rest', 'c',"
                    " '2026-02-01 10:00:00', '2026-02-01 10:00:00', 1)"
                ),
                {"item": item},
            )
            await connection.execute(
                text(
                    "INSERT INTO meeting_published_decisions (item_id, tenant, meeting_id,"
                    " meeting_config, meeting_date, position, decision, decision_number, title,"
                    " resolution_text, files, published_at) VALUES (:item, '92137',"
                    " 'm-published', 'college', '2026-03-01 18:00:00', 0, 'accepted', :item,"
                    " 't', 'r', '[]', :published_at)"
                ),
                {"item": item, "published_at": published_at},
            )

    assert await migrate(engine, "meeting", MIGRATIONS) == len(MIGRATIONS)

    async with engine.connect() as connection:
        placed = dict(
            (await connection.execute(text("SELECT id, first_published_at FROM meeting_meetings")))
            .tuples()
            .all()
        )
    assert placed == {"m-published": "2026-03-04 09:00:00", "m-not-yet": None}  # the earliest
