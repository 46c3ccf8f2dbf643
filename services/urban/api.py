"""The urban service's REST API (``/v1``): permit files, their procedure, unprocessed events.

Every route needs a bearer token of a configured tenant with ``urban:read``
or ``urban:write`` and sees only that tenant's files: another tenant's file
is "not found". Input is checked in full before the one transaction that
stores the change and stages its events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events.urban import Applicant, FileType, Parcel
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
from kernel.days import commune_day
from kernel.errors import ProblemError
from services.urban import permits
from services.urban.configuration import TenantUrban
from services.urban.consumers import replay
from services.urban.domain import FileState
from services.urban.permits import UnprocessedNotFound
from services.urban.schemas import (
    ComplementsBody,
    DecisionExtensionBody,
    FileCreate,
    FileSummary,
    FileView,
    IncompleteBody,
    InquiryBody,
    NoticeResponseCreate,
    OpinionCreate,
    OpinionView,
    ReplayOutcome,
    UnprocessedView,
)
from services.urban.tables import PermitFile

READ_SCOPE = "urban:read"
WRITE_SCOPE = "urban:write"

bearer = HTTPBearer(
    auto_error=False,
    description="A JWT naming the tenant (claim `tenant`) and the scopes "
    f"`{READ_SCOPE}` / `{WRITE_SCOPE}` (claim `scope`).",
)


@dataclass(frozen=True)
class UrbanCaller:
    """An authorised caller and its tenant's urban settings."""

    tenant: str
    subject: str
    settings: TenantUrban


def _with_settings(request: Request, caller: Caller) -> UrbanCaller:
    settings: dict[str, TenantUrban] = request.app.state.urban_settings
    return UrbanCaller(caller.tenant, caller.subject, settings[caller.tenant])


async def reader(
    request: Request, caller: Annotated[Caller, Depends(authorised(READ_SCOPE))]
) -> UrbanCaller:
    return _with_settings(request, caller)


async def writer(
    request: Request, caller: Annotated[Caller, Depends(authorised(WRITE_SCOPE))]
) -> UrbanCaller:
    return _with_settings(request, caller)


Reader = Annotated[UrbanCaller, Depends(reader)]
Writer = Annotated[UrbanCaller, Depends(writer)]


def router() -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Security(bearer)])
    _file_routes(api)
    _procedure_routes(api)
    _notice_routes(api)
    return api


async def file_view(session: AsyncSession, file: PermitFile) -> FileView:
    return FileView.of_file(file, await permits.notice_responses(session, file))


