"""The WS4PM facade over real HTTP, called by a zeep client loaded from the served WSDL."""

from __future__ import annotations

import asyncio
import threading
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
from services.meeting import agenda, ws4pm
from services.meeting.domain import MAX_ANNEX_BYTES, MAX_ITEM_REQUEST_BYTES, MAX_ITEM_TEXT
from tests.integration.test_meeting_api import (
    LIEGE,
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


async def test_a_request_is_parsed_and_its_annexes_decoded_beside_the_event_loop(
    service: MeetingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A megabyte annex parsed, checked and decoded on the loop's thread would hold up
    # every other request of the process meanwhile.
    ran_on: dict[str, str] = {}

    def noting(name: str, work: Callable[..., Any]) -> Callable[..., Any]:
        def noted(*arguments: Any) -> Any:
            ran_on[name] = threading.current_thread().name
            return work(*arguments)

        return noted

    monkeypatch.setattr(ws4pm, "read_request", noting("read", ws4pm.read_request))
    monkeypatch.setattr(ws4pm, "_decode_annexes", noting("annexes", ws4pm._decode_annexes))
    meeting_id = await service.meeting()
    client = await ws4pm_client(service)
    await blocking(
        client.service.createItem,
        meetingConfigId="college",
        proposingGroupId="urbanisme",
        creationData=creation_data(preferredMeeting=meeting_id),
    )
    assert set(ran_on) == {"read", "annexes"}
    assert all(name.startswith("ws4pm-request") for name in ran_on.values()), ran_on


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


async def test_ws4pm_texts_longer_than_stored_and_unfit_preferred_meetings_are_client_faults(
    service: MeetingService,
) -> None:
    client = await ws4pm_client(service)
    closed = await service.meeting()
    assert (await service.post(f"/v1/meetings/{closed}/close")).status_code == 200
    council = await service.meeting("council")
    long_filename = "plan-" + "x" * 251 + ".pdf"
    attempts: list[tuple[dict[str, Any], str]] = [
        (
            {"creationData": creation_data(externalIdentifier="URB/" + "9" * 200)},
            "creationData/externalIdentifier has 204 characters; it takes at most 200",
        ),
        (
            # The council takes items from any service: only the column bounds the name.
            {
                "meetingConfigId": "council",
                "proposingGroupId": "s" * 201,
                "creationData": creation_data(category="finances"),
            },
            "proposingGroupId has 201 characters; it takes at most 200",
        ),
        (
            {
                "creationData": creation_data(
                    annexes=[{"title": "Plan", "filename": long_filename, "file": PDF}]
                )
            },
            "creationData/annexes[1]/filename has 260 characters; it takes at most 255",
        ),
        (
            {"creationData": creation_data(decision="x" * (MAX_ITEM_TEXT + 1))},
            f"creationData/decision has {MAX_ITEM_TEXT + 1} characters",
        ),
        (  # as REST bounds them
            {"creationData": creation_data(title="t" * 1001)},
            "creationData/title has 1001 characters; it takes at most 1000",
        ),
        (
            {
                "creationData": creation_data(
                    annexes=[{"title": "t" * 501, "filename": "plan.pdf", "file": PDF}]
                )
            },
            "creationData/annexes[1]/title has 501 characters; it takes at most 500",
        ),
        (
            {"creationData": creation_data(preferredMeeting=closed)},
            f"Meeting {closed} is closed",
        ),
        (
            {"creationData": creation_data(preferredMeeting=council)},
            "the meeting is a 'council' meeting",
        ),
    ]
    for arguments, message in attempts:
        call = {"meetingConfigId": "college", "proposingGroupId": "urbanisme", **arguments}
        with pytest.raises(Fault) as fault:
            await blocking(client.service.createItem, **call)
        assert message in fault.value.message, fault.value.message
        assert fault.value.code is not None and fault.value.code.endswith("Client")
    assert await service.stored() == (0, 0)


async def test_a_ws4pm_client_reads_its_own_user_infos_and_no_one_else(
    service: MeetingService,
) -> None:
    client = await ws4pm_client(service)
    me = f"urban-{SAMBREVILLE}"
    plain = await blocking(client.service.getUserInfos, userId=me)
    assert (plain.fullname, plain.email, plain.groups) == (me, None, [])
    configs = await blocking(client.service.getConfigInfos)
    for suffix in (None, "creators"):
        infos = await blocking(
            client.service.getUserInfos, userId=me, showGroups=True, suffix=suffix
        )
        assert [(g.UID, g.id, g.title) for g in infos.groups] == [
            (g.UID, g.id, g.title) for g in configs.groupInfo
        ]
        assert [g.id for g in infos.groups] == ["urbanisme", "travaux"]

    with pytest.raises(Fault) as other:
        await blocking(client.service.getUserInfos, userId=f"urban-{LIEGE}")
    assert f"can only read its own infos, not 'urban-{LIEGE}'" in other.value.message
    assert "no user directory" in other.value.message
    with pytest.raises(Fault) as reviewers:
        await blocking(client.service.getUserInfos, userId=me, showGroups=True, suffix="reviewers")
    assert "no per-service roles" in reviewers.value.message


async def test_get_single_item_infos_answers_the_item_unwrapped(service: MeetingService) -> None:
    meeting_id = await service.meeting()
    client = await ws4pm_client(service)
    uid = (
        await blocking(
            client.service.createItem,
            meetingConfigId="college",
            proposingGroupId="urbanisme",
            creationData=creation_data(preferredMeeting=meeting_id),
        )
    ).UID
    single = await blocking(client.service.getSingleItemInfos, UID=uid, showAnnexes=True)
    listed = (await blocking(client.service.getItemInfos, UID=uid, showAnnexes=True))[0]
    assert single == listed
    assert (single.UID, single.review_state, single.preferredMeeting) == (
        uid,
        "itemcreated",
        meeting_id,
    )
    assert single.meeting is None and single.meeting_date.year == 1950
    assert single.annexes[0].file == PDF and single.templates == []
    bare = await blocking(client.service.getSingleItemInfos, UID=uid)
    assert bare.annexes == [] and bare.externalIdentifier == "URB/2026/0099"

    with pytest.raises(Fault) as missing:
        await blocking(client.service.getSingleItemInfos, UID="no-such-item")
    assert "no item with UID 'no-such-item' is visible" in missing.value.message
    theirs = (await service.item(LIEGE))["id"]
    with pytest.raises(Fault) as other_tenant:
        await blocking(client.service.getSingleItemInfos, UID=theirs)
    assert f"no item with UID {theirs!r} is visible" in other_tenant.value.message


async def test_get_item_template_is_a_fault_that_says_templates_are_not_supported(
    service: MeetingService,
) -> None:
    client = await ws4pm_client(service)
    uid = (
        await blocking(
            client.service.createItem,
            meetingConfigId="college",
            proposingGroupId="urbanisme",
            creationData=creation_data(),
        )
    ).UID
    with pytest.raises(Fault) as template:
        await blocking(
            client.service.getItemTemplate, itemUID=uid, templateId="itemTemplate__format__odt"
        )
    message = template.value.message
    assert "no documents from POD templates" in message
    assert "'itemTemplate__format__odt'" in message and "getSingleItemInfos" in message
    with pytest.raises(Fault) as missing:
        await blocking(client.service.getItemTemplate, itemUID="no-such-item", templateId="t")
    assert "no item with UID 'no-such-item'" in missing.value.message
    assert await service.stored() == (1, 1)


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

    unknown = await raw_call(service, envelope("<pm:deleteItemRequest/>"))
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

    two_bodies = envelope("<pm:testConnectionRequest/>").replace(
        b"</soapenv:Envelope>",
        b"<soapenv:Body><pm:testConnectionRequest/></soapenv:Body></soapenv:Envelope>",
    )
    assert fault_string(await raw_call(service, two_bodies)) == "a SOAP Envelope has one Body"
    must_understand = envelope("<pm:testConnectionRequest/>").replace(
        b"<soapenv:Body>",
        b'<soapenv:Header><x:Token xmlns:x="urn:x" soapenv:mustUnderstand="1"/>'
        b"</soapenv:Header><soapenv:Body>",
    )
    answer = await raw_call(service, must_understand)
    assert b"<faultcode>soapenv:MustUnderstand</faultcode>" in answer.content
    assert "'Token', marked mustUnderstand" in fault_string(answer)
    anonymous = await service.http.post("/ws4pm", content=envelope("<pm:testConnectionRequest/>"))
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["www-authenticate"]
    assert await service.stored() == (0, 0)


async def test_a_client_creates_an_item_with_annexes_past_the_hubs_body_limit(
    service: MeetingService, hub_settings: HubSettings
) -> None:
    # Three annexes of 4 MiB, which WS4PM's rules allow (ten): the hub's 12 MiB default
    # refused the request before the endpoint saw it.
    annex = PDF + b"%" + b"0" * (MAX_ANNEX_BYTES - len(PDF) - 1)
    annexes = [{"title": f"Plan {n}", "filename": f"plan-{n}.pdf", "file": annex} for n in range(3)]
    client = await ws4pm_client(service)
    created = await blocking(
        client.service.createItem,
        meetingConfigId="college",
        proposingGroupId="urbanisme",
        creationData=creation_data(annexes=annexes),
    )
    assert hub_settings.max_body_bytes < 3 * MAX_ANNEX_BYTES * 4 // 3
    infos = await blocking(client.service.getItemInfos, UID=created.UID, showAnnexes=True)
    assert [annex.filename for annex in infos[0].annexes] == [f"plan-{n}.pdf" for n in range(3)]


async def test_a_soap_call_over_the_body_limit_gets_a_client_fault_not_a_problem(
    service: MeetingService,
) -> None:
    limit = service.app.state.max_body_bytes
    assert limit == MAX_ITEM_REQUEST_BYTES
    padding = b"<!--" + b"x" * limit + b"-->"
    oversized = envelope("<pm:testConnectionRequest/>").replace(
        b"<soapenv:Body>", padding + b"<soapenv:Body>"
    )
    answer = await service.http.post(
        "/ws4pm",
        content=oversized,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        auth=(f"urban-{SAMBREVILLE}", WS4PM_PASSWORD),
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("text/xml")
    assert b"<faultcode>soapenv:Client</faultcode>" in answer.content
    assert b"/problems/body-too-large</problemType>" in answer.content
    assert f"at most {limit} bytes".encode() in answer.content
    # Without SOAPAction the call is no SOAP call: the REST API's Problem, as before.
    plain = await service.http.post("/ws4pm", content=oversized)
    assert (plain.status_code, plain.headers["content-type"]) == (413, "application/problem+json")


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
        "getItemTemplate",
        "getSingleItemInfos",
        "getUserInfos",
        "meetingsAcceptingItems",
        "searchItems",
        "testConnection",
    ]


async def test_search_items_applies_every_criterion_given(service: MeetingService) -> None:
    # Creator, Description and getDecision were ignored, and Title too beside SearchableText:
    # "refused" answered every item, accepted ones included.
    meeting_id = await service.meeting()
    client = await ws4pm_client(service)

    async def created(name: str, **data: Any) -> str:
        answer = await blocking(
            client.service.createItem,
            meetingConfigId="college",
            proposingGroupId="urbanisme",
            creationData=creation_data(externalIdentifier=name, annexes=[], **data),
            wfTransitions=["propose", "validate"],
        )
        uid: str = answer.UID
        return uid

    shed = await created("shed", title="Permis: abri de jardin", description="Abri de 12 m².")
    garage = await created("garage", title="Permis: garage", description="Garage de 30 m².")
    by_rest = (await service.item(title="Permis: véranda", external_identifier="rest"))["id"]
    names = {shed: "shed", garage: "garage", by_rest: "rest"}
    for uid, decision in ((shed, "accepted"), (garage, "refused")):
        present = await service.post(f"/v1/items/{uid}/present", {"meeting_id": meeting_id})
        assert present.status_code == 200, present.text
        assert (await service.decide(uid, decision)).status_code == 200

    async def found(**criteria: Any) -> set[str]:
        return {names[item.UID] for item in await blocking(client.service.searchItems, **criteria)}

    assert await found() == {"shed", "garage", "rest"}
    assert await found(getDecision="refused") == {"garage"}
    assert await found(getDecision="accepted") == {"shed"}
    # A decision this service has no item in (PloneMeeting's delay), not one (a state
    # before any decision), or one PloneMeeting has and the hub not: no item.
    for unheld in ("delayed", "proposed", "accepted_and_returned"):
        assert await found(getDecision=unheld) == set(), unheld
    assert await found(Creator=f"urban-{SAMBREVILLE}") == {"shed", "garage"}
    assert await found(Creator="nobody-at-all") == set()
    assert await found(Description="zzzz-no-such-text") == set()
    assert await found(Description="GARAGE DE") == {"garage"}
    assert await found(Title="permis") == {"shed", "garage", "rest"}
    assert await found(SearchableText="Permis", Title="zzzz-no-such-title") == set()
    assert await found(SearchableText="12 m²", Title="abri") == {"shed"}
    assert await found(Title="Permis", getDecision="accepted", Creator="nobody-at-all") == set()

    with pytest.raises(Fault) as portal_type:
        await blocking(client.service.searchItems, portal_type="MeetingItemCollege")
    assert "cannot search by portal_type ('MeetingItemCollege')" in portal_type.value.message
    assert portal_type.value.code is not None and portal_type.value.code.endswith("Client")


async def test_create_item_refuses_a_blank_title_as_rest_does(service: MeetingService) -> None:
    client = await ws4pm_client(service)
    for title, transitions in (("", []), ("   ", []), (" \t ", ["propose"])):
        with pytest.raises(Fault) as fault:
            await blocking(
                client.service.createItem,
                meetingConfigId="college",
                proposingGroupId="urbanisme",
                creationData=creation_data(title=title),
                wfTransitions=transitions,
            )
        assert "An item needs a title" in fault.value.message, repr(title)
        assert fault.value.code is not None and fault.value.code.endswith("Client")
    assert await service.stored() == (0, 0)


async def test_a_twin_linked_concurrently_is_a_client_fault_with_transitions_too(
    service: MeetingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await ws4pm_client(service)
    first = await blocking(
        client.service.createItem,
        meetingConfigId="college",
        proposingGroupId="urbanisme",
        creationData=creation_data(),
    )
    # The twin's check runs before the first item commits, as in a race: it sees no link,
    # and the database's unique key refuses the twin when it is written.
    looked: list[str] = []
    real_lookup = agenda.find_linked_item

    async def racing_lookup(*arguments: Any) -> Any:
        looked.append("lookup")
        return None if len(looked) == 1 else await real_lookup(*arguments)

    monkeypatch.setattr(agenda, "find_linked_item", racing_lookup)
    with pytest.raises(Fault) as fault:
        await blocking(
            client.service.createItem,
            meetingConfigId="college",
            proposingGroupId="urbanisme",
            creationData=creation_data(),
            wfTransitions=["propose"],
        )
    assert f"is already linked to item {first.UID}" in fault.value.message
    assert fault.value.code is not None and fault.value.code.endswith("Client")
    assert await service.stored() == (1, 1)
