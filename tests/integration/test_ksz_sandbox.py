"""KSZ-BCSS IdentifyPerson end to end: an IdentificationRequested event, the ksz_identify
connector, the sandbox validating against the corpus XSDs, and the receipt's answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.gateway import DeliveryReceipt
from contracts.events.urban import IdentificationRequested
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.recorder import Recorder
from tests.support.gateway_hub import events_on
from tests.support.urban_gateway import UrbanGateway, publish, urban_gateway

pytestmark = pytest.mark.integration

KNOWN, UNKNOWN = "85073003328", "77030800535"


@pytest.fixture
async def hub(
    tmp_path: Path, kafka_bootstrap: str, database: tuple[str, str | None], corpus: Path
) -> AsyncIterator[UrbanGateway]:
    async with urban_gateway(tmp_path, kafka_bootstrap, database, corpus) as running:
        yield running


def identification(hub: UrbanGateway, file_id: str, niss: str, **declared: object) -> object:
    data = IdentificationRequested(
        file_id=file_id, niss=niss, declared_last_name="Lambert", **declared
    )
    return new_event(data, tenant=hub.tenant, subject=file_id, source="urn:test:urban")


async def test_a_known_niss_comes_back_with_its_identity_and_an_unknown_one_not_found(
    hub: UrbanGateway, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    for component in ("gateway", "sandbox", "kernel"):
        caplog.set_level(logging.DEBUG, logger=component)
    known = identification(
        hub, "F-1", KNOWN, declared_first_name="Sophie", declared_birth_date=date(1985, 7, 30)
    )
    mismatch = identification(hub, "F-2", KNOWN, declared_birth_date=date(1985, 7, 31))
    unknown = identification(hub, "F-3", UNKNOWN)
    await publish(kafka_bootstrap, known, mismatch, unknown)  # type: ignore[arg-type]

    receipts = await events_on(
        kafka_bootstrap,
        "gateway.receipts",
        lambda e: e.tenant == hub.tenant,
        at_least=3,
        timeout=40,
    )
    answers = {r.subject: r.data_as(DeliveryReceipt) for r in receipts}
    assert {subject: receipt.outcome for subject, receipt in answers.items()} == {
        "F-1": "delivered",
        "F-2": "delivered",
        "F-3": "delivered",
    }
    assert answers["F-1"].answer == {
        "status": "found",
        "last_name": "LAMBERT",
        "first_names": "SOPHIE ANNE",
        "birth_date": "1985-07-30",
        "gender": "female",
        "address": "RUE DES GUILLEMINS 27 bte 3, 4000 LIEGE",
        "verification": "matched",
    }
    assert answers["F-2"].answer is not None
    assert answers["F-2"].answer["verification"] == "mismatch"
    assert answers["F-3"].answer is not None and answers["F-3"].answer["status"] == "not_found"
    assert answers["F-1"].external_reference  # the CBSS ticket
    ours = "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("gateway", "sandbox")
    )
    assert KNOWN not in ours and UNKNOWN not in ours


@pytest.mark.parametrize(
    ("content_type", "message", "reason"),
    [
        ("application/json", b"<foo/>", "a SOAP 1.1 message is text/xml, not application/json"),
        ("text/xml", b"<foo/>", "the message is not a SOAP 1.1 Envelope but foo"),
        (
            "text/xml",
            b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<s:Body/><s:Body/></s:Envelope>",
            "a SOAP Envelope has one Body",
        ),
    ],
    ids=["json", "not-an-envelope", "two-bodies"],
)
async def test_a_request_that_is_no_soap_11_envelope_gets_a_client_fault(
    hub_settings: HubSettings, corpus: Path, content_type: str, message: bytes, reason: str
) -> None:
    app = build_app(hub_settings.model_copy(update={"corpus_dir": corpus}), Recorder())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sandbox"
    ) as http:
        answer = await http.post(
            "/ksz-bcss/WebServiceConnector", content=message, headers={"Content-Type": content_type}
        )

    assert answer.status_code == 500
    assert reason.encode() in answer.content and b"Client" in answer.content
