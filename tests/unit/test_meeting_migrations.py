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
