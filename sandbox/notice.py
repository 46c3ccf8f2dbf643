"""Simulated SPW NOTICe: permit notifications for the communes, and their responses.

It implements the modelled contract ``contracts/notice/openapi.yaml`` (the SPW
publishes NOTICe's resources, not a contract; the file says how it was
modelled), under ``/notice/api/v1``:

- ``GET /instances/{code}/notifications?status=EN_ATTENTE_REPONSE``: one page
  of an instance's notifications (cursor ``after``, ``limit`` up to 1,000). A
  query the contract refuses (an instance code not of its form, a ``limit``
  out of 1..1,000, an ``after`` that is no ``next`` of this instance's
  listing) is answered 400 with every reason, never clamped or read as the
  first page;
- ``GET /notifications/{id}``: the request, its documents' metadata (size,
  SHA-256, media type) and the responses given;
- ``GET /notifications/{id}/documents/{doc}``: a document's bytes;
- ``POST /notifications/{id}/responses``: ``PARTIAL`` (the file is complete)
  or ``FINAL`` (the decision, which closes the notification: any later
  response is refused with 409 ``already-closed``). The body is validated
  against the contract (422 with every reason). ``Idempotency-Key``: a
  repeated key gets the first answer and records nothing new; the same key
  for another response is refused (422).

**Sandbox credentials**: ``X-Api-Key: sandbox-notice-key-<account>`` for any
account name, valid for every instance (the committed tenant files use
account ``hub``).

Control surface ``/_sandbox/notice/notifications``: ``POST`` seeds a batch of
notifications (tests, ``hub demo``, the benchmark: thousands at once; a
document may declare a wrong size or SHA-256 to play a corrupted transfer);
``GET`` lists them with their responses and how often each was fetched.
Faults are those set for service ``notice``.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import pybase64
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kernel.errors import problem_response
from kernel.settings import REPOSITORY_ROOT
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.recorder import Recorder

SERVICE = "notice"
CONTRACT = REPOSITORY_ROOT / "contracts" / "notice" / "openapi.yaml"
PREFIX = "/notice/api/v1"
API_KEY_PREFIX = "sandbox-notice-key-"
AWAITING = "EN_ATTENTE_REPONSE"
CLOSED = "CLOTUREE"
MAX_PAGE = 1000
MAX_SEED = 20_000
_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


# -- seeding (control surface) ------------------------------------------------------------


class SeedDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str = Field(min_length=1, max_length=300)
    media_type: str = "application/pdf"
    #: The content as text, or ``content_base64`` for any bytes.
    content: str | None = None
    content_base64: str | None = None
    #: Metadata that lies about the content, to play a corrupted transfer.
    declared_size: int | None = None
    declared_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_content(self) -> SeedDocument:
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give content or content_base64")
        if self.content_base64 is not None:
            try:
                pybase64.b64decode(self.content_base64, validate=True)
            except binascii.Error as exc:
                raise ValueError("content_base64 is not valid base64") from exc
        return self

    def bytes(self) -> bytes:
        if self.content_base64 is not None:
            return pybase64.b64decode(self.content_base64, validate=True)
        return (self.content or "").encode("utf-8")


class SeedNotification(BaseModel):
    """A permit request filed with the Region, notified to ``instance_code``."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, min_length=1, max_length=200)
    instance_code: str = Field(pattern=r"^[0-9A-Za-z-]{1,40}$")
    file_type: str = "permis_urbanisme"
    received_on: date | None = None
    subject: str = Field(min_length=1, max_length=1000)
    #: As the contract's ``Applicant`` and ``Parcel`` (not checked here: a test may
    #: seed what breaks the hub's event contract).
    applicants: list[dict[str, Any]] = Field(default_factory=list)
    parcels: list[dict[str, Any]] = Field(default_factory=list)
    documents: list[SeedDocument] = Field(default_factory=list, max_length=50)


class SeedBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notifications: list[SeedNotification] = Field(min_length=1, max_length=MAX_SEED)


