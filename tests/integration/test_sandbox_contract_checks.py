"""The sandboxes refuse what their contracts refuse, over HTTP on 127.0.0.1: a test or a
connector that sends something wrong learns it there, not from the real service.

NOTICe's listing (a wrong cursor, limit or instance code), the Peppol access point's
participants (the policy's scheme in front of them, and the participants an account may
send for), and the SOAP services' idempotency keys and e-Box attachment digests.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from contracts.envelope import new_event
from contracts.events.meeting import DecisionTransmissionRequested
from gateway.connectors.ebox_soap import soap_with_attachment
from gateway.errors import PermanentDeliveryError
from gateway.wssecurity import X509Signature
from kernel.pki import ensure_tenant_signing_identity
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.tenants import load_tenants
from sandbox import notice, peppol_ap
from sandbox.app import build_app
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.recorder import Recorder
from tests.integration import test_ebox_soap_sandbox as ebox
from tests.integration import test_oversight_sandbox as oversight
from tests.integration.test_notice_sandbox import notification, seed
from tests.integration.test_peppol_ap_sandbox import COMMUNE, SUPPLIER
from tests.integration.test_peppol_ap_sandbox import connector_for as peppol_connector
from tests.integration.test_peppol_ap_sandbox import delivery as peppol_delivery
from tests.integration.test_peppol_ap_sandbox import drop as peppol_drop
from tests.support.gateway_hub import sandbox_inbox
from tests.support.invoices import application_response
from tests.support.servers import serving

pytestmark = pytest.mark.integration


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def sandbox(
    corpus: Path, hub_settings: HubSettings, recorder: Recorder
) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, recorder)) as url:
        yield url


# -- NOTICe: the listing's query -----------------------------------------------------------

NOTICE_KEY = {"X-Api-Key": "sandbox-notice-key-hub"}


def listing(sandbox: str, instance: str) -> str:
    return f"{sandbox}/notice/api/v1/instances/{instance}/notifications"


async def seeded(http: httpx.AsyncClient, sandbox: str, instance: str, count: int) -> list[str]:
    ids = [f"{instance}-N{i}" for i in range(count)]
    await seed(http, sandbox, *(notification(instance, i) for i in ids))
    return ids


@pytest.mark.parametrize(
    ("instance", "query", "reason"),
    [
        # Read as the first page: a client with a broken cursor saw page 1 again.
        ("NOTICE-A", {"after": "nope"}, "after: 'nope' is not the next of a page"),
        # Quietly clamped to 1 and to 1,000.
        ("NOTICE-A", {"limit": "0"}, "limit: '0' is not an integer from 1 to 1000"),
        ("NOTICE-A", {"limit": "1001"}, "limit: '1001' is not an integer from 1 to 1000"),
        ("NOTICE-A", {"limit": "many"}, "limit: 'many' is not an integer"),
        # Not the contract's InstanceCode: answered with an empty list.
        ("bad code!", {}, "instanceCode: 'bad code!' does not match"),
        ("N" * 41, {}, "instanceCode: 'NNNN"),
        ("NOTICE-A", {"status": "ALL"}, "status: 'ALL' is not one of"),
    ],
)
async def test_notice_refuses_a_listing_query_its_contract_refuses_with_400(
    sandbox: str, http: httpx.AsyncClient, instance: str, query: dict[str, str], reason: str
) -> None:
    await seeded(http, sandbox, "NOTICE-A", 2)
    params = {"status": "EN_ATTENTE_REPONSE"} | query

    answer = await http.get(listing(sandbox, instance), params=params, headers=NOTICE_KEY)

    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    contract = OpenApiContract(notice.CONTRACT)
    assert contract_errors(contract.validator("Problem"), answer.json()) == []
    assert any(error.startswith(reason) for error in answer.json()["errors"]), answer.json()
    operation = contract.document["paths"]["/instances/{instanceCode}/notifications"]["get"]
    assert "400" in operation["responses"]  # the contract says so too


async def test_notice_takes_a_cursor_only_from_the_listing_of_its_own_instance(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    mine = await seeded(http, sandbox, "NOTICE-A", 3)
    theirs = await seeded(http, sandbox, "NOTICE-B", 3)
    params: dict[str, Any] = {"status": "EN_ATTENTE_REPONSE", "limit": 1}
    first = (await http.get(listing(sandbox, "NOTICE-A"), params=params, headers=NOTICE_KEY)).json()
    assert ([item["id"] for item in first["items"]], first["next"]) == (mine[:1], mine[0])

    # Its position in the other instance's list used to be applied here: NOTICE-B's page
    # after "NOTICE-A-N0" started at its second notification, and its first was never seen.
    crossed = await http.get(
        listing(sandbox, "NOTICE-B"), params=params | {"after": mine[0]}, headers=NOTICE_KEY
    )
    assert crossed.status_code == 400
    assert crossed.json()["errors"] == [
        "after: 'NOTICE-A-N0' is not the next of a page of instance 'NOTICE-B''s listing"
    ]

    # The instance's own cursors still page through it, to the end.
    seen, after = [], None
    while True:
        query = params | ({"after": after} if after else {})
        page = (
            await http.get(listing(sandbox, "NOTICE-B"), params=query, headers=NOTICE_KEY)
        ).json()
        seen += [item["id"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == theirs


# -- Peppol access point: participants ------------------------------------------------------

OUTBOX_KEY = {"X-Api-Key": "sandbox-ap-key-hub"}
RESPONSE_DOCUMENT_TYPE = (
    "urn:oasis:names:specification:ubl:schema:xsd:ApplicationResponse-2::ApplicationResponse##"
    "urn:fdc:peppol.eu:poacc:trns:invoice_response:3::2.1"
)


def outgoing(sender: str, receiver: str, document: bytes) -> dict[str, str]:
    return {
        "sender": sender,
        "receiver": receiver,
        "documentTypeId": RESPONSE_DOCUMENT_TYPE,
        "processId": "urn:fdc:peppol.eu:poacc:bis:invoice_response:3",
        "document": base64.b64encode(document).decode(),
    }


async def test_the_access_point_reads_participants_behind_the_policys_scheme(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    # The contract's ParticipantId allows the scheme; the documents' EndpointIDs never carry
    # it, and the request was refused for "EndpointID '0208:…' is not the request's 'iso…'".
    body = outgoing(
        f"iso6523-actorid-upis::{COMMUNE}",
        f"iso6523-actorid-upis::{SUPPLIER}",
        application_response(sender=COMMUNE, receiver=SUPPLIER),
    )

    answer = await http.post(f"{sandbox}/peppol-ap/v1/outbox", json=body, headers=OUTBOX_KEY)

    assert answer.status_code == 202, answer.text
    [sent] = (await sandbox_inbox(sandbox))["answers"]["F-2026/0042"]
    assert (sent["sender"], sent["receiver"]) == (COMMUNE, SUPPLIER)

    dropped = await peppol_drop(http, sandbox, COMMUNE, b"<Invoice/>")
    inbox = await http.get(
        f"{sandbox}/peppol-ap/v1/inbox",
        params={"receiver": f"iso6523-actorid-upis::{COMMUNE}"},
        headers=OUTBOX_KEY,
    )
    assert [m["messageId"] for m in inbox.json()["items"]] == [dropped["messageId"]]


async def test_an_account_sends_only_for_the_participants_registered_under_it(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    # Account "evil" speaking for the commune that account "hub" serves was accepted.
    evil = peppol_connector(sandbox, http, api_key="sandbox-ap-key-evil")
    with pytest.raises(PermanentDeliveryError) as raised:
        await evil.deliver(peppol_delivery())
    assert f"sender: {COMMUNE!r} is not a participant of this access point account" in str(
        raised.value
    )
    stranger = "0208:0999999962"
    refused = await http.post(
        f"{sandbox}/peppol-ap/v1/outbox",
        json=outgoing(stranger, SUPPLIER, application_response(sender=stranger)),
        headers=OUTBOX_KEY,
    )
    assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[-1]) == (
        422,
        "sender-not-served",
    )
    contract = OpenApiContract(peppol_ap.CONTRACT)
    assert contract_errors(contract.validator("Problem"), refused.json()) == []
    assert (await sandbox_inbox(sandbox))["answers"] == {}

    # A document delivered to an account for a participant registers it there: the
    # participant's answers go out through that account (the gateway's tests and demo use
    # accounts and participants of their own, and answer what they received).
    await peppol_drop(http, sandbox, stranger, b"<Invoice/>", account="evil")
    answered = await http.post(
        f"{sandbox}/peppol-ap/v1/outbox",
        json=outgoing(stranger, SUPPLIER, application_response(sender=stranger)),
        headers={"X-Api-Key": "sandbox-ap-key-evil"},
    )
    assert answered.status_code == 202, answered.text
    # ... and there only.
    elsewhere = await http.post(
        f"{sandbox}/peppol-ap/v1/outbox",
        json=outgoing(stranger, SUPPLIER, application_response(sender=stranger)),
        headers=OUTBOX_KEY,
    )
    assert elsewhere.status_code == 422


def test_account_hub_serves_the_participant_of_every_tenant_of_the_hub(tmp_path: Path) -> None:
    # They stand for the SMP registrations of the tenant files: `hub up` answers their
    # suppliers through account hub, a tenant added to the files included.
    tenants = load_tenants(REPOSITORY_ROOT / "config" / "tenants")
    participants = {str(t.raw["peppol"]["participant"]) for t in tenants.values()}
    registered = peppol_ap.registered_participants(REPOSITORY_ROOT / "config" / "tenants")
    assert participants and registered == {peppol_ap.DEFAULT_ACCOUNT: participants}
    # A tenants directory the services refuse leaves the sandbox serving, with none.
    (tmp_path / "12345.yaml").write_text("tenant: [", encoding="utf-8")
    assert peppol_ap.registered_participants(tmp_path) == {}


# -- e-Box SOAP and the oversight: idempotency keys and attachment digests ------------------


async def test_ebox_refuses_a_ticket_repeated_for_another_message(
    sandbox: str, recorder: Recorder, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    connector = ebox.connector_for(ebox.Sandbox(sandbox, recorder), http, hub_settings)
    key = "event-1:outgoing-mail-ebox"  # one key, hence one Ticket, for two letters
    try:
        first = await connector.deliver(ebox.delivery(ebox.send_requested(), key=key))
        # The first message id came back and the second letter was never published.
        with pytest.raises(PermanentDeliveryError, match="already used for another message"):
            await connector.deliver(
                ebox.delivery(ebox.send_requested(subject="Permis de bâtir"), key=key)
            )
        again = await connector.deliver(ebox.delivery(ebox.send_requested(), key=key))
    finally:
        await connector.aclose()

    assert again.external_reference == first.external_reference
    [reception] = recorder.receptions("ebox_soap")
    assert (reception.arrivals, reception.reused) == (2, 1)


async def test_the_oversight_refuses_an_item_id_repeated_for_another_decision(
    sandbox: str, recorder: Recorder, hub_settings: HubSettings
) -> None:
    http, connector = await oversight.connector_over(oversight.Network(), sandbox, hub_settings)
    event = oversight.transmission()
    data = event.data_as(DecisionTransmissionRequested)
    changed = new_event(
        data.model_copy(update={"title": "Budget communal 2027"}),
        tenant=event.tenant,
        subject=data.item_id,
        source="urn:hub:meeting",
    )
    try:
        first = await connector.deliver(oversight.delivery(event))
        with pytest.raises(PermanentDeliveryError, match=r"ItemId .* already used"):
            await connector.deliver(oversight.delivery(changed))
        again = await connector.deliver(oversight.delivery(event))
    finally:
        await connector.aclose()
        await http.aclose()

    assert again.external_reference == first.external_reference
    [reception] = recorder.receptions("oversight")
    assert (reception.arrivals, reception.reused) == (2, 1)


def signed_publication(settings: HubSettings, ticket: str, digest: str | None) -> etree._Element:
    """A publishEboxMessage of one letter, ``cid:letter@hub``, signed by a trusted tenant;
    ``digest``: its Digest as ``<method>:<base64 value>``, or None for none."""
    message = "http://socialsecurity.be/eboxmessage/v1"
    types = "http://socialsecurity.be/eboxmessage/types/v1"
    if digest is None:
        digest_element = ""
    else:
        method, value = digest.split(":")
        digest_element = (
            f"<t:Digest><t:DigestMethod>{method}</t:DigestMethod>"
            f"<t:DigestValue>{value}</t:DigestValue></t:Digest>"
        )
    envelope = etree.fromstring(
        f'<s:Envelope xmlns:s="{ebox.SOAP_ENV}"><s:Body>'
        f'<PublishEboxMessageRequest xmlns="{message}" xmlns:t="{types}">'
        f"<t:MessageID><t:Ticket>{ticket}</t:Ticket></t:MessageID>"
        f"<t:RecipientID><t:INSS>{ebox.PERSON_WITH_EBOX}</t:INSS>"
        "<t:EboxType>CITIZEN</t:EboxType></t:RecipientID>"
        "<t:MessageType>OUTGOING_MAIL</t:MessageType>"
        "<t:Document><t:Title>Votre permis</t:Title><t:Content>cid:letter@hub</t:Content>"
        f"{digest_element}<t:DownloadFileName>a.pdf</t:DownloadFileName></t:Document>"
        "</PublishEboxMessageRequest></s:Body></s:Envelope>"
    )
    identity = ensure_tenant_signing_identity(settings.keys_dir, ebox.TENANT)
    X509Signature.from_files(*identity).sign(envelope)
    return envelope


def b64_digest(algorithm: str) -> str:
    return base64.b64encode(hashlib.new(algorithm, ebox.PDF).digest()).decode()


@pytest.mark.parametrize(
    ("ticket", "digest", "fault"),
    [
        # The XSD makes Digest optional, but the attachment is outside the signature:
        # without one, bytes that nothing signs were published.
        ("t-none", None, "the document cid:letter@hub has no Digest"),
        # SHA-1, deprecated by the XSD since 2018, was accepted.
        ("t-sha1", f"SHA-1:{b64_digest('sha1')}", "has a SHA-1 Digest"),
        ("t-sha512", f"SHA-512:{b64_digest('sha512')}", None),
        ("t-sha256", f"SHA-256:{b64_digest('sha256')}", None),
    ],
)
async def test_ebox_requires_a_sha2_digest_of_every_attachment(
    sandbox: str,
    recorder: Recorder,
    http: httpx.AsyncClient,
    hub_settings: HubSettings,
    ticket: str,
    digest: str | None,
    fault: str | None,
) -> None:
    envelope = signed_publication(hub_settings, ticket, digest)
    body, content_type = soap_with_attachment(
        etree.tostring(envelope), "letter@hub", ebox.PDF, "application/pdf"
    )

    answer = await http.post(
        f"{sandbox}/ebox/soap/EboxMessage", content=body, headers={"Content-Type": content_type}
    )

    if fault is None:
        assert answer.status_code == 200, answer.text
        assert [r.summary["ticket"] for r in recorder.receptions("ebox_soap")] == [ticket]
        return
    code, reason, _ = ebox.fault_of(answer.content)
    assert (answer.status_code, code) == (500, "soapenv:Client")
    assert fault in reason
    assert recorder.receptions("ebox_soap") == []
