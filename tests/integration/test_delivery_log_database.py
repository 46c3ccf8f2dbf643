"""The delivery engine's slow-target scenarios on SQLite and PostgreSQL: an attempt handed
over by its fetch records its outcome under its claim, and the retry scheduler leaves out
a target whose retries are all claimed (a row-value NOT IN on each database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.deliveries import MIGRATIONS
from tests.support.databases import migrated_sessions
from tests.unit import test_delivery_engine as scenarios

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(
    database: tuple[str, str | None],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database, "gateway", MIGRATIONS) as sessions:
        yield sessions


async def test_a_silent_target_holds_neither_the_fetch_nor_the_other_targets(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await scenarios.test_a_silent_target_holds_neither_the_fetch_nor_the_other_targets(
        sessions, monkeypatch
    )


async def test_a_delivery_waiting_for_its_targets_slot_is_left_to_the_retries(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await scenarios.test_a_delivery_waiting_for_its_targets_slot_is_left_to_the_retries(
        sessions, monkeypatch
    )


async def test_the_retries_of_a_silent_target_leave_the_others_to_go_on(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await scenarios.test_the_retries_of_a_silent_target_leave_the_others_to_go_on(sessions)


async def test_three_silent_targets_leave_a_fourth_its_retries_and_first_attempts(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await scenarios.test_three_silent_targets_leave_a_fourth_its_retries_and_first_attempts(
        sessions, monkeypatch
    )


async def test_an_attempt_whose_fetch_could_not_record_it_records_itself(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await scenarios.test_a_fetch_read_again_after_its_recording_failed_leaves_the_attempt_under_way(
        sessions, monkeypatch
    )
