"""A unit test's own SQLite database, migrated like the service's."""

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
