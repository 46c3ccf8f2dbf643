"""The mail registry's REST API (``/v1``): incoming mail, scanner intake, outgoing mail.

Every route needs a bearer token of a configured tenant with ``courrier:read``
or ``courrier:write``, and sees only that tenant's documents: another
tenant's document is "not found". Input is checked in full before the one
transaction that stores the document and stages its event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated

import pybase64
from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, Security, UploadFile
from fastapi.security import HTTPBearer
from sqlalchemy.exc import IntegrityError

from kernel.api import (
    Offset,
    Page,
    Storage,
    StorageDep,
    authorised,
    download,
    download_responses,
    problem_responses,
)
from kernel.auth import Caller
from kernel.database import utcnow
from kernel.errors import ProblemError
from kernel.settings import HubSettings
from services.courrier import registry
from services.courrier.domain import (
    Direction,
    MailState,
    check_letter,
    check_received_on,
    check_scan,
    normalise_recipient_identifier,
    scan_type_of,
)
from services.courrier.intake import (
    ScanMetadata,
    media_type_of,
    read_scan_metadata,
    replayed_scan,
)
from services.courrier.schemas import (
    IncomingMailCreate,
    IncomingMailView,
    MailSummary,
    OutgoingMailCreate,
    OutgoingMailView,
)
from services.courrier.tables import Mail

READ_SCOPE = "courrier:read"
WRITE_SCOPE = "courrier:write"

#: Documents the bearer scheme in OpenAPI; ``CallerDep`` does the checking.
bearer = HTTPBearer(
    auto_error=False,
    description="A JWT naming the tenant (claim `tenant`) and the scopes "
    f"`{READ_SCOPE}` / `{WRITE_SCOPE}` (claim `scope`).",
)


Reader = Annotated[Caller, Depends(authorised(READ_SCOPE))]
Writer = Annotated[Caller, Depends(authorised(WRITE_SCOPE))]


class InvalidBase64(ProblemError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            422,
            "invalid-base64",
            "The letter is not valid base64",
            f"body_pdf_base64 must be standard base64 (RFC 4648, no line breaks): {reason}.",
        )


class InvalidDateRange(ProblemError):
    def __init__(self, date_from: date, date_to: date) -> None:
        super().__init__(
            422,
            "invalid-date-range",
            "Empty date range",
            f"date_from {date_from.isoformat()} is after date_to {date_to.isoformat()}.",
        )


@dataclass(frozen=True)
class Listing:
    """The query parameters shared by every list of the registry."""

    state: MailState | None
    date_from: date | None
    date_to: date | None
    limit: int
    offset: int

    def filter(self, direction: Direction | None) -> registry.MailFilter:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidDateRange(self.date_from, self.date_to)
        return registry.MailFilter(direction, self.state, self.date_from, self.date_to)


async def listing(
    state: MailState | None = None,
    date_from: Annotated[
        date | None, Query(description="On or after this date (received_on for incoming mail)")
    ] = None,
    date_to: Annotated[date | None, Query(description="On or before this date")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Offset = 0,
) -> Listing:
    return Listing(state, date_from, date_to, limit, offset)


ListingDep = Annotated[Listing, Depends(listing)]


def decode_letter(encoded: str) -> bytes:
    try:
        content = pybase64.b64decode(encoded, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise InvalidBase64(str(exc)) from exc
    check_letter(content)
    return content


def _located(response: Response, path: str) -> None:
    response.headers["Location"] = path


def router() -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Security(bearer)])
    _incoming_routes(api)
    _intake_routes(api)
    _outgoing_routes(api)
    _registry_routes(api)
    return api


def _incoming_routes(api: APIRouter) -> None:
    @api.post(
        "/incoming-mails",
        status_code=201,
        tags=["incoming mail"],
        responses=problem_responses(400, 422),
    )
    async def register_incoming_mail(
        body: IncomingMailCreate, caller: Writer, store: StorageDep, response: Response
    ) -> IncomingMailView:
        """Register an incoming mail: it gets the next number of the year (``E2026/000123``)."""
        now = utcnow()
        check_received_on(body.received_on, now)
        async with store.unit_of_work() as session:
            mail = await registry.register_incoming(
                session,
                tenant=caller.tenant,
                received_on=body.received_on,
                sender=body.sender,
                subject=body.subject,
                assigned_service=body.assigned_service,
                now=now,
            )
        _located(response, f"/v1/incoming-mails/{mail.id}")
        return IncomingMailView.of(mail)

    @api.get("/incoming-mails", tags=["incoming mail"], responses=problem_responses(422))
    async def list_incoming_mails(
        caller: Reader, store: StorageDep, query: ListingDep
    ) -> Page[IncomingMailView]:
        """The tenant's incoming mail, newest registration first."""
        rows, total = await _page(store, caller, query, Direction.INCOMING)
        return Page[IncomingMailView](
            items=[IncomingMailView.of(mail) for mail in rows],
            total=total,
            limit=query.limit,
            offset=query.offset,
        )

    @api.get("/incoming-mails/{mail_id}", tags=["incoming mail"], responses=problem_responses(404))
    async def get_incoming_mail(
        mail_id: str, caller: Reader, store: StorageDep
    ) -> IncomingMailView:
        async with store.sessions() as session:
            mail = await registry.find_mail(session, caller.tenant, mail_id, Direction.INCOMING)
        return IncomingMailView.of(mail)


