"""The urban service and the real broker: a NOTICe notification becomes a file, the college's
decision (on meeting.events) becomes the FINAL response, all on urban.events.

Each test serves an urban app with its outbox relay, its consumer (a fresh
consumer group) and its watcher on the session's broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from contracts.envelope import from_record, headers_as_text
from contracts.events.outside import NoticeNotificationReceived
from contracts.events.urban import FileOpened, NoticeResponseRequested
from kernel.consumer import InboxEntry
from kernel.settings import HubSettings
from services.urban.tables import PermitFile
from tests.integration.test_courrier_events import eventually, publish, records_with_key
from tests.integration.test_urban_api import (
    SAMBREVILLE,
    UrbanService,
    decided,
    inbound,
    notification,
    running,
    settings_for,
)
from tests.support.groups import group_at_end

pytestmark = pytest.mark.integration


@pytest.fixture
async def service(
    hub_settings: HubSettings,
    tmp_path: Path,
    database: tuple[str, str | None],
    kafka_bootstrap: str,
) -> AsyncIterator[UrbanService]:
    async with running(
        settings_for(hub_settings, tmp_path),
        database,
        background=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        group_id=await group_at_end(kafka_bootstrap, "urban-test"),
    ) as served:
        # The consumer has joined once a first event is handled (see test_courrier_events).
        probe = notification(instance_code="NOT-OURS")
        await publish(kafka_bootstrap, probe)

        async def handled() -> bool:
            async with served.app.state.sessions() as session:
                return await session.get(InboxEntry, probe.id) is not None

        await eventually(handled, "the urban consumer is up")
        yield served


async def file_of(service: UrbanService, notification_id: str) -> PermitFile | None:
    async with service.app.state.sessions() as session:
        found: PermitFile | None = await session.scalar(
            select(PermitFile).where(PermitFile.notice_notification_id == notification_id)
        )
        return found


async def test_a_notification_becomes_a_file_whose_decision_answers_notice(
    service: UrbanService, kafka_bootstrap: str
) -> None:
    event = notification()
    notification_id = event.data_as(NoticeNotificationReceived).notification_id
    await publish(kafka_bootstrap, event)
    await publish(kafka_bootstrap, event)  # redelivered

    async def opened() -> bool:
        return await file_of(service, notification_id) is not None

    await eventually(opened, "the notification opened a file")
    file = await file_of(service, notification_id)
    assert file is not None
    assert (await service.post(f"/v1/files/{file.id}/complete")).status_code == 200
    assert (await service.post(f"/v1/files/{file.id}/request-decision")).status_code == 200
    await publish(kafka_bootstrap, inbound(decided(file.reference), SAMBREVILLE, "item-1"))

    key = f"{SAMBREVILLE}:{file.id}".encode()

    async def final_published() -> bool:
        records = await records_with_key(kafka_bootstrap, "urban.events", key)
        return any(
            dict(headers_as_text(r.headers))["ce_type"] == NoticeResponseRequested.TYPE
            and b'"FINAL"' in r.value
            for r in records
        )

    await eventually(final_published, "the FINAL response reached urban.events")
    records = await records_with_key(kafka_bootstrap, "urban.events", key)
    events = [from_record(headers_as_text(r.headers), r.value) for r in records]
    types = [e.type for e in events]
    assert types.count(FileOpened.TYPE) == 1
    responses = [
        e.data_as(NoticeResponseRequested) for e in events if e.type == NoticeResponseRequested.TYPE
    ]
    assert [(r.state, r.decision) for r in responses] == [("PARTIAL", None), ("FINAL", "granted")]
    assert all(r.notification_id == notification_id for r in responses)
