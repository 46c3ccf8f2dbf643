"""A test's own database, migrated like the service's: a SQLite file for unit tests, or
the ``database`` fixture's (SQLite or a PostgreSQL schema) for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.database import create_engine, session_factory
from kernel.migrations import Migration, migrate


@contextlib.asynccontextmanager
async def sqlite_sessions(
    path: Path, component: str, migrations: Sequence[Migration]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a new SQLite file at ``path`` with ``component``'s ``migrations`` applied."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine, component, migrations)
        yield session_factory(engine)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def migrated_sessions(
    database: tuple[str, str | None], component: str, migrations: Sequence[Migration]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the ``database`` fixture's ``(url, schema)`` with ``component``'s
    ``migrations`` applied."""
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        await migrate(engine, component, migrations, schema=schema)
        yield session_factory(engine)
    finally:
        await engine.dispose()