def _intake_routes(api: APIRouter) -> None:
    @api.post(
        "/intake/scans",
        status_code=201,
        tags=["scanner intake"],
        responses={
            200: {
                "description": "The same document (external_id and MD5) was already "
                "registered: its registration is returned and nothing new is stored"
            },
            **problem_responses(400, 409, 413, 422, 503),
        },
    )
    async def receive_scan(
        request: Request,
        caller: Writer,
        store: StorageDep,
        response: Response,
        metadata: Annotated[
            str,
            Form(
                description="IMIO scanning metadata 1.3 (JSON): external_id, type (COUR_E, EMAIL, "
                "FACT), filesize, filemd5, scan_date…",
            ),
        ],
        file: Annotated[UploadFile, File(description="The scanned document")],
    ) -> IncomingMailView:
        """Register a scanned incoming mail after checking its metadata, size and MD5."""
        settings: HubSettings = request.app.state.settings
        scan = read_scan_metadata(metadata, settings.corpus_dir)
        scan_type = scan_type_of(scan.scan_type)
        content = await file.read()
        md5 = check_scan(content, scan.filesize, scan.filemd5)
        now = utcnow()
        check_received_on(scan.received_on, now)
        replay = await _registered_scan(store, caller.tenant, scan, md5)
        if replay is None:
            upload = registry.Upload(
                scan.filename, media_type_of(scan.filename, file.content_type), content
            )
            try:
                async with store.unit_of_work() as session:
                    mail = await registry.register_incoming(
                        session,
                        tenant=caller.tenant,
                        received_on=scan.received_on,
                        sender="",  # unknown until a clerk reads the scan
                        subject=f"Scan {scan.filename}",
                        assigned_service=scan.treating_group,
                        now=now,
                        scan_type=scan_type,
                        external_id=scan.external_id,
                        scans=(upload,),
                    )
            except IntegrityError:  # a concurrent request registered the same external_id
                replay = await _registered_scan(store, caller.tenant, scan, md5)
                if replay is None:
                    raise
        if replay is not None:
            response.status_code = 200
            return IncomingMailView.of(replay)
        _located(response, f"/v1/incoming-mails/{mail.id}")
        return IncomingMailView.of(mail)


async def _registered_scan(
    store: Storage, tenant: str, scan: ScanMetadata, md5: str
) -> Mail | None:
    async with store.sessions() as session:
        existing = await registry.find_by_external_id(session, tenant, scan.external_id)
    return None if existing is None else replayed_scan(existing, md5, scan)


