"""The sandbox's control surface and idempotency, over HTTP on 127.0.0.1: what a test reads
from it must be what happened."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree

from gateway.connectors.ksz_bcss import Identification, read_reply, ssdn_request
from kernel.settings import HubSettings
from sandbox.app import build_app
from sandbox.ksz_bcss import CONNECTOR_NS
from sandbox.recorder import FaultSettings, Reception, Recorder
from sandbox.stesud import StesudSandbox
from tests.support.gateway_hub import eventually
from tests.support.servers import serving

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.7\n% a letter from the commune\n%%EOF\n"
LETTER = {
    "recipient": {"eboxType": "citizen", "eboxIdValue": "85073003328"},
    "subject": {"fr": "Votre permis"},
    "bodyMainContent": False,
    "replyAuthorized": False,
    "attachments": [{"httpPartName": "upfile1", "mainContent": True}],
}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def sandbox(
    corpus: Path, hub_settings: HubSettings, recorder: Recorder
) -> AsyncIterator[str]:
    async with serving(build_app(hub_settings, recorder)) as url:
        yield url


# -- KSZ-BCSS: a reused key --------------------------------------------------------------------

KSZ = "/ksz-bcss/WebServiceConnector"
SOAP = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
    '<ws:xmlString xmlns:ws="http://ksz-bcss.fgov.be/connectors/WebServiceConnector">{}'
    "</ws:xmlString></soapenv:Body></soapenv:Envelope>"
)


def identify_person(niss: str, sent_at: datetime) -> bytes:
    user = SimpleNamespace(
        user_id="00000000097", email="x@example.be", org_unit=None, matrix_id=17, matrix_sub_id=None
    )
    ssdn = ssdn_request(user, Identification(niss=niss, last_name="X"), "hub-ref", sent_at)  # type: ignore[arg-type]
    return SOAP.format(escape(ssdn.decode())).encode()


def last_name_in(answer: httpx.Response) -> str | None:
    reply = etree.fromstring(answer.content).findtext(f".//{{{CONNECTOR_NS}}}xmlString")
    return read_reply(reply or "").answer["last_name"]


async def test_ksz_refuses_a_key_reused_for_another_person_and_replays_a_retry(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    headers = {"Content-Type": "text/xml; charset=utf-8", "Idempotency-Key": "evt-1:identify"}

    first = await http.post(
        sandbox + KSZ, content=identify_person("85073003328", datetime.now(UTC)), headers=headers
    )
    # The connector's retry: the same question, asked at another time.
    retry = await http.post(
        sandbox + KSZ,
        content=identify_person("85073003328", datetime(2030, 1, 1, tzinfo=UTC)),
        headers=headers,
    )
    another_person = await http.post(
        sandbox + KSZ, content=identify_person("62110414250", datetime.now(UTC)), headers=headers
    )

    assert (first.status_code, last_name_in(first)) == (200, "LAMBERT")
    assert retry.content == first.content
    assert another_person.status_code == 500
    assert b"Client" in another_person.content
    assert b"Idempotency-Key reused for another request" in another_person.content
    assert b"LAMBERT" not in another_person.content


# -- every attempt is counted --------------------------------------------------------------------


async def token(http: httpx.AsyncClient, sandbox: str) -> str:
    answer = await http.post(
        f"{sandbox}/ebox/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "hub-62063",
            "client_secret": "sandbox-secret-62063",
        },
    )
    access_token: str = answer.json()["access_token"]
    return access_token


async def publish(http: httpx.AsyncClient, sandbox: str, **options: Any) -> httpx.Response:
    return await http.post(
        f"{sandbox}/ebox/rest/publishMessage",
        files=[
            ("messageToPublish", (None, json.dumps(LETTER).encode(), "application/json")),
            ("upfile1", ("letter.pdf", PDF, "application/pdf")),
        ],
        headers={
            "Authorization": f"Bearer {await token(http, sandbox)}",
            "Idempotency-Key": "evt-1:outgoing-mail-ebox",
        },
        **options,
    )


async def sandbox_view(http: httpx.AsyncClient, sandbox: str, view: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await http.get(f"{sandbox}/_sandbox/{view}")).json()["items"]
    return items


async def test_requests_answered_by_an_injected_fault_count_as_attempts(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    faults = f"{sandbox}/_sandbox/faults/ebox_rest"
    await http.put(faults, json={"error_rate": 1.0})
    assert [(await publish(http, sandbox)).status_code for _ in range(2)] == [503, 503]
    await http.put(faults, json={"timeout_rate": 1.0, "timeout_seconds": 2.0})
    with pytest.raises(httpx.TimeoutException):  # the client gave up during the hang
        await publish(http, sandbox, timeout=0.3)
    await http.put(faults, json={})
    assert (await publish(http, sandbox)).status_code == 201

    [reception] = await sandbox_view(http, sandbox, "received")
    assert reception["arrivals"] == 1  # processed once
    assert await sandbox_view(http, sandbox, "attempts") == [
        {"service": "ebox_rest", "idempotency_key": "evt-1:outgoing-mail-ebox", "attempts": 4}
    ]


# -- the fault control surface -----------------------------------------------------------------


async def test_faults_for_an_unknown_service_are_refused(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    answer = await http.put(f"{sandbox}/_sandbox/faults/ebox", json={"error_rate": 1.0})

    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert "'ebox' is not a simulated service" in answer.json()["detail"]
    assert (await http.put(f"{sandbox}/_sandbox/faults/*", json={})).status_code == 200


async def test_clearing_the_receptions_keeps_the_faults_until_they_are_cleared(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    await http.put(f"{sandbox}/_sandbox/faults/ebox_rest", json={"error_rate": 1.0})

    await http.delete(f"{sandbox}/_sandbox/received")
    still_failing = await http.post(f"{sandbox}/ebox/rest/publishMessage")
    await http.delete(f"{sandbox}/_sandbox/faults")
    healthy = await http.post(f"{sandbox}/ebox/rest/publishMessage")

    assert (still_failing.status_code, healthy.status_code) == (503, 401)


# -- Stésud ------------------------------------------------------------------------------------


def drop(stesud_dir: Path, name: str = "HUB-1.xml") -> Path:
    inbox = stesud_dir / "92137" / "in"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_bytes(b"<not-a-purchase-invoice/>")
    return stesud_dir / "92137" / "out" / name.replace(".xml", ".ack.xml")


async def test_stesud_leaves_files_unanswered_while_told_to_fail(
    sandbox: str, http: httpx.AsyncClient, hub_settings: HubSettings
) -> None:
    faults = f"{sandbox}/_sandbox/faults/stesud"
    await http.put(faults, json={"error_rate": 1.0})
    acknowledgement = drop(hub_settings.var_dir / "stesud")

    async def attempted() -> bool:
        return bool(await sandbox_view(http, sandbox, "attempts"))

    assert await eventually(attempted, timeout=5)
    await asyncio.sleep(0.5)  # more scans: still not processed
    assert not acknowledgement.exists()
    assert await sandbox_view(http, sandbox, "received") == []

    await http.put(faults, json={})

    async def answered() -> bool:
        return acknowledgement.exists()

    assert await eventually(answered, timeout=5)


async def test_stesud_holds_a_file_for_an_injected_timeout(tmp_path: Path) -> None:
    recorder = Recorder()
    recorder.set_faults("stesud", FaultSettings(timeout_rate=1.0, timeout_seconds=0.5))
    stesud = StesudSandbox(tmp_path, recorder)
    acknowledgement = drop(tmp_path)

    started = time.monotonic()
    await stesud.process_pending()

    assert time.monotonic() - started >= 0.5
    assert acknowledgement.exists()


class ThreadNotingRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.recorded_in: list[int] = []

    def record(self, service: str, idempotency_key: str, **details: Any) -> Reception:
        self.recorded_in.append(threading.get_ident())
        return super().record(service, idempotency_key, **details)


async def test_stesud_records_on_the_event_loop_not_in_a_worker_thread(tmp_path: Path) -> None:
    # The control views iterate the recorder on the loop: a worker thread adding to it
    # meanwhile made them fail with "dictionary changed size during iteration".
    recorder = ThreadNotingRecorder()
    stesud = StesudSandbox(tmp_path, recorder)
    drop(tmp_path)

    await stesud.process_pending()

    assert recorder.recorded_in == [threading.get_ident()]


# -- opinions: arrivals of one case ----------------------------------------------------------


def opinion_request(request_id: str = "OP-1") -> dict[str, str]:
    return {
        "requestId": request_id,
        "fileId": "F-1",
        "reference": "PU/2026/0012",
        "body": "SRI",
        "subject": "Avis sur la sécurité incendie",
        "dueOn": "2026-05-01",
    }


async def ask_opinion(http: httpx.AsyncClient, sandbox: str, tenant: str, key: str) -> int:
    answer = await http.post(
        f"{sandbox}/opinions/api/v1/requests",
        json=opinion_request(),
        headers={"X-Api-Key": f"sandbox-opinions-key-{tenant}", "Idempotency-Key": key},
    )
    return answer.status_code


async def test_opinion_arrivals_add_up_across_keys_and_stay_apart_across_tenants(
    sandbox: str, http: httpx.AsyncClient
) -> None:
    # The same request re-sent under a second key (an event emitted twice) is a duplicate.
    assert await ask_opinion(http, sandbox, "92137", "evt-1:opinion") == 201
    assert await ask_opinion(http, sandbox, "92137", "evt-2:opinion") == 201
    # Another commune's request that happens to bear the same requestId.
    assert await ask_opinion(http, sandbox, "62063", "evt-3:opinion") == 201

    cases = await sandbox_view(http, sandbox, "opinions")

    assert sorted((case["account"], case["arrivals"]) for case in cases) == [
        ("62063", 1),
        ("92137", 2),
    ]
