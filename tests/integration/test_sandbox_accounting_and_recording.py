"""The accounting sandboxes and what the recorder shows, over HTTP on 127.0.0.1 and in the drop
directory Stésud watches: a reset gives a fresh sandbox, Stésud answers within its own schema
and goes on past what it cannot read, a body nested too deep is refused, and only the repeats of
a key's first message count as its arrivals."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree

from contracts.envelope import CloudEvent
from contracts.events.factures import InvoiceApproved
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.inforius import create_connector as create_inforius
from gateway.connectors.ksz_bcss import Identification, ssdn_request
from gateway.connectors.peppol_ap import create_connector as create_peppol_ap
from gateway.connectors.stesud import StesudConnector, file_name
from gateway.connectors.stesud import create_connector as create_stesud
from gateway.errors import PermanentDeliveryError, RetryableDeliveryError
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.recorder import Recorder
from sandbox.stesud import FALLBACK_REASON, SCHEMA_PATH, StesudSandbox
from tests.integration.test_accounting_sandbox import KEY, delivery, received
from tests.integration.test_sandbox_review_fixes import token as ebox_token
from tests.support.gateway_hub import eventually
from tests.support.invoices import approved_invoice, invoice_response_requested
from tests.support.servers import serving

pytestmark = pytest.mark.integration

ACKNOWLEDGEMENT_SCHEMA = etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))


@pytest.fixture
async def sandbox(corpus: Path, hub_settings: HubSettings) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, Recorder())) as url:
        yield url


# -- Inforius ---------------------------------------------------------------------------------

INFORIUS = "/inforius/api/v2/purchase-invoices"


def inforius_body(sandbox: str, http: httpx.AsyncClient, **invoice: Any) -> dict[str, Any]:
    connector = create_inforius(
        ConnectorContext("62063", HubSettings(), http),
        {
            "type": "inforius",
            "base_url": f"{sandbox}/inforius/api/v2",
            "api_key": "sandbox-inforius-62063",
        },
    )
    body: dict[str, Any] = connector.purchase_invoice(approved_invoice(**invoice).data)  # type: ignore[arg-type]
    return body


async def book(
    http: httpx.AsyncClient, sandbox: str, body: dict[str, Any], key: str
) -> httpx.Response:
    return await http.post(
        sandbox + INFORIUS,
        json=body,
        headers={"X-API-Key": "sandbox-inforius-62063", "Idempotency-Key": key},
    )


async def test_after_a_reset_inforius_books_a_retried_key_afresh_not_as_a_duplicate(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    body = inforius_body(sandbox, http)
    first = await book(http, sandbox, body, KEY)

    assert (await http.delete(f"{sandbox}/_sandbox/received")).status_code == 204
    # The retry after a lost answer: the recorder forgot the key, so must the bookings.
    retried = await book(http, sandbox, body, KEY)

    assert first.status_code == 201
    assert retried.status_code == 201, retried.text
    # Booked afresh, under a reference never given before the reset either.
    assert retried.json()["bookingReference"] != first.json()["bookingReference"]
    [reception] = await received(http, sandbox, "inforius")
    assert (reception["arrivals"], reception["answer"]) == (1, retried.json())


async def test_inforius_refuses_an_idempotency_key_longer_than_its_contract_allows(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    body = inforius_body(sandbox, http)

    too_long = await book(http, sandbox, body, "k" * 201)
    longest = await book(http, sandbox, body, "k" * 200)

    assert too_long.status_code == 400
    assert too_long.headers["content-type"] == "application/problem+json"
    assert too_long.json()["code"] == "INVALID_REQUEST"
    assert "201 characters: the contract allows 1 to 200" in too_long.json()["detail"]
    assert longest.status_code == 201
    assert [r["idempotency_key"] for r in await received(http, sandbox, "inforius")] == ["k" * 200]


# -- Stésud -----------------------------------------------------------------------------------


def stesud_connector(
    drop_dir: Path, http: httpx.AsyncClient, hub_settings: HubSettings
) -> StesudConnector:
    return create_stesud(
        ConnectorContext("92137", hub_settings, http), {"type": "stesud", "drop_dir": str(drop_dir)}
    )


def invoice_file(connector: StesudConnector, **invoice: Any) -> bytes:
    approved = approved_invoice(tenant="92137", **invoice).data_as(InvoiceApproved)
    return connector.purchase_invoice(approved)


def put(drop_dir: Path, name: str, content: bytes, administration: str = "92137") -> Path:
    incoming = drop_dir / administration / "in"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / name).write_bytes(content)
    return drop_dir / administration / "out" / name.replace(".xml", ".ack.xml")


def acknowledged(path: Path) -> etree._Element:
    """The acknowledgement at ``path``, which must be valid against Stésud's own schema."""
    root = etree.fromstring(path.read_bytes())
    assert ACKNOWLEDGEMENT_SCHEMA.validate(root), ACKNOWLEDGEMENT_SCHEMA.error_log
    return root


