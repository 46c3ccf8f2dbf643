"""The WS4PM facade over real HTTP, called by a zeep client loaded from the served WSDL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import requests
import zeep
from requests.auth import HTTPBasicAuth
from zeep.exceptions import Fault
from zeep.transports import Transport

from contracts.events.meeting import ItemCreated
from kernel.database import utcnow
from kernel.settings import HubSettings
from services.meeting.domain import MAX_ANNEX_BYTES
from tests.integration.test_meeting_api import (
    PDF,
    SAMBREVILLE,
    WS4PM_PASSWORD,
    MeetingService,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")
WS4PM = "http://ws4pm.imio.be"


@pytest.fixture
async def service(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> AsyncIterator[MeetingService]:
    async with running(settings_for(hub_settings, tmp_path), database) as served:
        yield served


async def blocking(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """zeep is synchronous; the server runs on this test's loop, so call from a thread."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def ws4pm_client(
    service: MeetingService, username: str = f"urban-{SAMBREVILLE}", password: str = WS4PM_PASSWORD
) -> zeep.Client:
    session = requests.Session()
    session.auth = HTTPBasicAuth(username, password)
    transport = Transport(session=session, timeout=30)
    return await blocking(zeep.Client, f"{service.base_url}/ws4pm?wsdl", transport=transport)


def envelope(operation: str, namespace: str = WS4PM) -> bytes:
    return (
        '<?xml version="1.0"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:pm="{namespace}"><soapenv:Body>{operation}</soapenv:Body></soapenv:Envelope>'
    ).encode()


async def raw_call(service: MeetingService, body: bytes) -> httpx.Response:
    return await service.http.post(
        "/ws4pm",
        content=body,
        headers={"Content-Type": "text/xml; charset=utf-8"},
        auth=(f"urban-{SAMBREVILLE}", WS4PM_PASSWORD),
    )


def fault_string(response: httpx.Response) -> str:
    assert response.status_code == 500, response.text
    assert b"Fault" in response.content
    text = response.text
    return text[text.index("<faultstring>") + 13 : text.index("</faultstring>")]


def creation_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Permis d'urbanisme: abri de jardin",
        "category": "urbanisme",
        "description": "Abri de jardin de 12 m².",
        "motivation": "Conforme au guide régional.",
        "decision": "Octroie le permis.",
        "externalIdentifier": "URB/2026/0099",
        "annexes": [{"title": "Plan", "filename": "plan.pdf", "file": PDF}],
    }
    data.update(changes)
    return data


async def test_a_ws4pm_client_creates_an_item_and_reads_its_decision(
    service: MeetingService,
) -> None:
    meeting_id = await service.meeting()
    client = await ws4pm_client(service)
    connection = await blocking(client.service.testConnection)
    assert connection.connectionState is True
    configs = await blocking(client.service.getConfigInfos, showCategories=True)
    assert [config.id for config in configs.configInfo] == ["college", "council"]
    assert [c.id for c in configs.configInfo[0].categories] == ["urbanisme", "travaux"]
    assert "accepted_but_modified" in configs.configInfo[0].itemPositiveDecidedStates
    meetings = await blocking(client.service.meetingsAcceptingItems, meetingConfigId="college")
    assert [m.UID for m in meetings] == [meeting_id]

    assert not await blocking(client.service.checkIsLinked, externalIdentifier="URB/2026/0099")
    created = await blocking(
        client.service.createItem,
        meetingConfigId="college",
        proposingGroupId="urbanisme",
        creationData=creation_data(preferredMeeting=meeting_id),
        wfTransitions=["propose", "validate", "present", "sign"],
    )
    uid = created.UID
    assert created.warnings and "sign" in created.warnings[0]
    assert await blocking(client.service.checkIsLinked, externalIdentifier="URB/2026/0099")

    infos = await blocking(client.service.getItemInfos, UID=uid, showAnnexes=True)
    item = infos[0]
    assert (item.review_state, item.meeting, item.externalIdentifier) == (
        "presented",
        meeting_id,
        "URB/2026/0099",
    )
    assert item.annexes[0].file == PDF and item.annexes[0].filename == "plan.pdf"
    assert item.meeting_date.date() == (utcnow() + timedelta(days=7)).date()
    rows = await service.outbox()
    assert [row.event_type for row in rows] == [ItemCreated.TYPE]

    decided = await service.post(
        f"/v1/items/{uid}/decide",
        {"decision": "accepted_with_amendments", "decision_text": "Octroie, avec conditions."},
    )
    assert decided.status_code == 200, decided.text
    after = (await blocking(client.service.getItemInfos, UID=uid))[0]
    assert (after.review_state, after.decision) == (
        "accepted_but_modified",
        "Octroie, avec conditions.",
    )
    found = await blocking(
        client.service.searchItems, externalIdentifier="URB/2026/0099", meetingConfigId="college"
    )
    assert [i.UID for i in found] == [uid]
    assert await blocking(client.service.searchItems, review_state="refused") == []
    assert [i.UID for i in await blocking(client.service.searchItems, SearchableText="abri")] == [
        uid
    ]


