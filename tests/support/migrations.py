"""Databases as an earlier version of a service left them, for testing its migrations."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, Table, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.database import Base


async def create_table_without(
    engine: AsyncEngine, schema: str | None, model: type[Base], missing: set[str]
) -> None:
    """Create ``model``'s table as it was before the columns ``missing`` were added."""
    old = MetaData()
    columns = [
        Column(column.name, column.type, primary_key=column.primary_key)
        for column in model.__table__.columns
        if column.name not in missing
    ]
    Table(model.__tablename__, old, *columns)
    async with engine.begin() as connection:
        if schema:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        await connection.run_sync(old.create_all)


async def columns_of(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: {column["name"] for column in inspect(sync).get_columns(table)}
        )