def _outgoing_routes(api: APIRouter) -> None:
    async def create(store: Storage, caller: Caller, body: OutgoingMailCreate, send: bool) -> Mail:
        identifier = normalise_recipient_identifier(body.recipient.kind, body.recipient.identifier)
        letter = decode_letter(body.body_pdf_base64)
        now = utcnow()
        async with store.unit_of_work() as session:
            mail = await registry.create_outgoing(
                session,
                tenant=caller.tenant,
                recipient_kind=body.recipient.kind,
                recipient_identifier=identifier,
                recipient_name=body.recipient.name,
                subject=body.subject,
                letter=letter,
                now=now,
                send=send,
            )
        return mail

    @api.post(
        "/outgoing-mails",
        status_code=201,
        tags=["outgoing mail"],
        responses=problem_responses(400, 413, 422),
    )
    async def create_outgoing_mail(
        body: OutgoingMailCreate, caller: Writer, store: StorageDep, response: Response
    ) -> OutgoingMailView:
        """Create a draft outgoing mail (numbered ``S2026/000045``) with its PDF letter."""
        mail = await create(store, caller, body, send=False)
        _located(response, f"/v1/outgoing-mails/{mail.id}")
        return OutgoingMailView.of(mail)

    @api.post(
        "/outgoing-mails:send",
        status_code=202,
        tags=["outgoing mail"],
        responses=problem_responses(400, 413, 422),
    )
    async def create_and_send_outgoing_mail(
        body: OutgoingMailCreate, caller: Writer, store: StorageDep, response: Response
    ) -> OutgoingMailView:
        """Create an outgoing mail and send it in one step (state ``sending``)."""
        mail = await create(store, caller, body, send=True)
        _located(response, f"/v1/outgoing-mails/{mail.id}")
        return OutgoingMailView.of(mail)

    @api.post(
        "/outgoing-mails/{mail_id}/send",
        status_code=202,
        tags=["outgoing mail"],
        responses=problem_responses(404, 409),
    )
    async def send_outgoing_mail(
        mail_id: str, caller: Writer, store: StorageDep
    ) -> OutgoingMailView:
        """Send a draft to the recipient's e-Box; its state then follows the gateway's receipts."""
        async with store.unit_of_work() as session:
            mail = await registry.find_mail(session, caller.tenant, mail_id, Direction.OUTGOING)
            await registry.send_outgoing(session, mail, utcnow())
        return OutgoingMailView.of(mail)

    @api.get("/outgoing-mails", tags=["outgoing mail"], responses=problem_responses(422))
    async def list_outgoing_mails(
        caller: Reader, store: StorageDep, query: ListingDep
    ) -> Page[OutgoingMailView]:
        """The tenant's outgoing mail, newest first."""
        rows, total = await _page(store, caller, query, Direction.OUTGOING)
        return Page[OutgoingMailView](
            items=[OutgoingMailView.of(mail) for mail in rows],
            total=total,
            limit=query.limit,
            offset=query.offset,
        )

    @api.get("/outgoing-mails/{mail_id}", tags=["outgoing mail"], responses=problem_responses(404))
    async def get_outgoing_mail(
        mail_id: str, caller: Reader, store: StorageDep
    ) -> OutgoingMailView:
        async with store.sessions() as session:
            mail = await registry.find_mail(session, caller.tenant, mail_id, Direction.OUTGOING)
        return OutgoingMailView.of(mail)


def _registry_routes(api: APIRouter) -> None:
    @api.get("/mails", tags=["registry"], responses=problem_responses(422))
    async def list_mails(
        caller: Reader, store: StorageDep, query: ListingDep, direction: Direction | None = None
    ) -> Page[MailSummary]:
        """The whole registry of the tenant, both directions, newest first."""
        rows, total = await _page(store, caller, query, direction)
        return Page[MailSummary](
            items=[MailSummary.of(mail) for mail in rows],
            total=total,
            limit=query.limit,
            offset=query.offset,
        )

    @api.get(
        "/mails/{mail_id}/files/{file_id}",
        tags=["registry"],
        response_class=Response,
        responses=download_responses(404),
    )
    async def download_file(
        mail_id: str, file_id: str, caller: Reader, store: StorageDep
    ) -> Response:
        """A scan or a letter, as stored."""
        async with store.sessions() as session:
            file = await registry.read_file(session, caller.tenant, mail_id, file_id)
        return download(file.content, file.media_type, file.filename)


async def _page(
    store: Storage, caller: Caller, query: Listing, direction: Direction | None
) -> tuple[list[Mail], int]:
    where = query.filter(direction)
    async with store.sessions() as session:
        return await registry.list_mails(
            session, caller.tenant, where, limit=query.limit, offset=query.offset
        )
