"""Outcomes the oversight service lists that zeep cannot read whole (no cursor, no date):
each is kept refused, and the tenant's later outcomes are still read and published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from lxml import etree
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import from_record
from gateway.connectors.base import ConnectorContext, connector_types
from gateway.connectors.oversight_soap import OversightSoapConnector
from gateway.deliveries import MIGRATIONS
from gateway.inbound.oversight import OversightInbound
from gateway.inbound.records import InboundDocument
from kernel.outbox import OutboxMessage
from kernel.pki import ensure_tenant_signing_identity
from kernel.settings import HubSettings
from sandbox.oversight import DecidedOutcome, outcomes_response
from tests.support.databases import sqlite_sessions
from tests.unit.test_oversight_connector import ENDPOINT, TENANT, FakeOversight, _httpx, text


def decided(cursor: int) -> DecidedOutcome:
    return DecidedOutcome(
        cursor=cursor,
        tenant=TENANT,
        acknowledgement_number=f"TUT-2026-{cursor:06d}",
        item_id=f"item-{cursor}",
        decision_number=f"CC/2026/{cursor:04d}",
        outcome="approved",
        decided_on=date(2026, 4, 1),
        reason=None,
    )


def page(since: int, *changes: tuple[bytes, bytes]) -> httpx.Response:
    """Outcomes 8, 9 and 10 after cursor 7, with ``changes`` made to the answer's XML."""
    outcomes = [decided(cursor) for cursor in (8, 9, 10)] if since == 7 else []
    answer = _httpx(outcomes_response(outcomes, since))
    content = answer.content
    for old, new in changes if since == 7 else ():
        assert old in content
        content = content.replace(old, new)
    return httpx.Response(answer.status_code, content=content, headers=answer.headers)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


@pytest.fixture
def oversight(tmp_path: Path) -> FakeOversight:
    _, cert_file = ensure_tenant_signing_identity(HubSettings(var_dir=tmp_path).keys_dir, TENANT)
    return FakeOversight(x509.load_pem_x509_certificate(cert_file.read_bytes()))


@pytest.fixture
async def connector(
    tmp_path: Path, oversight: FakeOversight
) -> AsyncIterator[OversightSoapConnector]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(oversight)) as http:
        built = connector_types()["oversight_soap"](
            ConnectorContext(TENANT, HubSettings(var_dir=tmp_path), http),
            {"type": "oversight_soap", "endpoint": ENDPOINT},
        )
        assert isinstance(built, OversightSoapConnector)
        yield built
        await built.aclose()


def since_of(body: etree._Element) -> int:
    return int(text(body, "Since") or 0)


async def test_an_entry_without_a_readable_cursor_is_given_the_one_before_it_and_marked(
    connector: OversightSoapConnector, oversight: FakeOversight
) -> None:
    # zeep reads a Cursor that is no integer as None: int(None) failed the whole page.
    oversight.answer = lambda body: page(since_of(body), (b">9</t:Cursor>", b">x</t:Cursor>"))

    outcomes, next_cursor = await connector.list_outcomes(7)

    assert [(o.cursor, o.acknowledgement_number) for o in outcomes] == [
        (8, "TUT-2026-000008"),
        (8, "TUT-2026-000009"),
        (10, "TUT-2026-000010"),
    ]
    assert [o.problem for o in outcomes] == [None, "the service gave it no readable Cursor", None]
    assert next_cursor == 10


async def test_an_unreadable_next_cursor_is_the_pages_last_readable_one(
    connector: OversightSoapConnector, oversight: FakeOversight
) -> None:
    unreadable = (b">10</t:NextCursor>", b">ten</t:NextCursor>")
    oversight.answer = lambda body: page(since_of(body), unreadable)

    outcomes, next_cursor = await connector.list_outcomes(7)

    assert (len(outcomes), next_cursor) == (3, 10)


async def test_outcomes_zeep_cannot_read_whole_are_kept_refused_and_the_later_ones_published(
    sessions: async_sessionmaker[AsyncSession],
    connector: OversightSoapConnector,
    oversight: FakeOversight,
) -> None:
    unreadable = [
        (b">8</t:Cursor>", b">eight</t:Cursor>"),
        (
            b"<t:DecidedOn>2026-04-01</t:DecidedOn></t:Outcome><t:Outcome><t:Cursor>10",
            b"<t:DecidedOn>2026-13-45</t:DecidedOn></t:Outcome><t:Outcome><t:Cursor>10",
        ),  # DecidedOn of outcome 9, which no date is
    ]
    oversight.answer = lambda body: page(since_of(body), *unreadable)
    inbound = OversightInbound(sessions=sessions, sources=[connector])
    inbound._cursors[TENANT] = 7

    assert await inbound.poll_once() == 1
    assert await inbound.poll_once() == 0

    assert [since_of(body) for body in oversight.bodies] == [7, 10, 10]
    async with sessions() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
        kept = (await session.scalars(select(InboundDocument).order_by(InboundDocument.id))).all()
    assert [from_record(row.headers, row.value).subject for row in rows] == ["item-10"]
    assert [(row.source_message_id, row.status, row.reason) for row in kept] == [
        (
            f"oversight:{TENANT}:TUT-2026-000008",
            "refused",
            "As listed, the service gave it no readable Cursor.",
        ),
        (
            f"oversight:{TENANT}:TUT-2026-000009",
            "refused",
            "As listed, the service gave it no readable DecidedOn (a date).",
        ),
        (f"oversight:{TENANT}:TUT-2026-000010", "published", None),
    ]