async def test_ws4pm_business_errors_are_faults_and_store_nothing(
    service: MeetingService,
) -> None:
    client = await ws4pm_client(service)
    big = b"%PDF" + b"0" * MAX_ANNEX_BYTES
    attempts: list[tuple[dict[str, Any], str]] = [
        (
            {"meetingConfigId": "commission", "creationData": creation_data()},
            "no meeting configuration 'commission'",
        ),
        (
            {
                "meetingConfigId": "college",
                "creationData": creation_data(
                    annexes=[{"title": "Big", "filename": "big.pdf", "file": big}]
                ),
            },
            f"at most {MAX_ANNEX_BYTES} bytes",
        ),
        (
            {"meetingConfigId": "college", "creationData": creation_data(category="sport")},
            "no category 'sport'",
        ),
    ]
    for arguments, message in attempts:
        with pytest.raises(Fault) as fault:
            await blocking(client.service.createItem, proposingGroupId="urbanisme", **arguments)
        assert message in fault.value.message
    assert await service.stored() == (0, 0)

    with pytest.raises(Fault) as missing:
        await blocking(client.service.getItemInfos, UID="no-such-item")
    assert "no item with UID" in missing.value.message
    theirs = await service.item("62063")
    with pytest.raises(Fault):  # another tenant's item is not visible either
        await blocking(client.service.getItemInfos, UID=theirs["id"])

    intruder = await ws4pm_client(service, password="not-the-password")
    with pytest.raises(Fault) as refused:
        await blocking(intruder.service.testConnection)
    assert "wrong password" in refused.value.message


async def test_malformed_soap_gets_specific_faults(service: MeetingService) -> None:
    wrong_namespace = await raw_call(
        service,
        envelope("<pm:testConnectionRequest/>", namespace="http://example.org/other"),
    )
    assert "WS4PM operations are in 'http://ws4pm.imio.be'" in fault_string(wrong_namespace)

    missing = await raw_call(
        service,
        envelope(
            "<pm:createItemRequest><meetingConfigId>college</meetingConfigId>"
            "</pm:createItemRequest>"
        ),
    )
    assert "proposingGroupId" in fault_string(missing)

    unknown = await raw_call(service, envelope("<pm:getItemTemplateRequest/>"))
    assert "unknown or unsupported operation" in fault_string(unknown)

    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        + envelope(
            "<pm:checkIsLinkedRequest><externalIdentifier>&lol3;</externalIdentifier>"
            "</pm:checkIsLinkedRequest>"
        )[len(b'<?xml version="1.0"?>') :]
    )
    assert "DOCTYPE" in fault_string(await raw_call(service, bomb))
    external = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + envelope("<pm:testConnectionRequest><dummy>&e;</dummy></pm:testConnectionRequest>")[
            len(b'<?xml version="1.0"?>') :
        ]
    )
    assert "root:" not in (await raw_call(service, external)).text

    not_xml = await raw_call(service, b"<soapenv:Envelope")
    assert "not well-formed XML" in fault_string(not_xml)
    anonymous = await service.http.post("/ws4pm", content=envelope("<pm:testConnectionRequest/>"))
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["www-authenticate"]
    assert await service.stored() == (0, 0)


async def test_the_served_wsdl_names_its_own_address_and_the_ws4pm_namespace(
    service: MeetingService,
) -> None:
    response = await service.http.get("/ws4pm", params={"wsdl": ""})
    assert response.status_code == 200
    assert f'location="{service.base_url}/ws4pm"' in response.text
    assert 'targetNamespace="http://ws4pm.imio.be"' in response.text
    client = await ws4pm_client(service)
    assert sorted(client.wsdl.bindings[f"{{{WS4PM}}}WS4PMSOAPBinding"]._operations) == [
        "checkIsLinked",
        "createItem",
        "getConfigInfos",
        "getItemInfos",
        "meetingsAcceptingItems",
        "searchItems",
        "testConnection",
    ]