# -- state ----------------------------------------------------------------------------------


@dataclass
class StoredDocument:
    id: str
    filename: str
    media_type: str
    content: bytes
    declared_size: int
    declared_sha256: str
    fetches: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "mediaType": self.media_type,
            "size": self.declared_size,
            "sha256": self.declared_sha256,
        }


@dataclass
class Notification:
    id: str
    instance_code: str
    file_type: str
    received_on: date
    subject: str
    applicants: list[dict[str, Any]]
    parcels: list[dict[str, Any]]
    documents: dict[str, StoredDocument]
    status: str = AWAITING
    responses: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instanceCode": self.instance_code,
            "status": self.status,
            "receivedOn": self.received_on.isoformat(),
            "fileType": self.file_type,
        }

    def detail(self) -> dict[str, Any]:
        return self.summary() | {
            "subject": self.subject,
            "applicants": self.applicants,
            "parcels": self.parcels,
            "documents": [d.metadata() for d in self.documents.values()],
            "responses": self.responses,
        }


@dataclass
class Notice:
    notifications: dict[str, Notification] = field(default_factory=dict)
    #: instance code → its notifications' ids, oldest first, and each id's position there.
    #: Positions are kept per instance: a cursor (an id) of another instance's listing is
    #: no cursor of this one, and was applied to the wrong list when they were global.
    by_instance: dict[str, list[str]] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)

    def seed(self, seed: SeedNotification) -> Notification:
        notification_id = seed.id or f"NOT-{uuid.uuid4().hex[:16].upper()}"
        if notification_id in self.notifications:
            raise ValueError(f"notification {notification_id} exists already")
        documents = {}
        for index, document in enumerate(seed.documents, start=1):
            content = document.bytes()
            documents[f"D{index}"] = StoredDocument(
                id=f"D{index}",
                filename=document.filename,
                media_type=document.media_type,
                content=content,
                declared_size=(
                    len(content) if document.declared_size is None else document.declared_size
                ),
                declared_sha256=document.declared_sha256 or hashlib.sha256(content).hexdigest(),
            )
        notification = Notification(
            id=notification_id,
            instance_code=seed.instance_code,
            file_type=seed.file_type,
            received_on=seed.received_on or datetime.now(UTC).date(),
            subject=seed.subject,
            applicants=seed.applicants,
            parcels=seed.parcels,
            documents=documents,
        )
        self.notifications[notification_id] = notification
        ids = self.by_instance.setdefault(seed.instance_code, [])
        self.positions.setdefault(seed.instance_code, {})[notification_id] = len(ids)
        ids.append(notification_id)
        return notification

    def page(
        self, instance_code: str, status: str, limit: int, after: str | None
    ) -> tuple[list[Notification], str | None]:
        """One page after the cursor ``after``, which ``is_cursor`` accepted."""
        ids = self.by_instance.get(instance_code, [])
        start = 0 if after is None else self.positions[instance_code][after] + 1
        found: list[Notification] = []
        position = start
        while position < len(ids) and len(found) < limit:
            notification = self.notifications[ids[position]]
            if notification.status == status:
                found.append(notification)
            position += 1
        # The loop stopped early only on a full page: more may follow this last id.
        return found, (ids[position - 1] if position < len(ids) else None)

    def is_cursor(self, instance_code: str, after: str) -> bool:
        """Whether ``after`` is a ``next`` this instance's listing can give."""
        return after in self.positions.get(instance_code, {})


# -- answers ----------------------------------------------------------------------------------


def problem(status: int, slug: str, title: str, detail: str, **extensions: Any) -> JSONResponse:
    return problem_response(status, slug, title, detail, **extensions)


def unauthorized() -> JSONResponse:
    return problem(
        401,
        "unauthorized",
        "Missing or unknown API key",
        "Send the account's key as X-Api-Key (sandbox: sandbox-notice-key-<account>).",
    )


def unavailable() -> JSONResponse:
    return problem(503, "unavailable", "NOTICe unavailable", "The sandbox was told to fail.")


