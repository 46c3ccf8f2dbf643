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

    Tables referring to ``table`` keep their rows on SQLite (``migrate`` turns its
    foreign keys off meanwhile) and refer to the new table. PostgreSQL cannot drop a
    table others refer to: there the rebuild is refused, and such a change is made
    with ``ALTER TABLE``.
    """

    def apply(connection: Connection) -> None:
        existing = {column["name"] for column in inspect(connection).get_columns(table.name)}
        if set(added) <= existing:
            return
        if connection.dialect.name == "postgresql":
            _refuse_referred_table(connection, table.name)
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


def _refuse_referred_table(connection: Connection, name: str) -> None:
    """Refuse to rebuild table ``name`` (of the schema in use) that other tables refer to:
    PostgreSQL would refuse to drop it, or, told CASCADE, drop their foreign keys."""
    referring = connection.scalars(
        text(
            "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND confrelid = to_regclass(:table) AND conrelid <> confrelid"
        ),
        {"table": connection.dialect.identifier_preparer.quote(name)},
    ).all()
    if referring:
        raise ValueError(
            f"rebuild_table cannot rebuild {name} on PostgreSQL: {', '.join(sorted(referring))}"
            " refer to it; change its constraints with ALTER TABLE there"
        )


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
    """Bring ``component``'s tables up to date; return the version reached.

    On SQLite the migrations run with foreign keys off, as SQLite's procedure for
    changing a table says (https://www.sqlite.org/lang_altertable.html#otheralter):
    with them on, the ``DROP TABLE`` of a rebuilt parent (``rebuild_table``) first
    deleted its rows, and ``ON DELETE CASCADE`` every child row with them. So a
    migration deletes no parent row counting on the cascade: before the commit,
    ``PRAGMA foreign_key_check`` refuses migrations that leave a row referring to
    a missing one.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"{component} migrations must have increasing, unique versions")
    if engine.dialect.name == "sqlite":
        return await _migrate_sqlite(engine, component, migrations)
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Two processes starting together must not both migrate. Advisory locks are the
            # database's, not the schema's: without the schema, a staging hub sharing the
            # database (``HubSettings.database_schema_prefix``) held production's start
            # while it migrated.
            await connection.execute(
                text(
                    "SELECT pg_advisory_xact_lock(hashtext(concat("
                    "COALESCE(:schema, current_schema()), CAST(:lock AS text))))"
                ),
                {"schema": schema, "lock": f":hub-migrate:{component}"},
            )
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        return await connection.run_sync(_migrate_sync, component, migrations)


async def _migrate_sqlite(
    engine: AsyncEngine, component: str, migrations: Sequence[Migration]
) -> int:
    async with engine.connect() as connection:
        # The pragma does nothing inside a transaction: set before it begins.
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await connection.commit()
        try:
            # The sqlite3 module begins a transaction only before a row's change: a CREATE
            # TABLE ran and stayed on its own, and a migration that failed half-way (a
            # ``rebuild_table`` after its new table) left the file unable to migrate
            # again. All of it in one transaction, taking the write lock at once (another
            # process starting waits instead of migrating beside it).
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
            reached = await connection.run_sync(_migrate_sync, component, migrations)
            await connection.commit()
        except BaseException:
            # Not given back to the pool with foreign keys off (a failed or cancelled
            # transaction may not have ended, and the pragma waits for its end): closed,
            # which rolls it back; the pool opens a new connection, with the usual pragmas.
            await connection.invalidate()
            raise
        await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        await connection.commit()
        return reached


def _no_dangling_references(connection: Connection, component: str) -> None:
    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if dangling:
        tables = sorted({f"{row[0]} → {row[2]}" for row in dangling})
        raise RuntimeError(
            f"{component}'s migrations leave rows referring to missing rows"
            f" ({', '.join(tables)}): nothing was changed"
        )


def _migrate_sync(connection: Connection, component: str, migrations: Sequence[Migration]) -> int:
    _versions.create(connection, checkfirst=True)
    current = connection.execute(
        _versions.select().where(_versions.c.component == component)
    ).first()
    reached = current.version if current else 0
    applied = False
    for migration in migrations:
        if migration.version <= reached:
            continue
        migration.apply(connection)
        reached, applied = migration.version, True
    if applied and connection.dialect.name == "sqlite":
        # Only after a change: the check reads every row that refers to another.
        _no_dangling_references(connection, component)
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
