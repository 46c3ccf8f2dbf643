"""The database URLs operators paste reach PostgreSQL through the hub's driver."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from kernel.database import create_engine
from kernel.settings import normalise_database_url

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("pasted", "used"),
    [
        ("postgres://u:p@db/hub", "postgresql+asyncpg://u:p@db/hub"),
        ("postgresql+psycopg://u:p@db/hub", "postgresql+asyncpg://u:p@db/hub"),
        ("postgresql://u:p@db/hub?sslmode=require", "postgresql+asyncpg://u:p@db/hub?ssl=require"),
        ("sqlite:///var/hub.db", "sqlite+aiosqlite:///var/hub.db"),
    ],
)
def test_a_pasted_url_gets_the_hubs_driver_and_its_words(pasted: str, used: str) -> None:
    assert normalise_database_url(pasted) == used


@pytest.mark.postgres
async def test_libpqs_sslmode_reaches_postgresql(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    engine = create_engine(plain + ("&" if "?" in plain else "?") + "sslmode=disable")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()
