"""The inbound items waiting for a later poll (``gateway.inbound.records.WaitingItems``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.deliveries import MIGRATIONS
from gateway.inbound.records import (
    InboundDocument,
    NotTaken,
    WaitingItem,
    WaitingItems,
    waiting_pause,
)
from tests.support.clock import Clock
from tests.support.databases import sqlite_sessions


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with sqlite_sessions(tmp_path / "gateway.db", "gateway", MIGRATIONS) as sessions:
        yield sessions


async def waiting(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return list((await session.scalars(select(WaitingItem.source_message_id))).all())


def test_the_pause_doubles_up_to_half_an_hour_however_long_an_item_fails() -> None:
    assert [waiting_pause(tries).total_seconds() for tries in (1, 2, 3)] == [10, 20, 40]
    # A week of failures at half an hour is over 300 tries: the doubling once overflowed.
    assert {waiting_pause(tries) for tries in (9, 44, 400, 10**6)} == {timedelta(minutes=30)}


async def test_an_item_recorded_elsewhere_or_no_longer_listed_does_not_wait(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    clock = Clock()
    items = WaitingItems(sessions, "notice", clock)
    await items.failed("", [NotTaken("gone", "62063", "HTTP 502")])
    assert await waiting(sessions) == ["gone"]

    # Another replica recorded "taken" while this one failed to fetch it.
    async with sessions() as session, session.begin():
        session.add(
            InboundDocument(
                channel="notice",
                source="",
                source_message_id="taken",
                tenant="62063",
                sender="",
                receiver="",
                document_type="notification",
                size=0,
                sha256="0" * 64,
                document=b"",
                status="published",
                source_status="acknowledged",
                fetched_at=clock.now,
                updated_at=clock.now,
            )
        )
    clock.advance(24 * 3600 + 31 * 60)  # "gone" was not listed again for a day
    await items.failed("", [NotTaken("taken", "62063", "HTTP 502")])

    assert await waiting(sessions) == []
