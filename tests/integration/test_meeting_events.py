"""The meeting service and the real broker: urban's requests become items, decisions leave.

Each test serves a meeting app with its outbox relay and its ``urban.events``
consumer (a fresh consumer group) on the session's broker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from contracts.envelope import CloudEvent, from_record, headers_as_text, new_event
from contracts.events.meeting import ConcernedParty, ItemCreated, ItemDecided
from contracts.events.urban import DecisionNeeded
from kernel.settings import HubSettings
from services.meeting.tables import Item, UnplacedRequest
from tests.integration.test_courrier_events import eventually, publish, records_with_key
from tests.integration.test_meeting_api import SAMBREVILLE, MeetingService, running, settings_for
from tests.support.groups import group_at_end

pytestmark = pytest.mark.integration
ENTERPRISE = "0403170701"


@pytest.fixture
async def service(
    hub_settings: HubSettings,
    tmp_path: Path,
    database: tuple[str, str | None],
    kafka_bootstrap: str,
) -> AsyncIterator[MeetingService]:
    async with running(
        settings_for(hub_settings, tmp_path),
        database,
        background=True,
        kafka_bootstrap_servers=kafka_bootstrap,
        group_id=await group_at_end(kafka_bootstrap, "meeting-test"),
    ) as served:
        # The consumer has joined once a first request is handled (see test_courrier_events).
        probe = decision_needed(meeting_config="no-such-config")
        await publish(kafka_bootstrap, probe)
        await eventually(lambda: unplaced(served, probe.id), "the request consumer is up")
        yield served


def decision_needed(meeting_config: str = "college", **changes: object) -> CloudEvent:
    file_id = str(uuid.uuid4())
    data = DecisionNeeded.model_validate(
        {
            "file_id": file_id,
            "title": "Permis d'urbanisme: immeuble de 6 logements",
            "proposing_service": "urbanisme",
            "category": "urbanisme",
            "description": "Construction d'un immeuble à appartements.",
            "motivation": "Avis favorable du fonctionnaire délégué.",
            "meeting_config": meeting_config,
            "external_identifier": f"URB/{file_id[:8]}",
            "concerned_party": {"kind": "enterprise", "identifier": f"BE {ENTERPRISE}"},
            **changes,
        }
    )
    return new_event(data, tenant=SAMBREVILLE, subject=file_id, source="urn:hub:urban")


async def unplaced(service: MeetingService, event_id: str) -> bool:
    async with service.app.state.sessions() as session:
        return await session.get(UnplacedRequest, event_id) is not None


async def items_for(service: MeetingService, external_identifier: str) -> list[Item]:
    async with service.app.state.sessions() as session:
        rows = await session.scalars(
            select(Item).where(Item.external_identifier == external_identifier)
        )
        return list(rows.all())


async def test_a_decision_request_becomes_one_item_whose_decision_is_published(
    service: MeetingService, kafka_bootstrap: str
) -> None:
    request = decision_needed()
    data = request.data_as(DecisionNeeded)
    await publish(kafka_bootstrap, request)
    await publish(kafka_bootstrap, request)  # redelivered
    # Another request for the same document (another file id, so maybe another
    # partition): whichever comes first makes the item, the other finds it.
    other = decision_needed(external_identifier=data.external_identifier)
    await publish(kafka_bootstrap, other)

    async def one_item() -> bool:
        return len(await items_for(service, data.external_identifier)) == 1

    await eventually(one_item, "the requested item exists")
    meeting_id = await service.meeting()
    [item] = await items_for(service, data.external_identifier)
    assert (item.origin, item.concerned_party_identifier) == ("event", ENTERPRISE)
    for step in ("propose", "validate"):
        assert (await service.post(f"/v1/items/{item.id}/{step}")).status_code == 200
    await service.post(f"/v1/items/{item.id}/present", {"meeting_id": meeting_id})
    assert (await service.decide(item.id)).status_code == 200

    key = f"{SAMBREVILLE}:{item.id}".encode()

    async def both_published() -> bool:
        return len(await records_with_key(kafka_bootstrap, "meeting.events", key)) == 2

    await eventually(both_published, "the item's events reached meeting.events")
    records = await records_with_key(kafka_bootstrap, "meeting.events", key)
    events = [from_record(headers_as_text(r.headers), r.value) for r in records]
    assert [event.type for event in events] == [ItemCreated.TYPE, ItemDecided.TYPE]
    assert events[0].data_as(ItemCreated).requested_by_event_id in (request.id, other.id)
    decided = events[1].data_as(ItemDecided)
    assert decided.external_identifier == data.external_identifier
    assert decided.concerned_party == ConcernedParty(kind="enterprise", identifier=ENTERPRISE)
    assert decided.decision_number and decided.publication_required is True
    assert len(await items_for(service, data.external_identifier)) == 1


async def test_a_request_for_an_unknown_configuration_is_kept_visible(
    service: MeetingService, kafka_bootstrap: str
) -> None:
    request = decision_needed(meeting_config="commission-urbanisme")
    await publish(kafka_bootstrap, request)
    await eventually(lambda: unplaced(service, request.id), "the request is kept")
    listed = await service.http.get("/v1/unplaced-requests", headers=service.auth())
    [kept] = [row for row in listed.json() if row["event_id"] == request.id]
    assert "commission-urbanisme" in kept["reason"]
    assert await items_for(service, request.data_as(DecisionNeeded).external_identifier) == []
    # The consumer goes on: the next request is placed.
    following = decision_needed()
    await publish(kafka_bootstrap, following)
    external = following.data_as(DecisionNeeded).external_identifier

    async def placed() -> bool:
        return len(await items_for(service, external)) == 1

    await eventually(placed, "the following request is placed")