def _file_routes(api: APIRouter) -> None:
    @api.post("/files", status_code=201, tags=["files"], responses=problem_responses(400, 422))
    async def open_file(
        body: FileCreate, caller: Writer, store: StorageDep, response: Response
    ) -> FileView:
        """Open a file filed at the counter (``urban.file.opened.v1``); NOTICe files open
        themselves from their notification."""
        new = permits.checked_new_file(
            body.file_type,
            body.subject,
            body.received_on,
            [Applicant.model_validate(a.model_dump()) for a in body.applicants],
            [Parcel.model_construct(**p.model_dump()) for p in body.parcels],
            today=commune_day(utcnow()),
        )
        async with store.unit_of_work() as session:
            file = await permits.open_file(session, caller.settings, new, utcnow(), origin="rest")
            view = await file_view(session, file)
        response.headers["Location"] = f"/v1/files/{file.id}"
        return view

    @api.get("/files", tags=["files"], responses=problem_responses(422))
    async def list_files(
        caller: Reader,
        store: StorageDep,
        state: FileState | None = None,
        file_type: FileType | None = None,
        reference: str | None = None,
        identity_flagged: bool | None = None,
        deadline_before: Annotated[
            date | None, Query(description="Files whose next deadline falls by this day")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> Page[FileSummary]:
        """The tenant's files, newest first (by next deadline with ``deadline_before``)."""
        where = permits.FileFilter(state, file_type, reference, identity_flagged, deadline_before)
        async with store.sessions() as session:
            rows, total = await permits.list_files(
                session, caller.tenant, where, limit=limit, offset=offset
            )
        return Page[FileSummary](
            items=[FileSummary.of(file) for file in rows], total=total, limit=limit, offset=offset
        )

    @api.get("/files/{file_id}", tags=["files"], responses=problem_responses(404))
    async def get_file(file_id: str, caller: Reader, store: StorageDep) -> FileView:
        """A file with its applicants (and their identity check), opinions, deadlines and
        NOTICe responses."""
        async with store.sessions() as session:
            file = await permits.find_file(session, caller.tenant, file_id)
            return await file_view(session, file)

    @api.get(
        "/files/{file_id}/documents/{document_id}",
        tags=["files"],
        response_class=Response,
        responses=download_responses(404),
    )
    async def download_document(
        file_id: str, document_id: str, caller: Reader, store: StorageDep
    ) -> Response:
        async with store.sessions() as session:
            document = await permits.read_document(session, caller.tenant, file_id, document_id)
        return download(document.content, document.media_type, document.filename)

    @api.get("/unprocessed-notifications", tags=["files"], responses=problem_responses(422))
    async def list_unprocessed(
        caller: Reader,
        store: StorageDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> list[UnprocessedView]:
        """Inbound events that could not be applied (NOTICe notifications with a bad CaPaKey,
        NISS or document, for another instance, or for a closed notification; opinions and
        decisions for files this tenant does not have), kept with the reason."""
        async with store.sessions() as session:
            rows = await permits.list_unprocessed(
                session, caller.tenant, limit=limit, offset=offset
            )
        return [UnprocessedView.of(row) for row in rows]

    @api.post(
        "/unprocessed-notifications/{event_id}/replay",
        tags=["files"],
        responses=problem_responses(404, 409, 422),
    )
    async def replay_unprocessed(
        event_id: str, caller: Writer, store: StorageDep, request: Request
    ) -> ReplayOutcome:
        """Apply a kept event again once its cause is fixed (the tenant's NOTICe instance
        configured, the file an opinion or a decision names opened): it opens or changes
        its file and is no longer kept. When it still breaks a rule, that rule's Problem is
        the answer and the event stays kept, its reason brought up to date."""
        urban_settings = request.app.state.urban_settings
        try:
            async with store.unit_of_work() as session:
                kept = await permits.find_unprocessed(session, caller.tenant, event_id)
                file = await replay(session, urban_settings, kept)
                return ReplayOutcome(
                    event_id=event_id,
                    event_type=kept.event_type,
                    file_id=file.id if file else None,
                    reference=file.reference if file else None,
                )
        except ProblemError as problem:
            if not isinstance(problem, UnprocessedNotFound):
                async with store.beside_the_request() as session:
                    await permits.note_replay_failed(session, caller.tenant, event_id, problem)
            raise


FileChange = Callable[[AsyncSession, TenantUrban, PermitFile], Awaitable[object]]


async def change_file(
    store: Storage, caller: UrbanCaller, file_id: str, change: FileChange
) -> FileView:
    async with store.unit_of_work() as session:
        file = await permits.find_file(session, caller.tenant, file_id)
        async with permits.one_change(session, file):
            await change(session, caller.settings, file)
        return await file_view(session, file)


def _procedure_routes(api: APIRouter) -> None:
    responses = problem_responses(404, 409, 422)

    @api.post("/files/{file_id}/complete", tags=["procedure"], responses=responses)
    async def declare_complete(file_id: str, caller: Writer, store: StorageDep) -> FileView:
        """The file is complete: the decision clock starts; a NOTICe file gets its PARTIAL
        response (``urban.notice.response_requested.v1``)."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            await permits.declare_complete(s, t, f, utcnow())

        return await change_file(store, caller, file_id, change)

    @api.post("/files/{file_id}/incomplete", tags=["procedure"], responses=responses)
    async def declare_incomplete(
        file_id: str, body: IncompleteBody, caller: Writer, store: StorageDep
    ) -> FileView:
        """The file lacks documents; the check starts over when the applicant completes it."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            await permits.declare_incomplete(s, t, f, body.missing_documents, utcnow())

        return await change_file(store, caller, file_id, change)

    @api.post("/files/{file_id}/complements", tags=["procedure"], responses=responses)
    async def receive_complements(
        file_id: str, body: ComplementsBody, caller: Writer, store: StorageDep
    ) -> FileView:
        """The applicant sent the missing documents of an incomplete file: it is received
        again, its completeness check counted from that day (NOTICe files do this by
        themselves when the notification brings new documents)."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            now = utcnow()
            await permits.receive_complements(s, t, f, body.received_on or commune_day(now), now)

        return await change_file(store, caller, file_id, change)

    @api.post("/files/{file_id}/inquiry", tags=["procedure"], responses=responses)
    async def record_inquiry(
        file_id: str, body: InquiryBody, caller: Writer, store: StorageDep
    ) -> FileView:
        """A public inquiry opens (15 days, suspended 16 July-15 August and 24 December-
        1 January); the decision deadline moves accordingly."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            await permits.record_inquiry(s, t, f, body.starts_on, utcnow())

        return await change_file(store, caller, file_id, change)

    @api.post("/files/{file_id}/opinions", status_code=201, tags=["procedure"], responses=responses)
    async def request_opinion(
        file_id: str, body: OpinionCreate, caller: Writer, store: StorageDep
    ) -> OpinionView:
        """Ask a body for its opinion (``urban.opinion.requested.v1``; the gateway delivers it)."""
        async with store.unit_of_work() as session:
            file = await permits.find_file(session, caller.tenant, file_id)
            async with permits.one_change(session, file):
                opinion = await permits.request_opinion(
                    session, caller.settings, file, body.body, body.subject, body.due_on, utcnow()
                )
        return OpinionView.of(opinion)

    @api.post("/files/{file_id}/request-decision", tags=["procedure"], responses=responses)
    async def request_decision(file_id: str, caller: Writer, store: StorageDep) -> FileView:
        """Ask the college for its decision (``urban.file.decision_needed.v1``). The last
        opinion in does it by itself when no public inquiry is running; this is for files
        that need no opinion, and for those whose inquiry ended after their last opinion
        (the clerk reports on the inquiry first). A file awaiting its decision may ask again:
        a request meeting could not place is kept there, unplaced, and a placed one is not
        doubled. Refused while an opinion request did not reach its body."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            await permits.request_decision(s, t, f, utcnow())

        return await change_file(store, caller, file_id, change)

    @api.post(
        "/files/{file_id}/decision-deadline-extension", tags=["procedure"], responses=responses
    )
    async def extend_decision_deadline(
        file_id: str, body: DecisionExtensionBody, caller: Writer, store: StorageDep
    ) -> FileView:
        """The college extended its decision deadline by 30 days, today, once (CoDT D.IV.46,
        last paragraph; ``urban.file.decision_deadline_extended.v1``). Only for a permis
        d'urbanisme or d'urbanisation, a certificat d'urbanisme n°2 or a déclaration
        urbanistique, found complete, not decided, and before its deadline has passed."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            await permits.extend_decision_deadline(s, t, f, body.reason, utcnow())

        return await change_file(store, caller, file_id, change)


def _notice_routes(api: APIRouter) -> None:
    @api.post(
        "/files/{file_id}/notice-responses",
        tags=["NOTICe"],
        responses=problem_responses(404, 409, 422),
    )
    async def respond_to_notice(
        file_id: str, body: NoticeResponseCreate, caller: Writer, store: StorageDep
    ) -> FileView:
        """Send the SPW a PARTIAL response (news of the procedure), or a decided file's
        FINAL response again once NOTICe refused the first for good; refused while the
        FINAL response closes the notification."""

        async def change(s: AsyncSession, t: TenantUrban, f: PermitFile) -> None:
            if body.state == "FINAL":
                permits.send_final_response(s, f, body.message, utcnow())
            else:
                permits.respond_to_notice(s, f, "PARTIAL", body.message, utcnow())

        return await change_file(store, caller, file_id, change)
