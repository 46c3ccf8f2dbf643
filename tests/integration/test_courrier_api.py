"""The courrier API over real HTTP on 127.0.0.1, on SQLite and PostgreSQL (no broker needed).

Events stay in the outbox here (``background=False``): these tests check what
is stored and staged; ``test_courrier_events`` checks what reaches Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from contracts.envelope import from_record
from contracts.events.courrier import IncomingMailRegistered, OutgoingMailSendRequested
from kernel.auth import issue_token
from kernel.database import utcnow
from kernel.days import commune_day
from kernel.idempotency import IdempotencyMiddleware
from kernel.outbox import OutboxMessage
from kernel.settings import HubSettings
from services.courrier import api as courrier_api
from services.courrier.main import CourrierOptions, build_app
from services.courrier.tables import Mail, MailFile
from tests.support.servers import serving

pytestmark = pytest.mark.integration

SAMBREVILLE, LIEGE, UNCONFIGURED = "92137", "62063", "57081"
ALL_SCOPES = ("courrier:read", "courrier:write")
NISS = "85073003328"
ENTERPRISE = "0403170701"
LETTER = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


def write_tenants(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for code, name in ((SAMBREVILLE, "Ville de Sambreville"), (LIEGE, "Ville de Liège")):
        (directory / f"{code}.yaml").write_text(f'tenant: "{code}"\nname: {name}\n', "utf-8")
    return directory


def settings_for(hub_settings: HubSettings, tmp_path: Path, **changes: Any) -> HubSettings:
    return hub_settings.model_copy(
        update={"tenants_dir": write_tenants(tmp_path / "tenants"), **changes}
    )


def auth(
    settings: HubSettings, tenant: str = SAMBREVILLE, scopes: tuple[str, ...] = ALL_SCOPES
) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, tenant, list(scopes))}"}


def outgoing_body(
    identifier: str = NISS, kind: str = "person", letter: bytes = LETTER, **changes: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "recipient": {"kind": kind, "identifier": identifier, "name": "Jean Dupont"},
        "subject": "Votre permis d'urbanisme",
        "body_pdf_base64": base64.b64encode(letter).decode(),
    }
    body.update(changes)
    return body


def incoming_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "received_on": commune_day(utcnow()).isoformat(),
        "sender": "SPW Territoire",
        "subject": "Avis sur le permis 2026/12",
        "assigned_service": "urbanisme",
    }
    body.update(changes)
    return body


@dataclass
class Courrier:
    """A courrier app served on 127.0.0.1, with a client and a view of its database."""

    app: FastAPI
    http: httpx.AsyncClient
    settings: HubSettings

    def auth(
        self, tenant: str = SAMBREVILLE, scopes: tuple[str, ...] = ALL_SCOPES
    ) -> dict[str, str]:
        return auth(self.settings, tenant, scopes)

    async def outbox(self) -> list[OutboxMessage]:
        async with self.app.state.sessions() as session:
            rows = await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            return list(rows.all())

    async def stored(self) -> tuple[int, int]:
        """How many mails and files the database holds."""
        async with self.app.state.sessions() as session:
            mails = await session.scalar(select(func.count()).select_from(Mail))
            files = await session.scalar(select(func.count()).select_from(MailFile))
            return int(mails or 0), int(files or 0)


@contextlib.asynccontextmanager
async def running(
    settings: HubSettings, database: tuple[str, str | None], **options: Any
) -> AsyncIterator[Courrier]:
    url, schema = database
    app = build_app(
        settings,
        CourrierOptions(
            database_url=url, database_schema=schema, **{"background": False, **options}
        ),
    )
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        yield Courrier(app, http, settings)


@pytest.fixture
async def courrier(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> AsyncIterator[Courrier]:
    async with running(settings_for(hub_settings, tmp_path), database) as served:
        yield served


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/" + slug), body
    assert body["status"] == status
    return body


# -- incoming mail --------------------------------------------------------------------


async def test_incoming_mail_gets_the_next_number_and_its_event_is_staged(
    courrier: Courrier,
) -> None:
    year = commune_day(utcnow()).year
    first = await courrier.http.post(
        "/v1/incoming-mails", json=incoming_body(), headers=courrier.auth()
    )
    second = await courrier.http.post(
        "/v1/incoming-mails", json=incoming_body(assigned_service=None), headers=courrier.auth()
    )
    assert first.status_code == second.status_code == 201, first.text
    mail = first.json()
    assert mail["registration_number"] == f"E{year}/000001"
    assert second.json()["registration_number"] == f"E{year}/000002"
    assert mail["state"] == "registered"
    assert first.headers["location"] == f"/v1/incoming-mails/{mail['id']}"

    fetched = await courrier.http.get(first.headers["location"], headers=courrier.auth())
    assert fetched.json() == mail

    rows = await courrier.outbox()
    assert [row.event_type for row in rows] == [IncomingMailRegistered.TYPE] * 2
    assert rows[0].topic == "courrier.events"
    assert rows[0].key == f"{SAMBREVILLE}:{mail['id']}".encode()
    event = from_record(rows[0].headers, rows[0].value)
    data = event.data_as(IncomingMailRegistered)
    assert (event.tenant, event.subject) == (SAMBREVILLE, mail["id"])
    assert data.registration_number == f"E{year}/000001"
    assert data.sender == "SPW Territoire"
    assert data.assigned_service == "urbanisme"


async def test_registration_numbers_stay_gap_free_and_unique_under_concurrency(
    courrier: Courrier,
) -> None:
    year = commune_day(utcnow()).year

    async def register(tenant: str) -> str:
        response = await courrier.http.post(
            "/v1/incoming-mails", json=incoming_body(), headers=courrier.auth(tenant)
        )
        assert response.status_code == 201, response.text
        number: str = response.json()["registration_number"]
        return number

    tenants = [SAMBREVILLE] * 20 + [LIEGE] * 10
    numbers = await asyncio.gather(*(register(tenant) for tenant in tenants))
    ours = sorted(n for n, t in zip(numbers, tenants, strict=True) if t == SAMBREVILLE)
    theirs = sorted(n for n, t in zip(numbers, tenants, strict=True) if t == LIEGE)
    assert ours == [f"E{year}/{n:06d}" for n in range(1, 21)]
    assert theirs == [f"E{year}/{n:06d}" for n in range(1, 11)]
    assert len(await courrier.outbox()) == 30


async def test_lists_filter_by_state_direction_and_date_and_page(courrier: Courrier) -> None:
    today = commune_day(utcnow())
    for days_ago in (10, 5, 1):
        received = (today - timedelta(days=days_ago)).isoformat()
        response = await courrier.http.post(
            "/v1/incoming-mails",
            json=incoming_body(received_on=received),
            headers=courrier.auth(),
        )
        assert response.status_code == 201
    draft = await courrier.http.post(
        "/v1/outgoing-mails", json=outgoing_body(), headers=courrier.auth()
    )
    sending = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(), headers=courrier.auth()
    )
    assert (draft.status_code, sending.status_code) == (201, 202)
    headers = courrier.auth(scopes=("courrier:read",))

    async def listed(path: str, **params: Any) -> dict[str, Any]:
        response = await courrier.http.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    window = await listed(
        "/v1/incoming-mails",
        date_from=(today - timedelta(days=6)).isoformat(),
        date_to=(today - timedelta(days=1)).isoformat(),
    )
    assert sorted(item["received_on"] for item in window["items"]) == [
        (today - timedelta(days=5)).isoformat(),
        (today - timedelta(days=1)).isoformat(),
    ]
    first_page = await listed("/v1/incoming-mails", limit=2)
    second_page = await listed("/v1/incoming-mails", limit=2, offset=2)
    assert (first_page["total"], len(first_page["items"]), len(second_page["items"])) == (3, 2, 1)
    # newest registration first
    assert first_page["items"][0]["registration_number"].endswith("/000003")
    assert second_page["items"][0]["registration_number"].endswith("/000001")

    outgoing = await listed("/v1/outgoing-mails", state="sending")
    assert [item["id"] for item in outgoing["items"]] == [sending.json()["id"]]
    registry = await listed("/v1/mails", direction="outgoing")
    assert {item["state"] for item in registry["items"]} == {"draft", "sending"}
    assert registry["items"][0]["correspondent"] == "Jean Dupont"
    everything = await listed("/v1/mails")
    assert everything["total"] == 5

    empty = await courrier.http.get(
        "/v1/mails",
        params={"date_from": today.isoformat(), "date_to": "2000-01-01"},
        headers=headers,
    )
    problem(empty, 422, "invalid-date-range")
    bad_state = await courrier.http.get("/v1/mails", params={"state": "lost"}, headers=headers)
    problem(bad_state, 422, "invalid-request")


# -- outgoing mail --------------------------------------------------------------------


async def test_sending_a_draft_stages_exactly_one_request_and_a_second_send_conflicts(
    courrier: Courrier,
) -> None:
    created = await courrier.http.post(
        "/v1/outgoing-mails",
        json=outgoing_body(identifier="85.07.30-033.28"),
        headers=courrier.auth(),
    )
    assert created.status_code == 201, created.text
    draft = created.json()
    assert draft["state"] == "draft"
    assert draft["registration_number"].startswith("S")
    assert draft["recipient"]["identifier"] == NISS
    assert draft["letter"]["md5"] == hashlib.md5(LETTER).hexdigest()
    assert await courrier.outbox() == []

    sent = await courrier.http.post(
        f"/v1/outgoing-mails/{draft['id']}/send", headers=courrier.auth()
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["state"] == "sending"
    again = await courrier.http.post(
        f"/v1/outgoing-mails/{draft['id']}/send", headers=courrier.auth()
    )
    assert problem(again, 409, "send-already-requested")["state"] == "sending"

    rows = await courrier.outbox()
    assert [row.event_type for row in rows] == [OutgoingMailSendRequested.TYPE]
    event = from_record(rows[0].headers, rows[0].value)
    data = event.data_as(OutgoingMailSendRequested)
    assert base64.b64decode(data.body_pdf_base64) == LETTER
    assert data.body_pdf_md5 == hashlib.md5(LETTER).hexdigest()
    assert (data.recipient.kind, data.recipient.identifier) == ("person", NISS)
    assert data.registration_number == draft["registration_number"]
    assert rows[0].key == f"{SAMBREVILLE}:{draft['id']}".encode()
    fetched = await courrier.http.get(f"/v1/outgoing-mails/{draft['id']}", headers=courrier.auth())
    assert fetched.json()["state"] == "sending"


async def test_concurrent_sends_of_one_draft_publish_one_request(courrier: Courrier) -> None:
    created = await courrier.http.post(
        "/v1/outgoing-mails", json=outgoing_body(ENTERPRISE, "enterprise"), headers=courrier.auth()
    )
    mail_id = created.json()["id"]
    answers = await asyncio.gather(
        *(
            courrier.http.post(f"/v1/outgoing-mails/{mail_id}/send", headers=courrier.auth())
            for _ in range(6)
        )
    )
    assert sorted(answer.status_code for answer in answers) == [202] + [409] * 5
    assert len(await courrier.outbox()) == 1


async def test_create_and_send_in_one_call(courrier: Courrier) -> None:
    response = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(), headers=courrier.auth()
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "sending"
    rows = await courrier.outbox()
    assert [row.event_type for row in rows] == [OutgoingMailSendRequested.TYPE]
    assert rows[0].key == f"{SAMBREVILLE}:{response.json()['id']}".encode()


# -- bad input ------------------------------------------------------------------------

TOMORROW = (date.today() + timedelta(days=2)).isoformat()
BAD_INPUT = [
    pytest.param(
        "/v1/incoming-mails", '{"sender": "x",', 400, "malformed-json", id="malformed-json"
    ),
    pytest.param(
        "/v1/incoming-mails", incoming_body(subject=42), 422, "invalid-request", id="wrong-type"
    ),
    pytest.param(
        "/v1/incoming-mails",
        incoming_body(priority="high"),
        422,
        "invalid-request",
        id="unknown-field",
    ),
    pytest.param(
        "/v1/incoming-mails",
        incoming_body(received_on=TOMORROW),
        422,
        "received-on-in-the-future",
        id="future-date",
    ),
    pytest.param(
        "/v1/outgoing-mails",
        outgoing_body("85073003329"),
        422,
        "invalid-recipient-identifier",
        id="invalid-niss",
    ),
    pytest.param(
        "/v1/outgoing-mails:send",
        outgoing_body("0403170702", "enterprise"),
        422,
        "invalid-recipient-identifier",
        id="invalid-bce",
    ),
    pytest.param(
        "/v1/outgoing-mails",
        outgoing_body(recipient={"kind": "cat", "identifier": "1"}),
        422,
        "invalid-request",
        id="unknown-recipient-kind",
    ),
    pytest.param(
        "/v1/outgoing-mails:send",
        outgoing_body(letter=b"<html>letter</html>"),
        422,
        "not-a-pdf",
        id="not-a-pdf",
    ),
    pytest.param(
        "/v1/outgoing-mails",
        outgoing_body(body_pdf_base64="JVBERi0x*"),
        422,
        "invalid-base64",
        id="invalid-base64",
    ),
    pytest.param(
        "/v1/outgoing-mails",
        outgoing_body(body_pdf_base64="JVBERi0x\u0661"),  # an Arabic-Indic digit: a 500
        422,
        "invalid-base64",
        id="base64-not-ascii",
    ),
    pytest.param(
        "/v1/outgoing-mails:send",
        outgoing_body(letter=b"%PDF-1.4\n" + b"0" * (4 * 1024 * 1024)),
        413,
        "letter-too-large",
        id="letter-too-large",
    ),
    # PostgreSQL refuses a NUL in a text: a 500 there, until the API refused it first.
    pytest.param(
        "/v1/incoming-mails",
        incoming_body(sender="SPW\u0000Territoire"),
        422,
        "invalid-request",
        id="nul-in-a-text",
    ),
    pytest.param(
        "/v1/incoming-mails",
        incoming_body(received_on="9999-12-31"),
        422,
        "invalid-request",
        id="day-out-of-the-calendar",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "slug"), BAD_INPUT)
async def test_bad_input_gets_a_specific_problem_and_nothing_is_stored(
    courrier: Courrier, path: str, body: dict[str, Any] | str, status: int, slug: str
) -> None:
    headers = {**courrier.auth(), "Content-Type": "application/json"}
    content = body if isinstance(body, str) else json.dumps(body)
    response = await courrier.http.post(path, content=content, headers=headers)
    details = problem(response, status, slug)
    assert NISS[2:] not in response.text  # never echo a national number
    assert "85073003329"[2:] not in details["detail"]
    assert await courrier.stored() == (0, 0)
    assert await courrier.outbox() == []


async def test_a_control_character_in_the_url_is_refused(courrier: Courrier) -> None:
    for url in ("/v1/incoming-mails/a%00b", "/v1/mails?subject=a%00b"):
        response = await courrier.http.get(url, headers=courrier.auth())
        problem(response, 400, "control-character")


async def test_an_offset_past_the_databases_integers_is_refused(courrier: Courrier) -> None:
    # Past 2**63 - 1 it could not be bound to the statement: a 500.
    response = await courrier.http.get(
        "/v1/mails", params={"offset": 2**63}, headers=courrier.auth()
    )
    errors = problem(response, 422, "invalid-request")["errors"]
    assert [e["field"] for e in errors] == ["query.offset"]
    last = await courrier.http.get(
        "/v1/mails", params={"offset": 2**63 - 1}, headers=courrier.auth()
    )
    assert last.status_code == 200 and last.json()["items"] == []


async def test_unknown_fields_and_wrong_types_name_the_field(courrier: Courrier) -> None:
    response = await courrier.http.post(
        "/v1/outgoing-mails", json=outgoing_body(priority="urgent"), headers=courrier.auth()
    )
    assert {"field": "priority", "message": "Extra inputs are not permitted"} in problem(
        response, 422, "invalid-request"
    )["errors"]
    response = await courrier.http.post(
        "/v1/incoming-mails", json=incoming_body(received_on="yesterday"), headers=courrier.auth()
    )
    fields = [error["field"] for error in problem(response, 422, "invalid-request")["errors"]]
    assert fields == ["received_on"]


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> None:
    settings = settings_for(hub_settings, tmp_path, max_body_bytes=64 * 1024)
    async with running(settings, database) as courrier:
        response = await courrier.http.post(
            "/v1/outgoing-mails",
            json=outgoing_body(letter=b"%PDF-1.4\n" + b"0" * 100_000),
            headers=courrier.auth(),
        )
        problem(response, 413, "body-too-large")
        assert await courrier.stored() == (0, 0)


# -- security -------------------------------------------------------------------------


async def test_callers_need_a_valid_token_of_a_configured_tenant_with_the_scope(
    courrier: Courrier, tmp_path: Path
) -> None:
    path = "/v1/outgoing-mails"
    problem(await courrier.http.post(path, json=outgoing_body()), 401, "unauthorized")
    stranger = HubSettings(var_dir=tmp_path / "another-issuer")
    foreign = await courrier.http.post(path, json=outgoing_body(), headers=auth(stranger))
    problem(foreign, 401, "unauthorized")
    read_only = courrier.auth(scopes=("courrier:read",))
    problem(
        await courrier.http.post(path, json=outgoing_body(), headers=read_only), 403, "forbidden"
    )
    write_only = courrier.auth(scopes=("courrier:write",))
    problem(await courrier.http.get(path, headers=write_only), 403, "forbidden")
    unknown = await courrier.http.post(
        path, json=outgoing_body(), headers=courrier.auth(UNCONFIGURED)
    )
    problem(unknown, 403, "unknown-tenant")
    problem(
        await courrier.http.get(path, headers=courrier.auth(UNCONFIGURED)), 403, "unknown-tenant"
    )
    assert await courrier.stored() == (0, 0)
    assert (await courrier.http.get(path, headers=read_only)).status_code == 200


async def test_a_tenant_never_sees_nor_sends_another_tenants_mail(courrier: Courrier) -> None:
    incoming = (
        await courrier.http.post(
            "/v1/incoming-mails", json=incoming_body(), headers=courrier.auth()
        )
    ).json()
    outgoing = (
        await courrier.http.post(
            "/v1/outgoing-mails", json=outgoing_body(), headers=courrier.auth()
        )
    ).json()
    liege = courrier.auth(LIEGE)
    for path in (
        f"/v1/incoming-mails/{incoming['id']}",
        f"/v1/outgoing-mails/{outgoing['id']}",
        f"/v1/mails/{outgoing['id']}/files/{outgoing['letter']['file_id']}",
    ):
        problem(await courrier.http.get(path, headers=liege), 404, "not-found")
        assert (await courrier.http.get(path, headers=courrier.auth())).status_code == 200
    send = await courrier.http.post(f"/v1/outgoing-mails/{outgoing['id']}/send", headers=liege)
    problem(send, 404, "not-found")
    for path in ("/v1/incoming-mails", "/v1/outgoing-mails", "/v1/mails"):
        listed = await courrier.http.get(path, headers=liege)
        assert listed.json()["total"] == 0
    mine = await courrier.http.get(f"/v1/outgoing-mails/{outgoing['id']}", headers=courrier.auth())
    assert mine.json()["state"] == "draft"
    assert OutgoingMailSendRequested.TYPE not in [row.event_type for row in await courrier.outbox()]


async def test_the_openapi_document_describes_every_route(courrier: Courrier) -> None:
    document = (await courrier.http.get("/openapi.json")).json()
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations >= {
        ("/v1/incoming-mails", "post"),
        ("/v1/incoming-mails", "get"),
        ("/v1/incoming-mails/{mail_id}", "get"),
        ("/v1/intake/scans", "post"),
        ("/v1/outgoing-mails", "post"),
        ("/v1/outgoing-mails", "get"),
        ("/v1/outgoing-mails:send", "post"),
        ("/v1/outgoing-mails/{mail_id}/send", "post"),
        ("/v1/outgoing-mails/{mail_id}", "get"),
        ("/v1/mails", "get"),
        ("/v1/mails/{mail_id}/files/{file_id}", "get"),
    }
    send = document["paths"]["/v1/outgoing-mails/{mail_id}/send"]["post"]
    assert "application/problem+json" in send["responses"]["409"]["content"]
    assert send["security"] == [{"HTTPBearer": []}]
    # Every POST says it takes an Idempotency-Key (read by a middleware, not FastAPI).
    posts = [item["post"] for item in document["paths"].values() if "post" in item]
    assert all(
        "Idempotency-Key" in [p["name"] for p in post.get("parameters", [])] for post in posts
    )
    create = document["components"]["schemas"]["OutgoingMailCreate"]
    assert create["additionalProperties"] is False


# -- a request sent again -----------------------------------------------------------------


async def test_a_send_sent_again_with_its_idempotency_key_is_answered_and_sent_once(
    courrier: Courrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer kept slowly (a busy database): kept after the client had it, a request
    # sent again at once found the key still running and was told 409.
    keep = IdempotencyMiddleware._keep

    async def slowly(self: IdempotencyMiddleware, *arguments: Any) -> None:
        await asyncio.sleep(0.3)
        await keep(self, *arguments)

    monkeypatch.setattr(IdempotencyMiddleware, "_keep", slowly)
    keyed = {**courrier.auth(), "Idempotency-Key": "send-2026-0042"}
    first = await courrier.http.post("/v1/outgoing-mails:send", json=outgoing_body(), headers=keyed)
    again = await courrier.http.post("/v1/outgoing-mails:send", json=outgoing_body(), headers=keyed)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await courrier.stored() == (1, 1)
    assert len(await courrier.outbox()) == 1  # the citizen gets the letter once

    # The key is the tenant's: another tenant's request with it is its own.
    theirs = {**courrier.auth(LIEGE), "Idempotency-Key": "send-2026-0042"}
    other = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(), headers=theirs
    )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]

    # The same key with another request is refused, and changes nothing.
    changed = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(subject="Autre"), headers=keyed
    )
    problem(changed, 422, "idempotency-key-reused")
    assert await courrier.stored() == (2, 2)


async def test_concurrent_requests_with_one_key_change_things_once(courrier: Courrier) -> None:
    keyed = {**courrier.auth(), "Idempotency-Key": "double-click"}
    answers = await asyncio.gather(
        *(
            courrier.http.post("/v1/incoming-mails", json=incoming_body(), headers=keyed)
            for _ in range(5)
        )
    )

    created = [a for a in answers if a.status_code == 201]
    assert created and {a.json()["id"] for a in created} == {created[0].json()["id"]}
    for answer in answers:
        if answer.status_code != 201:
            problem(answer, 409, "idempotency-key-in-use")
    assert await courrier.stored() == (1, 0)
    assert len(await courrier.outbox()) == 1


async def test_a_request_that_failed_after_its_change_committed_is_answered_the_same_again(
    courrier: Courrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_view(mail: Any) -> Any:
        raise RuntimeError("the view could not be built")

    keyed = {**courrier.auth(), "Idempotency-Key": "letter-8"}
    with monkeypatch.context() as patched:  # the mail is committed, then the answer fails
        patched.setattr(courrier_api.OutgoingMailView, "of", broken_view)
        failed = await courrier.http.post(
            "/v1/outgoing-mails:send", json=outgoing_body(), headers=keyed
        )
    problem(failed, 500, "internal-error")

    # Sent again, it is told what happened the first time (not "in use" for a day) and
    # the letter is not sent twice.
    again = await courrier.http.post("/v1/outgoing-mails:send", json=outgoing_body(), headers=keyed)
    problem(again, 500, "internal-error")
    assert again.json() == failed.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await courrier.stored() == (1, 1)
    assert len(await courrier.outbox()) == 1


async def test_a_refused_request_may_be_sent_again_corrected_under_its_key(
    courrier: Courrier,
) -> None:
    keyed = {**courrier.auth(), "Idempotency-Key": "letter-7"}
    wrong = await courrier.http.post(
        "/v1/outgoing-mails:send", json=outgoing_body(identifier="85073003329"), headers=keyed
    )
    assert wrong.status_code == 422
    right = await courrier.http.post("/v1/outgoing-mails:send", json=outgoing_body(), headers=keyed)
    assert right.status_code == 202 and "idempotent-replayed" not in right.headers

    unusable = {**courrier.auth(), "Idempotency-Key": "k" * 201}
    refused = await courrier.http.post("/v1/incoming-mails", json=incoming_body(), headers=unusable)
    problem(refused, 400, "bad-idempotency-key")
    assert await courrier.stored() == (1, 1)
