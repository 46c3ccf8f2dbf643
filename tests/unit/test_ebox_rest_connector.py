"""The e-Box REST connector against a fake e-Box (httpx.MockTransport): no network."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.courrier import (
    IncomingMailRegistered,
    OutgoingMailSendRequested,
    Recipient,
)
from gateway.connectors.base import ConnectorContext, Delivery, connector_types
from gateway.connectors.ebox_rest import (
    EboxRestConnector,
    EboxRestSettings,
    create_connector,
)
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from gateway.routing import load_routing
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.tenants import load_tenants
from tests.unit.test_routing import BUILT_IN_TYPES

PDF = b"%PDF-1.7\n% a letter from the commune\n%%EOF\n"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PERSON = "85073003328"
ENTERPRISE = "0406798006"

Answer = httpx.Response | Exception


class FakeEbox:
    """Token endpoint and /publishMessage; publication answers can be scripted in order."""

    def __init__(self, *, expires_in: int | str = 3600, token_delay: float = 0.0) -> None:
        self.expires_in = expires_in
        self.token_delay = token_delay
        self.token_requests: list[dict[str, str]] = []
        self.publications: list[httpx.Request] = []
        self.answers: list[Answer] = []
        self.rejected_tokens: set[str] = set()
        self.token_answer: httpx.Response | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            self.token_requests.append(dict(parse_qsl(request.content.decode())))
            await asyncio.sleep(self.token_delay)  # lets concurrent deliveries interleave
            if self.token_answer is not None:
                return self.token_answer
            return httpx.Response(
                200,
                json={
                    "access_token": f"token-{len(self.token_requests)}",
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                },
            )
        assert request.url.path == "/rest/publishMessage"
        self.publications.append(request)
        if request.headers["Authorization"].removeprefix("Bearer ") in self.rejected_tokens:
            return status_message(401, "INVALID_TOKEN", "expired")
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx.Response(
            201,
            json={
                "messageId": f"msg-{len(self.publications)}",
                "expirationDate": "2027-01-01T00:00:00+00:00",
            },
        )


def status_message(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"id": "5f0c4e0e-1111-4a4a-9c9c-000000000000", "code": code, "message": message},
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> EboxRestSettings:
    config: dict[str, Any] = {
        "type": "ebox_rest",
        "base_url": "https://ebox.test/rest/",
        "token_url": "https://ebox.test/oauth2/token",
        "client_id": "hub-62063",
        "client_secret": "s3cret",
        "scope": "scope:ebox:publication",
        "sender_organization_id": "0207.362.739",
        "message_type_id": "COMMUNE_LETTER",
    }
    return EboxRestSettings.model_validate(config | overrides)


@pytest.fixture
def ebox() -> FakeEbox:
    return FakeEbox()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def connector(ebox: FakeEbox, clock: FakeClock) -> AsyncIterator[EboxRestConnector]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(ebox.handle)) as http:
        yield EboxRestConnector(settings(), http, clock=clock)


def letter_event(
    *,
    kind: str = "person",
    identifier: str = PERSON,
    pdf: bytes = PDF,
    md5: str | None = None,
) -> OutgoingMailSendRequested:
    return OutgoingMailSendRequested(
        mail_id="mail-1",
        registration_number="S2026/000123",
        recipient=Recipient(kind=kind, identifier=identifier),  # type: ignore[arg-type]
        subject="Votre permis d'urbanisme",
        body_pdf_base64=base64.b64encode(pdf).decode(),
        body_pdf_md5=md5 or hashlib.md5(pdf).hexdigest(),
    )


def delivery(data: Any = None, key: str = "event-1:outgoing-mail-ebox") -> Delivery:
    event = new_event(data or letter_event(), tenant="62063", subject="mail-1", source="courrier")
    return Delivery(
        idempotency_key=key,
        tenant="62063",
        route="outgoing-mail-ebox",
        event=event,
        attempt=1,
        trace_headers={"traceparent": TRACEPARENT},
    )


def parts_of(request: httpx.Request) -> dict[str, tuple[str, bytes]]:
    """The multipart parts of a request: name -> (content type, content)."""
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content, policy=email.policy.HTTP)
    parts = {}
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        parts[name] = (part.get_content_type(), content)
    return parts


@pytest.mark.parametrize(
    ("kind", "identifier", "ebox_type", "ebox_id"),
    [
        ("person", "85.07.30-033.28", "citizen", PERSON),
        ("enterprise", "BE 0406.798.006", "enterprise", ENTERPRISE),
    ],
)
async def test_publishes_the_letter_as_the_contract_describes(
    connector: EboxRestConnector,
    ebox: FakeEbox,
    kind: str,
    identifier: str,
    ebox_type: str,
    ebox_id: str,
) -> None:
    result = await connector.deliver(delivery(letter_event(kind=kind, identifier=identifier)))

    assert result.external_reference == "msg-1"
    assert ebox.token_requests == [
        {
            "grant_type": "client_credentials",
            "client_id": "hub-62063",
            "client_secret": "s3cret",
            "scope": "scope:ebox:publication",
        }
    ]
    [request] = ebox.publications
    assert request.headers["Authorization"] == "Bearer token-1"
    assert request.headers["Idempotency-Key"] == "event-1:outgoing-mail-ebox"
    assert request.headers["traceparent"] == TRACEPARENT
    parts = parts_of(request)
    assert set(parts) == {"messageToPublish", "upfile1"}
    assert parts["upfile1"] == ("application/pdf", PDF)
    message = json.loads(parts["messageToPublish"][1])
    digest = base64.urlsafe_b64encode(hashlib.sha256(PDF).digest()).decode().rstrip("=")
    assert message == {
        "recipient": {"eboxType": ebox_type, "eboxIdValue": ebox_id},
        "subject": {"fr": "Votre permis d'urbanisme"},
        "senderOrganizationId": "0207362739",
        "messageTypeId": "COMMUNE_LETTER",
        "bodyMainContent": False,
        "replyAuthorized": False,
        # The delivery key, which the real service does not deduplicate by: a second copy
        # after a lost answer is recognisable.
        "businessDataList": [
            {"key": "hubDeliveryKey", "values": [{"fr": "event-1:outgoing-mail-ebox"}]}
        ],
        "attachments": [
            {
                "httpPartName": "upfile1",
                "mainContent": True,
                "attachmentTitle": {"fr": "Votre permis d'urbanisme"},
                "digest": {"digestMethod": "sha_256", "digestValue": digest},
            }
        ],
    }


async def test_a_retry_sends_the_same_idempotency_key(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.answers = [httpx.ReadTimeout("lost answer")]
    with pytest.raises(RetryableDeliveryError):
        await connector.deliver(delivery())
    await connector.deliver(delivery())

    keys = [request.headers["Idempotency-Key"] for request in ebox.publications]
    assert keys == ["event-1:outgoing-mail-ebox"] * 2


async def test_the_token_is_fetched_once_and_reused(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    for number in range(3):
        await connector.deliver(delivery(key=f"event-{number}:route"))

    assert len(ebox.token_requests) == 1
    assert {request.headers["Authorization"] for request in ebox.publications} == {"Bearer token-1"}


async def test_concurrent_deliveries_share_one_token_request(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.token_delay = 0.05

    await asyncio.gather(*(connector.deliver(delivery(key=f"event-{n}:r")) for n in range(10)))

    assert len(ebox.token_requests) == 1
    assert len(ebox.publications) == 10


async def test_the_token_is_renewed_shortly_before_it_expires(
    connector: EboxRestConnector, ebox: FakeEbox, clock: FakeClock
) -> None:
    ebox.expires_in = 300
    await connector.deliver(delivery(key="event-1:r"))

    clock.now += 260  # 40 s left: still good
    await connector.deliver(delivery(key="event-2:r"))
    assert len(ebox.token_requests) == 1

    clock.now += 15  # 25 s left: inside the renewal margin
    await connector.deliver(delivery(key="event-3:r"))
    assert len(ebox.token_requests) == 2
    assert ebox.publications[-1].headers["Authorization"] == "Bearer token-2"


async def test_a_token_given_for_seconds_in_text_or_briefly_is_used_for_its_life(
    connector: EboxRestConnector, ebox: FakeEbox, clock: FakeClock
) -> None:
    ebox.expires_in = "20"  # digits in a string, as some identity providers send, and short
    await connector.deliver(delivery(key="event-1:r"))
    clock.now += 5
    await connector.deliver(delivery(key="event-2:r"))
    assert len(ebox.token_requests) == 1  # not fetched again for every letter
    clock.now += 6  # past half its life
    await connector.deliver(delivery(key="event-3:r"))
    assert len(ebox.token_requests) == 2


async def test_a_401_fetches_a_new_token_and_tries_once_more(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.rejected_tokens = {"token-1"}

    result = await connector.deliver(delivery())

    assert result.external_reference == "msg-2"
    assert len(ebox.token_requests) == 2
    assert [r.headers["Authorization"] for r in ebox.publications] == [
        "Bearer token-1",
        "Bearer token-2",
    ]


async def test_a_second_401_is_retried_later_while_the_credentials_are_fixed(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.rejected_tokens = {"token-1", "token-2"}

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector.deliver(delivery())

    assert "HTTP 401" in str(raised.value)
    assert len(ebox.publications) == 2


async def test_no_digital_user_is_permanent_and_says_so_plainly(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.answers = [status_message(400, "NO_DIGITAL_USER", "The citizen 85********* has none")]

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery())

    reason = raised.value.reason
    assert "recipient has no digital e-Box" in reason
    assert "by post" in reason


async def test_a_refused_message_is_permanent_with_the_eboxs_explanation(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.answers = [status_message(400, "INVALID_DATA", "subject: 'subject' is required")]

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery())

    assert "INVALID_DATA: subject: 'subject' is required" in str(raised.value)


@pytest.mark.parametrize(
    "answer",
    [
        status_message(503, "SERVICE_UNAVAILABLE", "maintenance"),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(429, text="slow down"),
        httpx.ReadTimeout("no answer in time"),
        httpx.ConnectError("connection refused"),
        httpx.Response(201, json={"expirationDate": "2027-01-01T00:00:00+00:00"}),
    ],
    ids=["503", "502", "429", "timeout", "unreachable", "201-without-message-id"],
)
async def test_transient_failures_are_retryable(
    connector: EboxRestConnector, ebox: FakeEbox, answer: Answer
) -> None:
    ebox.answers = [answer]

    with pytest.raises(RetryableDeliveryError):
        await connector.deliver(delivery())


async def test_the_token_endpoint_refusing_the_credentials_is_retried_while_they_are_fixed(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.token_answer = httpx.Response(401, json={"error": "invalid_client"})

    with pytest.raises(RetryableDeliveryError) as raised:
        await connector.deliver(delivery())

    assert "invalid_client" in str(raised.value)
    assert ebox.publications == []


async def test_the_token_endpoint_failing_is_retryable(
    connector: EboxRestConnector, ebox: FakeEbox
) -> None:
    ebox.token_answer = httpx.Response(503, text="down")

    with pytest.raises(RetryableDeliveryError):
        await connector.deliver(delivery())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (letter_event(md5="0" * 32), "does not match its MD5"),
        (letter_event(pdf=b"plain text"), "not a PDF"),
        (letter_event(identifier="85073003329"), "modulo-97"),
        (letter_event(kind="enterprise", identifier="123"), "10 digits"),
    ],
    ids=["md5", "not-pdf", "niss-check", "enterprise-length"],
)
async def test_a_bad_letter_is_refused_before_anything_is_sent(
    connector: EboxRestConnector, ebox: FakeEbox, data: OutgoingMailSendRequested, expected: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(data))

    assert expected in str(raised.value)
    assert ebox.token_requests == [] and ebox.publications == []


async def test_other_event_types_are_refused(connector: EboxRestConnector) -> None:
    incoming = IncomingMailRegistered(
        mail_id="m",
        registration_number="E2026/000001",
        received_on="2026-01-05",  # type: ignore[arg-type]
        sender="x",
        subject="y",
    )

    with pytest.raises(PermanentDeliveryError) as raised:
        await connector.deliver(delivery(incoming))

    assert OutgoingMailSendRequested.TYPE in str(raised.value)


async def test_the_type_is_registered_and_reads_the_committed_tenant_file() -> None:
    tenants = load_tenants(REPOSITORY_ROOT / "config" / "tenants")
    table = load_routing(tenants, BUILT_IN_TYPES, environ={})
    config = table.connector_settings[("62063", "ebox")]
    async with httpx.AsyncClient() as http:
        context = ConnectorContext("62063", HubSettings(), http)
        built = connector_types()["ebox_rest"](context, config)

        assert isinstance(built, EboxRestConnector)
        assert built.settings.client_id == "hub-62063"
        with pytest.raises(ValueError) as raised:
            create_connector(context, {k: v for k, v in config.items() if k != "token_url"})
        assert str(raised.value) == "tenant 62063: ebox_rest settings: token_url: Field required"
