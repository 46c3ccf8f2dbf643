"""Tables as an earlier version left them, brought up to date with their rows."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError

from gateway.deliveries import MIGRATIONS
from gateway.inbound.opinions import OpinionInbound
from gateway.inbound.records import InboundDocument
from kernel.consumer import REJECTED_EVENT_ID_INDEX, RejectedEvent
from kernel.database import create_engine, session_factory, utcnow
from kernel.migrations import Migration, migrate, table_of
from services.courrier.tables import MIGRATIONS as COURRIER_MIGRATIONS
from services.factures.domain import duplicate_key
from services.factures.tables import MIGRATIONS as FACTURES_MIGRATIONS
from services.factures.tables import Invoice as FacturesInvoice

pytestmark = pytest.mark.integration


async def test_inbound_documents_become_unique_by_channel_source_and_id_keeping_their_rows(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    try:
        # The table as migration 2 made it: unique by the source's id alone, no source.
        earlier = MetaData()
        columns = [
            Column(
                column.name,
                column.type,
                primary_key=column.primary_key,
                unique=column.name == "source_message_id",
            )
            for column in InboundDocument.__table__.columns
            if column.name != "source"
        ]
        before = Table(InboundDocument.__tablename__, earlier, *columns)
        async with engine.begin() as connection:
            if schema:
                await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.run_sync(earlier.create_all)
        assert await migrate(engine, "gateway", MIGRATIONS[:2], schema=schema) == 2
        now = utcnow()
        row = {
            "channel": "peppol",
            "source_message_id": "1001",
            "sender": "0208:0406798006",
            "receiver": "0208:0207123407",
            "document_type": "invoice",
            "size": 3,
            "sha256": "0" * 64,
            "document": b"<x>",
            "status": "published",
            "source_status": "acknowledged",
            "fetched_at": now,
            "updated_at": now,
        }
        async with engine.begin() as connection:
            await connection.execute(before.insert(), [row])

        assert await migrate(engine, "gateway", MIGRATIONS, schema=schema) == len(MIGRATIONS)

        async with engine.begin() as connection:
            # Another source, and another channel, may now use the same id; new rows
            # are numbered after the ones kept.
            await connection.execute(
                InboundDocument.__table__.insert(),
                [
                    {**row, "source": "https://ap.example"},
                    {**row, "channel": "notice", "source": ""},
                ],
            )
            kept = (
                await connection.execute(
                    select(
                        InboundDocument.id, InboundDocument.channel, InboundDocument.source
                    ).order_by(InboundDocument.id)
                )
            ).all()
        assert [tuple(r) for r in kept] == [
            (1, "peppol", ""),
            (2, "peppol", "https://ap.example"),
            (3, "notice", ""),
        ]
        # Run again (a restart), the migrations leave the table as it is.
        assert await migrate(engine, "gateway", MIGRATIONS, schema=schema) == len(MIGRATIONS)
    finally:
        await engine.dispose()


class ListingOnce:
    """A tenant's opinions account listing one answer (its acknowledgement lost before)."""

    def __init__(self, tenant: str, answer: dict[str, str]) -> None:
        self.tenant = tenant
        self.answer = answer
        self.acknowledged: list[str] = []

    async def list_new(self) -> list[dict[str, str]]:
        return [] if self.acknowledged else [self.answer]

    async def acknowledge(self, answer_id: str) -> None:
        self.acknowledged.append(answer_id)