def not_found(what: str, identifier: str) -> JSONResponse:
    return problem(404, "not-found", f"{what} not found", f"No {what} {identifier!r} here.")


def invalid(problems: list[str], slug: str = "invalid-response") -> JSONResponse:
    return problem(
        422, slug, "The request breaks NOTICe's contract", "; ".join(problems), errors=problems
    )


def bad_query(problems: list[str]) -> JSONResponse:
    """A listing's query the contract refuses (400), with every reason."""
    title = "The query breaks NOTICe's contract"
    return problem(400, "invalid-query", title, "; ".join(problems), errors=problems)


def account_of(request: Request) -> str | None:
    key = request.headers.get("X-Api-Key", "")
    account = key.removeprefix(API_KEY_PREFIX)
    if not key.startswith(API_KEY_PREFIX) or not _ACCOUNT.fullmatch(account):
        return None
    return account if secrets.compare_digest(key, API_KEY_PREFIX + account) else None


async def _json_body(request: Request) -> object | None:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
        return None


# -- the routes -------------------------------------------------------------------------------


def router(recorder: Recorder, notice: Notice | None = None) -> APIRouter:
    notice = notice or Notice()
    contract = OpenApiContract(CONTRACT)
    response_request = contract.validator("ResponseRequest")
    instance_code_pattern = str(contract.schema("InstanceCode")["pattern"])
    api = APIRouter(prefix=PREFIX, tags=["sandbox: SPW NOTICe"])

    async def guard(request: Request) -> str | JSONResponse:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return unavailable()
        return account_of(request) or unauthorized()

    @api.get("/instances/{instance_code}/notifications")
    async def list_notifications(
        request: Request,
        instance_code: str,
        # Read as text and checked here, so that what the contract refuses is answered 400
        # with every reason: a limit out of range was clamped, a bad instance code listed
        # nothing, and a wrong cursor gave page 1 again, none of which a client would notice.
        status: str | None = None,
        limit: str = "100",
        after: str | None = None,
    ) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        problems: list[str] = []
        if not re.fullmatch(instance_code_pattern, instance_code):
            problems.append(
                f"instanceCode: {instance_code[:50]!r} does not match {instance_code_pattern!r}"
            )
        if status not in (AWAITING, CLOSED):
            problems.append(f"status: {status!r} is not one of {[AWAITING, CLOSED]}")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_PAGE:
            problems.append(f"limit: {limit[:20]!r} is not an integer from 1 to {MAX_PAGE}")
        if after is not None and not notice.is_cursor(instance_code, after):
            problems.append(
                f"after: {after[:200]!r} is not the next of a page of instance"
                f" {instance_code[:50]!r}'s listing"
            )
        if problems or status is None:
            return bad_query(problems)
        items, cursor = notice.page(instance_code, status, int(limit), after)
        return JSONResponse({"items": [n.summary() for n in items], "next": cursor})

    # ":path": the server has the path decoded before routing, so an id holding "/" (the
    # contract allows any text; quoted by the client) spans segments. Declared before the
    # notification's own route, which would take ".../documents/D1" for an id.
    @api.get("/notifications/{notification_id:path}/documents/{document_id:path}")
    async def get_document(request: Request, notification_id: str, document_id: str) -> Response:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        notification = notice.notifications.get(notification_id)
        document = notification.documents.get(document_id) if notification else None
        if document is None:
            return not_found("document", f"{notification_id}/{document_id}")
        document.fetches += 1
        return Response(document.content, media_type=document.media_type)

    @api.get("/notifications/{notification_id:path}")
    async def get_notification(request: Request, notification_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        notification = notice.notifications.get(notification_id)
        if notification is None:
            return not_found("notification", notification_id)
        notification.fetches += 1
        return JSONResponse(notification.detail())

    @api.post("/notifications/{notification_id:path}/responses", status_code=201)
    async def respond(request: Request, notification_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        notification = notice.notifications.get(notification_id)
        if notification is None:
            return not_found("notification", notification_id)
        body = await _json_body(request)
        problems = ["body: not JSON"] if body is None else contract_errors(response_request, body)
        if problems:
            return invalid(problems)
        assert isinstance(body, dict)
        if "document" in body:
            try:
                pybase64.b64decode(body["document"]["content"], validate=True)
            except binascii.Error:
                return invalid(["document.content: not valid base64"])
        key = request.headers.get("Idempotency-Key") or f"no-key-{uuid.uuid4()}"
        fingerprint = hashlib.sha256(
            json.dumps([notification_id, body], sort_keys=True).encode()
        ).hexdigest()
        async with recorder.lock:
            first = recorder.first(SERVICE, key)
            if first is not None:
                if first.summary.get("fingerprint") != fingerprint:
                    recorder.count_reuse(first)  # not an arrival of the first response
                    return invalid(
                        ["Idempotency-Key: already used for a different response"],
                        slug="idempotency-key-reused",
                    )
                recorder.count_repeat(first)
                return JSONResponse(first.answer, status_code=201)
            if notification.status == CLOSED:
                return problem(
                    409,
                    "already-closed",
                    "Notification closed",
                    f"Notification {notification_id} was closed by a FINAL response; it"
                    " accepts no further response.",
                )
            receipt: dict[str, Any] = {
                "responseId": f"REP-{uuid.uuid4().hex[:16].upper()}",
                "notificationId": notification_id,
                "state": body["state"],
                "receivedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            if "decision" in body:
                receipt["decision"] = body["decision"]
            notification.responses.append(receipt)
            if body["state"] == "FINAL":
                notification.status = CLOSED
            recorder.record(
                SERVICE,
                key,
                tenant=account,  # the recorder's owner field: here the NOTICe account
                answer=receipt,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "notification": notification_id,
                    "state": body["state"],
                    "decision": body.get("decision"),
                    "fingerprint": fingerprint,
                },
            )
        return JSONResponse(receipt, status_code=201)

    control = APIRouter(prefix="/_sandbox/notice", tags=["sandbox control"])

    @control.post("/notifications", status_code=201)
    async def seed(batch: SeedBatch) -> JSONResponse:
        """The Region notifies communes of requests: a batch of notifications."""
        taken = {s.id for s in batch.notifications if s.id} & notice.notifications.keys()
        if taken:
            return problem(
                409, "exists", "Notification exists", f"Already seeded: {sorted(taken)[:5]}"
            )
        created = [notice.seed(s) for s in batch.notifications]
        return JSONResponse(
            {"count": len(created), "items": [n.summary() for n in created]}, status_code=201
        )

    @control.get("/notifications")
    async def notifications(
        instance_code: str | None = None,
        without_response: Annotated[
            Literal["PARTIAL", "FINAL"] | None,
            Query(description="Only the notifications that have no response in this state"),
        ] = None,
        limit: Annotated[int | None, Query(ge=0, description="At most this many items")] = None,
    ) -> dict[str, Any]:
        """The notifications with their state, responses and fetch counts; ``count`` is
        how many match, even when ``limit`` lists fewer (a test waiting for every
        notification to be answered asks for ``without_response=PARTIAL&limit=0``)."""
        matching = [
            n
            for n in notice.notifications.values()
            if instance_code in (None, n.instance_code)
            and (
                without_response is None or all(r["state"] != without_response for r in n.responses)
            )
        ]
        listed = matching[:limit]
        arrivals = (
            {r.answer["responseId"]: r.arrivals for r in recorder.receptions(SERVICE)}
            if listed
            else {}
        )
        items = [
            n.summary()
            | {
                "fetches": n.fetches,
                "documentFetches": {d.id: d.fetches for d in n.documents.values()},
                "responses": [
                    r | {"arrivals": arrivals.get(r["responseId"], 1)} for r in n.responses
                ],
            }
            for n in listed
        ]
        return {"count": len(matching), "items": items}

    routes = APIRouter()
    routes.include_router(api)
    routes.include_router(control)
    return routes
