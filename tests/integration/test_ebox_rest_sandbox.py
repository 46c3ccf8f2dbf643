"""The real e-Box REST connector against the real sandbox, over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft4Validator

from contracts.envelope import new_event
from contracts.events.courrier import OutgoingMailSendRequested, Recipient
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.ebox_rest import EboxRestConnector, create_connector
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.ebox_rest import PUBLICATION_CONTRACT, SwaggerContract, load_recipients_without_ebox
from sandbox.recorder import Recorder
from tests.support.servers import serving

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.7\n% a letter from the commune\n%%EOF\n"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PERSON_WITH_EBOX = "85073003328"
ENTERPRISE_WITH_EBOX = "0406798006"
ANOTHER_PERSON_WITH_EBOX = "75122412340"
FIXTURE = load_recipients_without_ebox()
PERSON_WITHOUT_EBOX = next(r.value for r in FIXTURE if r.ebox_type == "citizen")
ENTERPRISE_WITHOUT_EBOX = next(r.value for r in FIXTURE if r.ebox_type == "enterprise")


@pytest.fixture
async def sandbox(corpus: Path, hub_settings: HubSettings) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, Recorder())) as url:
        yield url


def connector_for(
    sandbox: str, http: httpx.AsyncClient, tenant: str = "62063", **overrides: Any
) -> EboxRestConnector:
    config = {
        "type": "ebox_rest",
        "base_url": f"{sandbox}/ebox/rest",
        "token_url": f"{sandbox}/ebox/oauth2/token",
        "client_id": f"hub-{tenant}",
        "client_secret": f"sandbox-secret-{tenant}",
        "sender_organization_id": "0207362739",
    } | overrides
    connector = create_connector(ConnectorContext(tenant, HubSettings(), http), config)
    assert isinstance(connector, EboxRestConnector)
    return connector


@pytest.fixture
def connector(sandbox: str, http: httpx.AsyncClient) -> EboxRestConnector:
    return connector_for(sandbox, http)


def delivery(
    kind: str = "person",
    identifier: str = PERSON_WITH_EBOX,
    key: str = "event-1:outgoing-mail-ebox",
    tenant: str = "62063",
) -> Delivery:
    letter = OutgoingMailSendRequested(
        mail_id="mail-1",
        registration_number="S2026/000123",
        recipient=Recipient(kind=kind, identifier=identifier),  # type: ignore[arg-type]
        subject="Votre permis d'urbanisme",
        body_pdf_base64=base64.b64encode(PDF).decode(),
        body_pdf_md5=hashlib.md5(PDF).hexdigest(),
    )
    event = new_event(letter, tenant=tenant, subject="mail-1", source="courrier")
    return Delivery(
        idempotency_key=key,
        tenant=tenant,
        route="outgoing-mail-ebox",
        event=event,
        attempt=1,
        trace_headers={"traceparent": TRACEPARENT},
    )


async def received(http: httpx.AsyncClient, sandbox: str) -> list[dict[str, Any]]:
    answer = await http.get(f"{sandbox}/_sandbox/received", params={"service": "ebox_rest"})
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def contract_validator(corpus: Path, definition: str) -> Draft4Validator:
    return SwaggerContract(corpus / PUBLICATION_CONTRACT).validator(definition)


# -- publication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "identifier", "shown_as"),
    [
        ("person", PERSON_WITH_EBOX, "85*********"),  # a national number is masked
        ("enterprise", ENTERPRISE_WITH_EBOX, ENTERPRISE_WITH_EBOX),  # public register
    ],
)
async def test_a_publication_succeeds_and_returns_the_message_id(
    sandbox: str,
    http: httpx.AsyncClient,
    connector: EboxRestConnector,
    corpus: Path,
    kind: str,
    identifier: str,
    shown_as: str,
) -> None:
    result = await connector.deliver(delivery(kind, identifier))

    [reception] = await received(http, sandbox)
    contract_validator(corpus, "PublicationStatusMessage").validate(reception["answer"])
    assert reception["answer"]["messageId"] == result.external_reference
    assert reception["idempotency_key"] == "event-1:outgoing-mail-ebox"
    assert reception["tenant"] == "62063"
    assert reception["traceparent"] == TRACEPARENT
    assert reception["summary"]["recipient_kind"] == kind
    assert reception["summary"]["recipient"] == shown_as
    assert reception["summary"]["subject"] == "Votre permis d'urbanisme"


async def test_the_token_carries_the_tenant(sandbox: str, http: httpx.AsyncClient) -> None:
    await connector_for(sandbox, http, tenant="92137").deliver(delivery(tenant="92137"))

    [reception] = await received(http, sandbox)
    assert reception["tenant"] == "92137"


async def test_the_same_idempotency_key_twice_publishes_once(
    sandbox: str, http: httpx.AsyncClient, connector: EboxRestConnector
) -> None:
    first = await connector.deliver(delivery())
    again = await connector.deliver(delivery())
    other = await connector.deliver(delivery(key="event-2:outgoing-mail-ebox"))

    assert again.external_reference == first.external_reference
    assert other.external_reference != first.external_reference
    arrivals = {r["idempotency_key"]: r["arrivals"] for r in await received(http, sandbox)}
    assert arrivals == {"event-1:outgoing-mail-ebox": 2, "event-2:outgoing-mail-ebox": 1}


async def test_an_idempotency_key_reused_for_another_message_is_refused(
    sandbox: str, http: httpx.AsyncClient, connector: EboxRestConnector
) -> None:
    await connector.deliver(delivery())

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(identifier=ANOTHER_PERSON_WITH_EBOX))

    assert "IDEMPOTENCY_KEY_REUSED" in str(raised.value)
    assert len(await received(http, sandbox)) == 1


@pytest.mark.parametrize(
    ("kind", "identifier"),
    [("person", PERSON_WITHOUT_EBOX), ("enterprise", ENTERPRISE_WITHOUT_EBOX)],
)
async def test_a_recipient_without_digital_ebox_fails_permanently(
    sandbox: str, http: httpx.AsyncClient, connector: EboxRestConnector, kind: str, identifier: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(kind, identifier))

    assert "recipient has no digital e-Box" in str(raised.value)
    assert await received(http, sandbox) == []


# -- contract violations ----------------------------------------------------------------------


async def token(http: httpx.AsyncClient, sandbox: str, tenant: str = "62063") -> str:
    answer = await http.post(
        f"{sandbox}/ebox/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": f"hub-{tenant}",
            "client_secret": f"sandbox-secret-{tenant}",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] == "Bearer"
    assert answer.json()["expires_in"] > 0
    value: str = answer.json()["access_token"]
    return value


def digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).decode().rstrip("=")


def valid_message() -> dict[str, Any]:
    return {
        "recipient": {"eboxType": "citizen", "eboxIdValue": PERSON_WITH_EBOX},
        "subject": {"fr": "Votre permis"},
        "bodyMainContent": False,
        "replyAuthorized": False,
        "attachments": [
            {
                "httpPartName": "upfile1",
                "mainContent": True,
                "digest": {"digestMethod": "sha_256", "digestValue": digest(PDF)},
            }
        ],
    }


Parts = list[tuple[str, tuple[str | None, bytes, str]]]


def parts(message: dict[str, Any] | bytes, *files: tuple[str, bytes, str]) -> Parts:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return [("messageToPublish", (None, body, "application/json"))] + [
        (name, (f"{name}.bin", content, media_type)) for name, content, media_type in files
    ]


LETTER = ("upfile1", PDF, "application/pdf")


def changed(change: dict[str, Any]) -> dict[str, Any]:
    return valid_message() | change


def attachment(**change: Any) -> dict[str, Any]:
    return {"attachments": [valid_message()["attachments"][0] | change]}


VIOLATIONS: dict[str, tuple[Parts, str]] = {
    "missing-subject": (
        parts({k: v for k, v in valid_message().items() if k != "subject"}, LETTER),
        "messageToPublish: 'subject' is a required property",
    ),
    "misspelt-field": (
        parts(changed({"subjet": {"fr": "x"}}), LETTER),
        "'subjet' was unexpected",
    ),
    "unknown-ebox-type": (
        parts(changed({"recipient": {"eboxType": "person", "eboxIdValue": "85073003328"}}), LETTER),
        "recipient.eboxType: 'person' is not one of ['enterprise', 'citizen']",
    ),
    "niss-check-digits": (
        parts(
            changed({"recipient": {"eboxType": "citizen", "eboxIdValue": "85073003329"}}), LETTER
        ),
        "recipient.eboxIdValue: this national number (NISS) fails its modulo-97 check",
    ),
    "niss-punctuation": (
        parts(
            changed({"recipient": {"eboxType": "citizen", "eboxIdValue": "85.07.30-033.28"}}),
            LETTER,
        ),
        "recipient.eboxIdValue: a national number (NISS) is written as 11 digits",
    ),
    "enterprise-number": (
        parts(
            changed({"recipient": {"eboxType": "enterprise", "eboxIdValue": "0406798007"}}), LETTER
        ),
        "recipient.eboxIdValue: this enterprise number (BCE/KBO) fails its modulo-97 check",
    ),
    "sender-organization": (
        parts(changed({"senderOrganizationId": "x0207362739x"}), LETTER),
        "senderOrganizationId: an enterprise number is written as 10 digits",
    ),
    "empty-subject": (
        parts(changed({"subject": {"fr": " "}}), LETTER),
        "subject: give the subject's text",
    ),
    "expiration-date": (
        parts(changed({"expirationDate": "next year"}), LETTER),
        "expirationDate: 'next year' is not a 'date-time'",
    ),
    # ISO 8601 forms Python's fromisoformat takes, but not the contract's.
    **{
        f"expiration-date-{name}": (
            parts(changed({"expirationDate": value}), LETTER),
            f"expirationDate: {value!r} is not a 'date-time' (the contract's form is"
            " yyyy-MM-dd'T'HH:mm:ssXXX)",
        )
        for name, value in {
            "week-date": "2026-W53-4T23:59:59+01:00",
            "basic-format": "20261231T235959+0100",
            "hour-only": "2026-12-31T23+01:00",
            "fraction-lower-t": "2026-12-31t23:59:59.5+01:00",
        }.items()
    },
    "expiration-date-calendar": (
        parts(changed({"expirationDate": "2026-02-30T12:00:00Z"}), LETTER),
        "expirationDate: '2026-02-30T12:00:00Z' is not a 'date-time' (day is out of range",
    ),
    "no-main-content": (
        parts(changed(attachment(mainContent=False)), LETTER),
        "the message has no main content",
    ),
    "not-a-pdf": (
        parts(valid_message(), ("upfile1", b"<html>letter</html>", "application/pdf")),
        "part 'upfile1' is declared application/pdf but is not a PDF",
    ),
    "media-type": (
        parts(
            changed(
                attachment(digest={"digestMethod": "sha_256", "digestValue": digest(b"GIF89a")})
            ),
            ("upfile1", b"GIF89a", "image/gif"),
        ),
        "part 'upfile1': media type 'image/gif' is not one the e-Box accepts",
    ),
    "digest": (
        parts(
            changed(attachment(digest={"digestMethod": "sha_256", "digestValue": digest(b"x")})),
            LETTER,
        ),
        "attachments.0.digest: the sha_256 digest does not match part 'upfile1'",
    ),
    "digest-method": (
        parts(changed(attachment(digest={"digestMethod": "md5", "digestValue": "x"})), LETTER),
        "attachments.0.digest.digestMethod: 'md5' is not one of ['sha_256']",
    ),
    "missing-part": (
        parts(valid_message()),
        "attachments.0.httpPartName: the request has no file part 'upfile1'",
    ),
    "unnamed-part": (
        parts(valid_message(), LETTER, ("upfile2", PDF, "application/pdf")),
        "part 'upfile2' is sent but no attachment names it",
    ),
    "not-json": (parts(b"{recipient: citizen}", LETTER), "messageToPublish is not valid JSON"),
    "no-json-part": (
        [("upfile1", ("letter.pdf", PDF, "application/pdf"))],
        "the messageToPublish part (the message's JSON) is missing",
    ),
}


async def test_a_valid_request_is_accepted(sandbox: str, http: httpx.AsyncClient) -> None:
    # The baseline every violation below departs from.
    answer = await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        files=parts(valid_message(), LETTER),
        headers={"Authorization": f"Bearer {await token(http, sandbox)}"},
    )

    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("expiration", ["2026-12-31T23:59:59+01:00", "2026-12-31T22:59:59Z"])
async def test_an_expiration_date_in_the_contracts_form_is_accepted_and_echoed(
    sandbox: str, http: httpx.AsyncClient, expiration: str
) -> None:
    answer = await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        files=parts(changed({"expirationDate": expiration}), LETTER),
        headers={"Authorization": f"Bearer {await token(http, sandbox)}"},
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["expirationDate"] == expiration


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_contract_violations_are_refused_with_clear_errors(
    sandbox: str, http: httpx.AsyncClient, corpus: Path, name: str
) -> None:
    request_parts, expected = VIOLATIONS[name]

    answer = await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        files=request_parts,
        headers={"Authorization": f"Bearer {await token(http, sandbox)}", "Idempotency-Key": name},
    )

    assert answer.status_code == 400
    contract_validator(corpus, "StatusMessage").validate(answer.json())
    assert answer.json()["code"] == "INVALID_DATA"
    assert expected in answer.json()["message"]
    assert await received(http, sandbox) == []


async def test_a_form_that_is_not_multipart_is_refused(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    answer = await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        json=valid_message(),
        headers={"Authorization": f"Bearer {await token(http, sandbox)}"},
    )

    assert answer.status_code == 400
    assert "multipart/form-data" in answer.json()["message"]


# -- authorization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer forged-token", "Basic aHViLTYyMDYzOnNhbmRib3g="]
)
async def test_a_missing_or_bad_token_is_refused(
    sandbox: str, http: httpx.AsyncClient, corpus: Path, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    answer = await http.post(
        f"{sandbox}/ebox/rest/publishMessage", files=parts(valid_message(), LETTER), headers=headers
    )

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    contract_validator(corpus, "StatusMessage").validate(answer.json())
    assert answer.json()["code"] == "INVALID_TOKEN"
    assert await received(http, sandbox) == []


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "hub-62063", "client_secret": "wrong"}, 401, "invalid_client"),
        (
            {"client_id": "hub-92137", "client_secret": "sandbox-secret-62063"},
            401,
            "invalid_client",
        ),
        ({"client_id": "62063", "client_secret": "sandbox-secret-62063"}, 401, "invalid_client"),
        (
            {"grant_type": "password", "client_id": "hub-62063", "client_secret": "x"},
            400,
            "unsupported_grant_type",
        ),
    ],
)
async def test_the_token_endpoint_checks_the_client(
    sandbox: str, http: httpx.AsyncClient, form: dict[str, str], status: int, error: str
) -> None:
    answer = await http.post(
        f"{sandbox}/ebox/oauth2/token", data={"grant_type": "client_credentials"} | form
    )

    assert answer.status_code == status
    assert answer.json()["error"] == error


async def test_wrong_credentials_hold_the_delivery_until_they_are_fixed(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = connector_for(sandbox, http, client_secret="not-the-secret")

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector.deliver(delivery())

    assert "refused the hub's client credentials (invalid_client)" in str(raised.value)


# -- faults ---------------------------------------------------------------------------------


async def test_injected_errors_are_retryable_and_publish_nothing(
    sandbox: str, http: httpx.AsyncClient, connector: EboxRestConnector
) -> None:
    faults = f"{sandbox}/_sandbox/faults/ebox_rest"
    assert (await http.put(faults, json={"error_rate": 1.0})).status_code == 200

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector.deliver(delivery())
    assert "HTTP 503" in str(raised.value)
    assert await received(http, sandbox) == []

    await http.put(faults, json={"error_rate": 0.0})
    result = await connector.deliver(delivery())
    assert [r["answer"]["messageId"] for r in await received(http, sandbox)] == [
        result.external_reference
    ]


async def test_an_injected_hang_is_a_retryable_timeout(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = connector_for(sandbox, http, timeout_seconds=0.3)
    await http.put(
        f"{sandbox}/_sandbox/faults/ebox_rest", json={"timeout_rate": 1.0, "timeout_seconds": 1.0}
    )

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector.deliver(delivery())

    assert "timed out" in str(raised.value)


# -- federation -----------------------------------------------------------------------------


async def test_the_federation_tells_who_has_a_digital_ebox(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    search = f"{sandbox}/ebox/federation/v1/eboxPreferences/search"
    body = {
        "eboxType": "CITIZEN",
        "eboxIdType": "INSS",
        "eboxIdValueList": [PERSON_WITH_EBOX, PERSON_WITHOUT_EBOX],
    }
    headers = {"Authorization": f"Bearer {await token(http, sandbox)}"}

    answer = await http.post(search, json=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == [
        {
            "eboxId": {"eboxType": "CITIZEN", "eboxIdValue": PERSON_WITH_EBOX},
            "exclusivelyEbox": False,
        }
    ]

    invalid = await http.post(
        search, json=body | {"eboxIdValueList": ["85073003329"]}, headers=headers
    )
    assert invalid.status_code == 400
    assert "eboxIdValueList.0: this national number (NISS)" in invalid.json()["message"]

    assert (await http.post(search, json=body)).status_code == 401