async def test_opinion_answers_recorded_across_tenants_become_their_tenants_own(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    inbound = table_of(InboundDocument)
    now = utcnow()
    row = {
        "source": "",
        "sender": "SRI",
        "document_type": "opinion",
        "size": 2,
        "sha256": "0" * 64,
        "document": b"{}",
        "status": "published",
        "source_status": "pending",
        "fetched_at": now,
        "updated_at": now,
    }
    try:
        assert await migrate(engine, "gateway", MIGRATIONS[:5], schema=schema) == 5
        async with engine.begin() as connection:
            # As the opinions adapter recorded them: no source, unique by the answer id.
            await connection.execute(
                inbound.insert(),
                [
                    {
                        **row,
                        "channel": channel,
                        "source_message_id": id_,
                        "tenant": tenant,
                        "receiver": tenant,
                    }
                    for channel, id_, tenant in (
                        ("opinion", "AV-1", "62063"),
                        ("opinion", "AV-2", "92137"),
                        ("notice", "AV-1", "92137"),
                    )
                ],
            )

        assert await migrate(engine, "gateway", MIGRATIONS, schema=schema) == len(MIGRATIONS)

        async with engine.connect() as connection:
            kept = (
                await connection.execute(
                    select(
                        InboundDocument.channel,
                        InboundDocument.source,
                        InboundDocument.source_message_id,
                    ).order_by(InboundDocument.id)
                )
            ).all()
        assert [tuple(r) for r in kept] == [
            ("opinion", "62063", "AV-1"),
            ("opinion", "92137", "AV-2"),
            ("notice", "", "AV-1"),  # NOTICe's ids are its own, one source for all
        ]
        # The adapter finds its tenant's answer recorded (it only acknowledges it), and
        # takes another tenant's answer of that id as a new one.
        answer = {
            "answerId": "AV-1",
            "requestId": "OP-9",
            "fileId": "F-9",
            "body": "SRI",
            "verdict": "favourable",
            "text": "Rien à signaler.",
            "givenOn": "2026-03-10",
        }
        liege, sambreville = ListingOnce("62063", answer), ListingOnce("92137", answer)
        adapter = OpinionInbound(sessions=session_factory(engine), accounts=[liege, sambreville])
        assert await adapter.poll_once() == 2
        async with engine.connect() as connection:
            opinions = (
                await connection.execute(
                    select(
                        InboundDocument.tenant,
                        InboundDocument.source_message_id,
                        InboundDocument.event_id.is_not(None),
                        InboundDocument.source_status,
                    )
                    .where(InboundDocument.channel == "opinion")
                    .order_by(InboundDocument.id)
                )
            ).all()
        assert [tuple(r) for r in opinions] == [
            ("62063", "AV-1", False, "acknowledged"),  # not published a second time
            ("92137", "AV-2", False, "pending"),
            ("92137", "AV-1", True, "acknowledged"),
        ]
        assert await migrate(engine, "gateway", MIGRATIONS, schema=schema) == len(MIGRATIONS)
    finally:
        await engine.dispose()


async def test_credit_notes_accepted_before_their_keys_were_set_apart_still_find_duplicates(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    invoices = table_of(FacturesInvoice)
    now = utcnow()

    def row(number: str, kind: str) -> dict[str, object]:
        key = f"vat:BE0403170701|{number}|2026-03-02"  # as factures keyed both before
        return {
            "id": f"{kind}-{number}",
            "tenant": "92137",
            "channel": "upload",
            "state": "booked",
            "kind": kind,
            "accepted_key": key,
            "preceding_invoices": [],
            "findings": [],
            "rejection_reasons": [],
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }

    try:
        assert await migrate(engine, "factures", FACTURES_MIGRATIONS[:3], schema=schema) == 3
        async with engine.begin() as connection:
            await connection.execute(
                insert(invoices), [row("F-1", "Invoice"), row("NC-1", "CreditNote")]
            )
        assert (
            await migrate(engine, "factures", FACTURES_MIGRATIONS, schema=schema)
            == FACTURES_MIGRATIONS[-1].version
        )
        async with engine.connect() as connection:
            keys = dict(
                (await connection.execute(select(invoices.c.id, invoices.c.accepted_key))).all()
            )
    finally:
        await engine.dispose()
    assert keys == {
        "Invoice-F-1": duplicate_key("vat:BE0403170701", "F-1"),
        "CreditNote-NC-1": duplicate_key("vat:BE0403170701", "NC-1"),
    }


async def test_a_migration_that_fails_half_way_leaves_nothing_and_can_run_again(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    things = Table("thing", MetaData(), Column("id", Integer, primary_key=True))

    def create_then_fail(connection: Connection) -> None:
        things.create(connection)
        raise RuntimeError("the process stopped half-way")

    try:
        first = [Migration(1, "thing", create_then_fail)]
        with pytest.raises(RuntimeError):
            await migrate(engine, "half-way", first, schema=schema)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert "thing" not in tables  # the table went with the failed migration

        again = [Migration(1, "thing", lambda connection: things.create(connection))]
        assert await migrate(engine, "half-way", again, schema=schema) == 1
    finally:
        await engine.dispose()


async def test_kept_rejected_events_become_one_per_event_id(
    database: tuple[str, str | None],
) -> None:
    url, schema = database
    engine = create_engine(url, schema=schema)
    rejected = table_of(RejectedEvent)
    # courrier's rejected events as migration 5 left them: the event id indexed, not unique.
    before = [m for m in COURRIER_MIGRATIONS if m.version <= 5]

    def as_before(connection: Connection) -> None:
        connection.execute(text(f"DROP INDEX {REJECTED_EVENT_ID_INDEX}"))
        connection.execute(
            text("CREATE INDEX ix_rejected_events_event_id ON rejected_events (event_id)")
        )

    def row(event_id: str | None, reason: str) -> dict[str, object]:
        return {
            "event_id": event_id,
            "event_type": "courrier.x.v1",
            "topic": "gateway.receipts",
            "headers": {},
            "value": b"{",
            "reason": reason,
            "received_at": utcnow(),
        }

    try:
        assert await migrate(engine, "courrier", before, schema=schema) == 5
        async with engine.begin() as connection:
            await connection.run_sync(as_before)
            await connection.execute(
                insert(rejected),
                [row("e-1", "first"), row("e-1", "again"), row(None, "a"), row(None, "b")],
            )
        assert (
            await migrate(engine, "courrier", COURRIER_MIGRATIONS, schema=schema)
            == COURRIER_MIGRATIONS[-1].version
        )
        async with engine.connect() as connection:
            kept = (await connection.execute(select(rejected.c.event_id, rejected.c.reason))).all()
        assert sorted(kept, key=str) == sorted(
            [("e-1", "first"), (None, "a"), (None, "b")], key=str
        )
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(insert(rejected), [row("e-1", "a third time")])
    finally:
        await engine.dispose()