def reason_of(acknowledgement: etree._Element) -> tuple[str | None, str]:
    reason = acknowledgement.find("{urn:hub:vendors:stesud:exchange:1}Reason")
    assert reason is not None
    return reason.get("code"), reason.text or ""


async def stesud_outcome(connector: StesudConnector, event: CloudEvent, key: str) -> str:
    """Deliver until the sandbox's Stésud answers: the reference, or the rejection's reason."""

    async def attempt() -> str | None:
        try:
            return (await connector.deliver(delivery(event, key))).external_reference
        except RetryableDeliveryError:
            return None
        except PermanentDeliveryError as exc:
            return exc.reason

    outcome = await eventually(attempt, timeout=10)
    assert outcome is not None, "the sandbox's Stésud never acknowledged the file"
    return outcome


async def test_stesud_counts_a_second_copy_of_an_acknowledged_file_as_an_arrival(
    tmp_path: Path, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    recorder = Recorder()
    stesud = StesudSandbox(tmp_path, recorder)
    content = invoice_file(stesud_connector(tmp_path, http, hub_settings))
    acknowledgement = put(tmp_path, "HUB-a.xml", content)
    await stesud.process_pending()
    first = acknowledgement.read_bytes()

    put(tmp_path, "HUB-a.xml", content)  # the hub wrote the same file twice: its bug to see
    await stesud.process_pending()

    [reception] = recorder.receptions("stesud")
    assert reception.arrivals == 2
    assert reception.answer["status"] == "BOOKED"
    assert acknowledgement.read_bytes() == first  # answered once
    assert list((tmp_path / "92137" / "in").iterdir()) == []


async def test_after_a_reset_stesud_books_the_invoice_again_not_as_a_duplicate(
    sandbox: str, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    connector = stesud_connector(hub_settings.var_dir / "stesud", http, hub_settings)
    event = approved_invoice(tenant="92137")
    before = await stesud_outcome(connector, event, "before-the-reset")

    assert (await http.delete(f"{sandbox}/_sandbox/received")).status_code == 204
    after = await stesud_outcome(connector, event, "after-the-reset")

    assert before.startswith("STS-92137-")
    assert after.startswith("STS-92137-"), after  # not "DUPLICATE_INVOICE"
    assert after != before
    [reception] = await received(http, sandbox, "stesud")
    assert reception["idempotency_key"] == file_name("after-the-reset")


async def test_stesud_acknowledges_a_long_parse_error_within_its_schema_and_for_good(
    tmp_path: Path, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    stesud = StesudSandbox(tmp_path, Recorder())
    connector = stesud_connector(tmp_path, http, hub_settings)
    acknowledgement = put(tmp_path, file_name(KEY), b"<" + b"a" * 700 + b"></b>")

    await stesud.process_pending()

    code, reason = reason_of(acknowledged(acknowledgement))
    assert code == "INVALID_FILE"
    assert len(reason) == 500 and reason.endswith("…")
    # A refusal the connector can read: final, not retried until the delivery is dead.
    with pytest.raises(PermanentDeliveryError, match="INVALID_FILE: not well-formed XML"):
        await connector.deliver(delivery(approved_invoice(tenant="92137")))


async def test_stesud_cuts_a_duplicate_reason_that_names_a_long_invoice_number(
    tmp_path: Path, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    stesud = StesudSandbox(tmp_path, Recorder())
    content = invoice_file(stesud_connector(tmp_path, http, hub_settings), number="N" * 490)
    put(tmp_path, "HUB-a.xml", content)
    duplicate = put(tmp_path, "HUB-b.xml", content)

    await stesud.process_pending()

    code, reason = reason_of(acknowledged(duplicate))
    assert code == "DUPLICATE_INVOICE"
    assert reason.startswith("invoice NNN") and len(reason) == 500


async def test_stesud_falls_back_to_a_fixed_reason_when_its_own_would_break_the_schema(
    tmp_path: Path, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    recorder = Recorder()
    stesud = StesudSandbox(tmp_path, recorder)
    content = invoice_file(stesud_connector(tmp_path, http, hub_settings))
    # WRONG_ADMINISTRATION names the directory, whose name carries a character XML cannot.
    acknowledgement = put(tmp_path, "HUB-a.xml", content, administration="92\x01137")

    await stesud.process_pending()

    assert reason_of(acknowledged(acknowledgement)) == ("WRONG_ADMINISTRATION", FALLBACK_REASON)
    [reception] = recorder.receptions("stesud")
    assert reception.answer["reason"] == FALLBACK_REASON


async def test_stesud_leaves_a_file_no_acknowledgement_could_name_in_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    stesud = StesudSandbox(tmp_path, recorder)
    outside = put(tmp_path, "facture 1.xml", b"<not-a-purchase-invoice/>")
    answered = put(tmp_path, "HUB-b.xml", b"<not-a-purchase-invoice/>")

    with caplog.at_level(logging.WARNING, logger="sandbox.stesud"):
        await stesud.process_pending()
        await stesud.process_pending()

    assert (tmp_path / "92137" / "in" / "facture 1.xml").exists()
    assert not outside.exists()
    acknowledged(answered)
    assert [r.idempotency_key for r in recorder.receptions()] == ["HUB-b.xml"]
    assert [key for _, key, _ in recorder.attempts()] == ["HUB-b.xml"]
    # Logged once, not at every scan.
    assert sum("facture 1.xml" in r.getMessage() for r in caplog.records) == 1


async def test_stesud_goes_on_past_an_entry_it_cannot_read(tmp_path: Path) -> None:
    stesud = StesudSandbox(tmp_path, Recorder())
    (tmp_path / "11111" / "in" / "A.xml").mkdir(parents=True)  # sorted first, of another tenant
    acknowledgement = put(tmp_path, "HUB-b.xml", b"<not-a-purchase-invoice/>", "62063")

    await stesud.process_pending()

    acknowledged(acknowledgement)
    assert (tmp_path / "62063" / "done" / "HUB-b.xml").exists()
    assert (tmp_path / "11111" / "in" / "A.xml").is_dir()  # left as it is


# -- JSON nested too deep ---------------------------------------------------------------------

NESTED = "[" * 100_000 + "]" * 100_000


async def seed_notification(http: httpx.AsyncClient, sandbox: str, notification_id: str) -> None:
    seeded = await http.post(
        f"{sandbox}/_sandbox/notice/notifications",
        json={
            "notifications": [
                {
                    "id": notification_id,
                    "instance_code": "NESTED-1",
                    "file_type": "permis_urbanisme",
                    "subject": "Construction d'une maison unifamiliale",
                }
            ]
        },
    )
    assert seeded.status_code == 201, seeded.text


async def post_nested(http: httpx.AsyncClient, sandbox: str, target: str) -> httpx.Response:
    if target == "inforius":
        headers = {"X-API-Key": "sandbox-inforius-62063", "Idempotency-Key": "k"}
        return await http.post(sandbox + INFORIUS, content=NESTED, headers=headers)
    if target == "peppol_ap":
        headers = {"X-Api-Key": "sandbox-ap-key-hub", "Idempotency-Key": "k"}
        return await http.post(f"{sandbox}/peppol-ap/v1/outbox", content=NESTED, headers=headers)
    if target == "opinions":
        headers = {"X-Api-Key": "sandbox-opinions-key-62063", "Idempotency-Key": "k"}
        return await http.post(
            f"{sandbox}/opinions/api/v1/requests", content=NESTED, headers=headers
        )
    if target == "notice":
        await seed_notification(http, sandbox, "N-NESTED")
        return await http.post(
            f"{sandbox}/notice/api/v1/notifications/N-NESTED/responses",
            content=NESTED,
            headers={"X-Api-Key": "sandbox-notice-key-hub", "Idempotency-Key": "k"},
        )
    authorization = {"Authorization": f"Bearer {await ebox_token(http, sandbox)}"}
    if target == "ebox_federation":
        return await http.post(
            f"{sandbox}/ebox/federation/v1/eboxPreferences/search",
            content=NESTED,
            headers=authorization,
        )
    assert target == "ebox_publication"
    return await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        files=[("messageToPublish", (None, NESTED.encode(), "application/json"))],
        headers=authorization | {"Idempotency-Key": "k"},
    )


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("inforius", 400),
        ("peppol_ap", 422),
        ("opinions", 422),
        ("notice", 422),
        ("ebox_federation", 400),
        ("ebox_publication", 400),
    ],
)
async def test_a_body_nested_too_deep_is_refused_as_not_json_not_a_server_error(
    sandbox: str, http: httpx.AsyncClient, target: str, status: int
) -> None:
    # A 500 is retryable: the delivery would be retried until dead instead of failing at once.
    answer = await post_nested(http, sandbox, target)

    assert answer.status_code == status, answer.text
    assert "not JSON" in answer.text or "not valid JSON" in answer.text


# -- a key reused for another message is no arrival -------------------------------------------


async def test_inforius_counts_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    assert (await book(http, sandbox, inforius_body(sandbox, http), KEY)).status_code == 201
    another = inforius_body(sandbox, http, number="F-2026/0043")
    assert (await book(http, sandbox, another, KEY)).status_code == 422
    assert (await book(http, sandbox, inforius_body(sandbox, http), KEY)).status_code == 201

    [reception] = await received(http, sandbox, "inforius")
    assert (reception["arrivals"], reception["reused"]) == (2, 1)


async def test_opinions_count_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    request = {
        "requestId": "OP-1",
        "fileId": "F-1",
        "reference": "PU/2026/0012",
        "body": "SRI",
        "subject": "Avis sur la sécurité incendie",
        "dueOn": "2026-05-01",
    }

    async def ask(subject: str) -> int:
        answer = await http.post(
            f"{sandbox}/opinions/api/v1/requests",
            json=request | {"subject": subject},
            headers={"X-Api-Key": "sandbox-opinions-key-92137", "Idempotency-Key": "evt-1:op"},
        )
        return answer.status_code

    assert [await ask("Avis SRI"), await ask("Un autre avis")] == [201, 422]

    [reception] = await received(http, sandbox, "opinions")
    assert (reception["arrivals"], reception["reused"]) == (1, 1)
    [case] = (await http.get(f"{sandbox}/_sandbox/opinions")).json()["items"]
    assert case["arrivals"] == 1


async def test_notice_counts_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    await seed_notification(http, sandbox, "N-REUSED")

    async def respond(message: str) -> int:
        answer = await http.post(
            f"{sandbox}/notice/api/v1/notifications/N-REUSED/responses",
            json={"state": "PARTIAL", "message": message},
            headers={"X-Api-Key": "sandbox-notice-key-hub", "Idempotency-Key": "evt-1:notice"},
        )
        return answer.status_code

    assert [await respond("Dossier complet."), await respond("Dossier incomplet.")] == [201, 422]

    [reception] = await received(http, sandbox, "notice")
    assert (reception["arrivals"], reception["reused"]) == (1, 1)


async def test_the_peppol_outbox_counts_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    connector = create_peppol_ap(
        ConnectorContext("62063", HubSettings(), http),
        {
            "type": "peppol_ap",
            "base_url": f"{sandbox}/peppol-ap/v1",
            "api_key": "sandbox-ap-key-hub",
        },
    )

    def response(code: str) -> Delivery:
        event = invoice_response_requested(code=code)
        return Delivery("e1:invoice-response-peppol", event.tenant, "r", event, 1)

    await connector.deliver(response("AB"))
    with pytest.raises(PermanentDeliveryError, match="already used for a different document"):
        await connector.deliver(response("AP"))

    [reception] = await received(http, sandbox, "peppol_ap")
    assert (reception["arrivals"], reception["reused"]) == (1, 1)


async def test_the_ebox_counts_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    pdf = b"%PDF-1.7\n% a letter from the commune\n%%EOF\n"

    async def publish(subject: str) -> int:
        letter = {
            "recipient": {"eboxType": "citizen", "eboxIdValue": "85073003328"},
            "subject": {"fr": subject},
            "bodyMainContent": False,
            "replyAuthorized": False,
            "attachments": [{"httpPartName": "upfile1", "mainContent": True}],
        }
        answer = await http.post(
            f"{sandbox}/ebox/rest/publishMessage",
            files=[
                ("messageToPublish", (None, json.dumps(letter).encode(), "application/json")),
                ("upfile1", ("letter.pdf", pdf, "application/pdf")),
            ],
            headers={
                "Authorization": f"Bearer {await ebox_token(http, sandbox)}",
                "Idempotency-Key": "evt-1:outgoing-mail-ebox",
            },
        )
        return answer.status_code

    assert [await publish("Votre permis"), await publish("Un autre courrier")] == [201, 422]

    [reception] = await received(http, sandbox, "ebox_rest")
    assert (reception["arrivals"], reception["reused"]) == (1, 1)


def identify_person(niss: str) -> bytes:
    user: Any = SimpleNamespace(
        user_id="00000000097", email="x@example.be", org_unit=None, matrix_id=17, matrix_sub_id=None
    )
    ssdn = ssdn_request(
        user, Identification(niss=niss, last_name="X"), "hub-ref", datetime.now(UTC)
    )
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soapenv:Body><ws:xmlString xmlns:ws="http://ksz-bcss.fgov.be/connectors/WebServiceConnector">'
        f"{escape(ssdn.decode())}</ws:xmlString></soapenv:Body></soapenv:Envelope>"
    ).encode()


async def test_ksz_counts_a_refused_reuse_apart_from_the_arrivals(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    headers = {"Content-Type": "text/xml; charset=utf-8", "Idempotency-Key": "evt-1:identify"}

    async def identify(niss: str) -> int:
        answer = await http.post(
            f"{sandbox}/ksz-bcss/WebServiceConnector",
            content=identify_person(niss),
            headers=headers,
        )
        return answer.status_code

    assert [await identify("85073003328"), await identify("62110414250")] == [200, 500]

    [reception] = await received(http, sandbox, "ksz_bcss")
    assert (reception["arrivals"], reception["reused"]) == (1, 1)
