"""kernel.migrations: a rebuilt table keeps the rows that refer to it; a migration leaving
a dangling reference is refused; migrating one schema does not wait for another's."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, ForeignKey, Integer, MetaData, String, Table, text
from sqlalchemy.exc import IntegrityError

from kernel.database import create_engine
from kernel.migrations import Migration, create_tables, migrate, rebuild_table
from tests.support.hub_processes import drop_schemas

pytestmark = pytest.mark.integration

EARLIER = MetaData()
PARENT = Table("parent", EARLIER, Column("id", Integer, primary_key=True))
CHILD = Table(
    "child",
    EARLIER,
    Column("id", Integer, primary_key=True),
    Column("parent_id", ForeignKey("parent.id", ondelete="CASCADE")),
)
FIRST = Migration(1, "parent and child", create_tables(PARENT, CHILD))

TODAY = MetaData()
PARENT_TODAY = Table(
    "parent",
    TODAY,
    Column("id", Integer, primary_key=True),
    Column("extra", String(10), nullable=False),
)
Table(
    "child",
    TODAY,
    Column("id", Integer, primary_key=True),
    Column("parent_id", ForeignKey("parent.id", ondelete="CASCADE")),
)
REBUILD = Migration(2, "the parent gets a column", rebuild_table(PARENT_TODAY, {"extra": "''"}))


async def test_rebuilding_a_parent_table_keeps_its_childrens_rows(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        await migrate(engine, "family", [FIRST], schema=schema)
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO parent (id) VALUES (1)"))
            await connection.execute(text("INSERT INTO child (id, parent_id) VALUES (10, 1)"))

        if engine.dialect.name == "postgresql":
            # It could not drop the parent without dropping the children's foreign keys.
            with pytest.raises(ValueError, match="child refer to it"):
                await migrate(engine, "family", [FIRST, REBUILD], schema=schema)
        else:
            assert await migrate(engine, "family", [FIRST, REBUILD], schema=schema) == 2

        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT id, parent_id FROM child"))).all() == [
                (10, 1)
            ]
        if engine.dialect.name == "sqlite":
            async with engine.connect() as connection:
                rebuilt = await connection.execute(text("SELECT id, extra FROM parent"))
                assert rebuilt.all() == [(1, "")]
            # Foreign keys are on again, and the child's refers to the new table.
            with pytest.raises(IntegrityError):
                async with engine.begin() as connection:
                    await connection.execute(
                        text("INSERT INTO child (id, parent_id) VALUES (11, 99)")
                    )
            async with engine.begin() as connection:
                await connection.execute(text("DELETE FROM parent"))
                left = await connection.scalar(text("SELECT count(*) FROM child"))
            assert left == 0
    finally:
        await engine.dispose()


async def test_a_migration_leaving_rows_that_refer_to_missing_ones_is_refused_on_sqlite(
    tmp_path: Path,
) -> None:
    # PostgreSQL checks every foreign key as ever; SQLite's are off during migrations.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'family.db'}")

    def delete_the_parents(connection: Connection) -> None:
        # As if the cascade still ran: it does not, with foreign keys off.
        connection.execute(text("DELETE FROM parent"))

    try:
        await migrate(engine, "family", [FIRST])
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO parent (id) VALUES (1)"))
            await connection.execute(text("INSERT INTO child (id, parent_id) VALUES (10, 1)"))

        cleanup = Migration(2, "no more parents", delete_the_parents)
        with pytest.raises(RuntimeError, match="child → parent"):
            await migrate(engine, "family", [FIRST, cleanup])

        async with engine.connect() as connection:  # nothing was changed
            assert await connection.scalar(text("SELECT count(*) FROM parent")) == 1
            version = "SELECT version FROM hub_schema_version WHERE component = 'family'"
            assert await connection.scalar(text(version)) == 1
            assert await connection.scalar(text("PRAGMA foreign_keys")) == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_migrating_one_schema_does_not_wait_for_another_schemas_migration(
    postgres_url: str,
) -> None:
    # Two hubs sharing a database (a schema prefix each), migrating the same component.
    schemas = [f"t_{uuid.uuid4().hex[:10]}_{hub}" for hub in ("staging", "production")]
    engines = [create_engine(postgres_url, schema=schema) for schema in schemas]
    migrating = asyncio.Event()

    def slow(connection: Connection) -> None:
        migrating.set()
        connection.execute(text("SELECT pg_sleep(3)"))

    try:
        staging = asyncio.create_task(
            migrate(engines[0], "courrier", [Migration(1, "slow", slow)], schema=schemas[0])
        )
        await asyncio.wait_for(migrating.wait(), 10)
        quick = [Migration(1, "quick", lambda connection: None)]
        async with asyncio.timeout(2):
            assert await migrate(engines[1], "courrier", quick, schema=schemas[1]) == 1
        assert not staging.done()
        assert await staging == 1
    finally:
        for engine in engines:
            await engine.dispose()
        await drop_schemas(postgres_url, schemas)
