"""Versioned schema migrations, the same on SQLite and PostgreSQL.

Each process lists its migrations in order; ``migrate`` applies those not yet
recorded in ``hub_schema_version``, all in one transaction. A migration
is a plain function of a synchronous SQLAlchemy connection, so it can use the
table metadata (``create_tables``) or raw DDL. We chose this over Alembic:
one process owns a handful of tables, and a 60-line runner that every service
shares is simpler to read than an Alembic environment per service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateTable

from kernel.database import Base, utcnow


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def create_tables(*tables: Table) -> Callable[[Connection], None]:
    def apply(connection: Connection) -> None:
        for table in tables:
            table.create(connection, checkfirst=True)

    return apply


def add_columns(table: Table, *names: str) -> Callable[[Connection], None]:
    """Add ``table``'s columns ``names`` where they are missing, and create its indexes.

    A database created at an earlier migration lacks them; one created now got
    them from ``create_tables`` (which uses today's table) and is left as is.
    """

    def apply(connection: Connection) -> None:
        existing = {column["name"] for column in inspect(connection).get_columns(table.name)}
        preparer = connection.dialect.identifier_preparer
        for name in names:
            if name in existing:
                continue
            column = table.c[name]
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(
                text(
                    f"ALTER TABLE {preparer.quote(table.name)} "
                    f"ADD COLUMN {preparer.quote(name)} {kind}"
                )
            )
        for index in table.indexes:
            index.create(connection, checkfirst=True)

    return apply


def rebuild_table(table: Table, added: Mapping[str, str]) -> Callable[[Connection], None]:
    """Recreate ``table`` as it is defined today and copy its rows into it.

    The way to change a table's constraints on SQLite, which cannot drop one.
    ``added``: today's columns the old table lacks, each with the SQL value its
    copied rows take. A table that has them already (created at today's shape by
    an earlier migration's ``create_tables``) is left as is.
    """

    def apply(connection: Connection) -> None:
        existing = {column["name"] for column in inspect(connection).get_columns(table.name)}
        if set(added) <= existing:
            return
        quote = connection.dialect.identifier_preparer.quote
        rebuilt = table.to_metadata(MetaData(), name=f"{table.name}_rebuilt")
        # The new table's indexes are made once the old one (holding their names) is gone.
        connection.execute(CreateTable(rebuilt))
        kept = [column.name for column in table.columns if column.name in existing]
        names = ", ".join(quote(name) for name in [*kept, *added])
        values = ", ".join([*(quote(name) for name in kept), *added.values()])
        connection.execute(
            text(
                f"INSERT INTO {quote(rebuilt.name)} ({names}) "
                f"SELECT {values} FROM {quote(table.name)}"
            )
        )
        connection.execute(text(f"DROP TABLE {quote(table.name)}"))
        connection.execute(text(f"ALTER TABLE {quote(rebuilt.name)} RENAME TO {quote(table.name)}"))
        for index in table.indexes:
            index.create(connection)
        if connection.dialect.name == "postgresql":
            # The copied rows kept their ids; the new table's sequence starts after them.
            for column in table.primary_key.columns:
                if column.autoincrement is True:
                    connection.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                            f"COALESCE(MAX({quote(column.name)}), 0) + 1, false) "
                            f"FROM {quote(table.name)}"
                        ),
                        {"table": table.name, "column": column.name},
                    )

    return apply


def table_of(model: type[Base]) -> Table:
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


_version_metadata = MetaData()
_versions = Table(
    "hub_schema_version",
    _version_metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


async def migrate(
    engine: AsyncEngine, component: str, migrations: Sequence[Migration], schema: str | None = None
) -> int:
    """Bring ``component``'s tables up to date; return the version reached."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"{component} migrations must have increasing, unique versions")
    async with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            # The sqlite3 module begins a transaction only before a row's change: a CREATE
            # TABLE ran and stayed on its own, and a migration that failed half-way (a
            # ``rebuild_table`` after its new table) left the file unable to migrate
            # again. All of it in one transaction, taking the write lock at once (another
            # process starting waits instead of migrating beside it).
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        if engine.dialect.name == "postgresql":
            # Two processes starting together must not both migrate.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:c))"), {"c": component}
            )
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        return await connection.run_sync(_migrate_sync, component, migrations)


def _migrate_sync(connection: Connection, component: str, migrations: Sequence[Migration]) -> int:
    _versions.create(connection, checkfirst=True)
    current = connection.execute(
        _versions.select().where(_versions.c.component == component)
    ).first()
    reached = current.version if current else 0
    for migration in migrations:
        if migration.version <= reached:
            continue
        migration.apply(connection)
        reached = migration.version
    if current is None:
        connection.execute(
            _versions.insert().values(component=component, version=reached, applied_at=utcnow())
        )
    else:
        connection.execute(
            _versions.update()
            .where(_versions.c.component == component)
            .values(version=reached, applied_at=utcnow())
        )
    return reached
