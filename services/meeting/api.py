"""The meeting service's REST API (``/v1``): configurations, meetings, agenda items, decisions.

Every route needs a bearer token of a configured tenant with ``meeting:read``
or ``meeting:write`` and sees only that tenant's documents: another tenant's
item or meeting is "not found". Input is checked in full before the one
transaction that stores the change and stages its event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pybase64
from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPBearer
from sqlalchemy.exc import IntegrityError

from contracts.events.meeting import ItemOrigin
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
from services.meeting import agenda, oparl
from services.meeting.configuration import MeetingConfig, TenantMeetings
from services.meeting.domain import (
    AnnexUpload,
    ExternalIdentifierLinked,
    ItemState,
    MeetingState,
    Transition,
    check_annexes,
    check_item_fields,
    configuration,
)
from services.meeting.schemas import (
    AnnexIn,
    AnnexUpdate,
    AnnexView,
    AttendanceUpdate,
    AttendeeIn,
    DecideBody,
    ItemCreate,
    ItemView,
    MeetingConfigView,
    MeetingCreate,
    MeetingView,
    PresentBody,
    UnplacedRequestView,
)
from services.meeting.tables import Item

READ_SCOPE = "meeting:read"
WRITE_SCOPE = "meeting:write"

bearer = HTTPBearer(
    auto_error=False,
    description="A JWT naming the tenant (claim `tenant`) and the scopes "
    f"`{READ_SCOPE}` / `{WRITE_SCOPE}` (claim `scope`).",
)


@dataclass(frozen=True)
class MeetingCaller:
    """An authorised caller and its tenant's meeting configurations."""

    tenant: str
    subject: str
    meetings: TenantMeetings

    def config(self, config_id: str) -> MeetingConfig:
        return configuration(self.meetings.configurations, config_id)


def _with_meetings(request: Request, caller: Caller) -> MeetingCaller:
    meetings: dict[str, TenantMeetings] = request.app.state.meeting_settings
    return MeetingCaller(caller.tenant, caller.subject, meetings[caller.tenant])


async def reader(
    request: Request, caller: Annotated[Caller, Depends(authorised(READ_SCOPE))]
) -> MeetingCaller:
    return _with_meetings(request, caller)


async def writer(
    request: Request, caller: Annotated[Caller, Depends(authorised(WRITE_SCOPE))]
) -> MeetingCaller:
    return _with_meetings(request, caller)


Reader = Annotated[MeetingCaller, Depends(reader)]
Writer = Annotated[MeetingCaller, Depends(writer)]


class InvalidBase64(ProblemError):
    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(
            422,
            "invalid-base64",
            "An annex is not valid base64",
            f"Annex {filename!r}: content_base64 must be standard base64 (RFC 4648): {reason}.",
        )


def decode_annex(annex: AnnexIn) -> AnnexUpload:
    try:
        content = pybase64.b64decode(annex.content_base64, validate=True)
    except ValueError as exc:  # binascii.Error, or text that is not ASCII
        raise InvalidBase64(annex.filename, str(exc)) from exc
    return AnnexUpload(
        annex.title, annex.filename, annex.media_type, content, annex.md5, annex.publishable
    )


def attendees_of(attendees: list[AttendeeIn]) -> tuple[agenda.Attendee, ...]:
    return tuple(agenda.Attendee(a.name, a.role, a.present) for a in attendees)


def router() -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Security(bearer)])
    _configuration_routes(api)
    _meeting_routes(api)
    _item_routes(api)
    _decision_routes(api)
    return api


def _configuration_routes(api: APIRouter) -> None:
    @api.get("/meeting-configs", tags=["configurations"], responses=problem_responses())
    async def list_meeting_configs(caller: Reader) -> list[MeetingConfigView]:
        """The tenant's meeting configurations (college, council) and their categories."""
        return [MeetingConfigView.of(c) for c in caller.meetings.configurations.values()]

    @api.get("/unplaced-requests", tags=["configurations"], responses=problem_responses())
    async def list_unplaced_requests(
        caller: Reader,
        store: StorageDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> list[UnplacedRequestView]:
        """Item requests of other services that could not be placed (e.g. unknown configuration)."""
        async with store.sessions() as session:
            rows = await agenda.list_unplaced_requests(
                session, caller.tenant, limit=limit, offset=offset
            )
        return [UnplacedRequestView.of(row) for row in rows]


def _meeting_routes(api: APIRouter) -> None:
    @api.post(
        "/meetings", status_code=201, tags=["meetings"], responses=problem_responses(400, 422)
    )
    async def create_meeting(
        body: MeetingCreate, caller: Writer, store: StorageDep, response: Response
    ) -> MeetingView:
        """Schedule a meeting of one of the tenant's configurations."""
        config = caller.config(body.meeting_config)
        async with store.unit_of_work() as session:
            meeting = await agenda.create_meeting(
                session,
                tenant=caller.tenant,
                config=config,
                date=body.date,
                place=body.place,
                attendees=attendees_of(body.attendees),
                now=utcnow(),
            )
        response.headers["Location"] = f"/v1/meetings/{meeting.id}"
        return MeetingView.of(meeting)

    @api.get("/meetings", tags=["meetings"], responses=problem_responses(422))
    async def list_meetings(
        caller: Reader,
        store: StorageDep,
        meeting_config: str | None = None,
        state: MeetingState | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> Page[MeetingView]:
        """The tenant's meetings, earliest first."""
        async with store.sessions() as session:
            rows, total = await agenda.list_meetings(
                session,
                caller.tenant,
                meeting_config=meeting_config,
                state=state,
                limit=limit,
                offset=offset,
            )
        return Page[MeetingView](
            items=[MeetingView.of(m) for m in rows], total=total, limit=limit, offset=offset
        )

    @api.get("/meetings/{meeting_id}", tags=["meetings"], responses=problem_responses(404))
    async def get_meeting(meeting_id: str, caller: Reader, store: StorageDep) -> MeetingView:
        async with store.sessions() as session:
            meeting = await agenda.find_meeting(session, caller.tenant, meeting_id)
        return MeetingView.of(meeting)

    @api.put(
        "/meetings/{meeting_id}/attendance",
        tags=["meetings"],
        responses=problem_responses(404, 409, 422),
    )
    async def record_attendance(
        meeting_id: str, body: AttendanceUpdate, caller: Writer, store: StorageDep
    ) -> MeetingView:
        """Record who sits and who was present (while the meeting is open)."""
        async with store.unit_of_work() as session:
            meeting = await agenda.find_meeting(session, caller.tenant, meeting_id)
            await agenda.record_attendance(session, meeting, attendees_of(body.attendees), utcnow())
        return MeetingView.of(meeting)

    @api.post(
        "/meetings/{meeting_id}/close", tags=["meetings"], responses=problem_responses(404, 409)
    )
    async def close_meeting(meeting_id: str, caller: Writer, store: StorageDep) -> MeetingView:
        """Close a meeting whose items are all decided (``meeting.meeting.closed.v1``)."""
        async with store.unit_of_work() as session:
            meeting = await agenda.find_meeting(session, caller.tenant, meeting_id)
            config = caller.config(meeting.meeting_config)
            await agenda.close_meeting(session, config, meeting, utcnow())
        return MeetingView.of(meeting)


def _item_routes(api: APIRouter) -> None:
    @api.post(
        "/items",
        status_code=201,
        tags=["items"],
        responses=problem_responses(400, 404, 409, 413, 422),
    )
    async def create_item(
        body: ItemCreate, caller: Writer, store: StorageDep, response: Response
    ) -> ItemView:
        """Create an agenda item in a configuration (``meeting.item.created.v1``)."""
        config = caller.config(body.meeting_config)
        check_item_fields(config, body.category, body.proposing_service)
        annexes = tuple(decode_annex(annex) for annex in body.annexes)
        check_annexes(annexes)
        new = agenda.NewItem(
            title=body.title,
            proposing_service=body.proposing_service,
            category=body.category,
            description=body.description,
            motivation=body.motivation,
            decision_text=body.decision_text,
            external_identifier=body.external_identifier,
            preferred_meeting_id=body.preferred_meeting_id,
            concerned_party=body.concerned_party,
            annexes=annexes,
        )
        agenda.check_new_item(new)  # the concerned party's name: the event contract's type
        item = await create_item_once(store, caller.tenant, config, new, "rest", caller.subject)
        response.headers["Location"] = f"/v1/items/{item.id}"
        return ItemView.of(item)

    @api.get("/items", tags=["items"], responses=problem_responses(422))
    async def list_items(
        caller: Reader,
        store: StorageDep,
        meeting_config: str | None = None,
        state: ItemState | None = None,
        category: str | None = None,
        meeting_id: str | None = None,
        external_identifier: str | None = None,
        text: Annotated[str | None, Query(description="In the title or description")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Offset = 0,
    ) -> Page[ItemView]:
        """The tenant's items, newest first."""
        where = agenda.ItemFilter(
            meeting_config=meeting_config,
            state=state,
            category=category,
            meeting_id=meeting_id,
            external_identifier=external_identifier,
            text=text,
        )
        async with store.sessions() as session:
            rows, total = await agenda.list_items(
                session, caller.tenant, where, limit=limit, offset=offset
            )
        return Page[ItemView](
            items=[ItemView.of(item) for item in rows], total=total, limit=limit, offset=offset
        )

    @api.get("/items/{item_id}", tags=["items"], responses=problem_responses(404))
    async def get_item(item_id: str, caller: Reader, store: StorageDep) -> ItemView:
        async with store.sessions() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
        return ItemView.of(item)

    @api.get(
        "/items/{item_id}/annexes/{annex_id}",
        tags=["items"],
        response_class=Response,
        responses=download_responses(404),
    )
    async def download_annex(
        item_id: str, annex_id: str, caller: Reader, store: StorageDep
    ) -> Response:
        async with store.sessions() as session:
            annex = await agenda.read_annex(session, caller.tenant, item_id, annex_id)
        return download(annex.content, annex.media_type, annex.filename)

    @api.patch(
        "/items/{item_id}/annexes/{annex_id}",
        tags=["items"],
        responses=problem_responses(404, 409, 422),
    )
    async def update_annex(
        item_id: str, annex_id: str, body: AnnexUpdate, caller: Writer, store: StorageDep
    ) -> AnnexView:
        """Mark an annex publishable with the decision (OParl), or not, until it is published.

        Annexes of items created through WS4PM, which has no such field, start
        unpublishable like every other: a clerk marks here what may be public.
        """
        async with store.unit_of_work() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
            annex = await agenda.mark_annex_publishable(
                session, item, annex_id, body.publishable, utcnow()
            )
        return AnnexView.of(annex)

    for transition in (Transition.PROPOSE, Transition.VALIDATE):
        _simple_transition_route(api, transition)

    @api.post(
        "/items/{item_id}/present", tags=["items"], responses=problem_responses(404, 409, 422)
    )
    async def present_item(
        item_id: str, body: PresentBody, caller: Writer, store: StorageDep
    ) -> ItemView:
        """Put a validated (or postponed) item on the agenda of an open meeting."""
        async with store.unit_of_work() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
            meeting = await agenda.find_meeting(session, caller.tenant, body.meeting_id)
            await agenda.apply_transition(session, item, Transition.PRESENT, utcnow(), meeting)
        return ItemView.of(item)


def _simple_transition_route(api: APIRouter, transition: Transition) -> None:
    async def move(item_id: str, caller: Writer, store: StorageDep) -> ItemView:
        async with store.unit_of_work() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
            await agenda.apply_transition(session, item, transition, utcnow())
        return ItemView.of(item)

    api.add_api_route(
        f"/items/{{item_id}}/{transition}",
        move,
        methods=["POST"],
        tags=["items"],
        responses=problem_responses(404, 409),
        summary=f"{transition.capitalize()} an item",
        operation_id=f"{transition}_item",
    )


def _decision_routes(api: APIRouter) -> None:
    @api.post(
        "/items/{item_id}/decide",
        tags=["decisions"],
        responses=problem_responses(404, 409, 413, 422),
    )
    async def decide_item(
        item_id: str, body: DecideBody, caller: Writer, store: StorageDep
    ) -> ItemView:
        """Record the decision on a presented item (``meeting.item.decided.v1``).

        Accepted, amended and refused decisions get the next decision number of the
        configuration and year; a postponed item gets none and can be presented again.
        """
        async with store.unit_of_work() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
            config = caller.config(item.meeting_config)
            await agenda.decide(session, config, item, body.decision, body.decision_text, utcnow())
        return ItemView.of(item)

    @api.post(
        "/items/{item_id}/publish", tags=["decisions"], responses=problem_responses(404, 409, 413)
    )
    async def publish_decision(
        item_id: str, request: Request, caller: Writer, store: StorageDep
    ) -> ItemView:
        """Publish the decision of a closed meeting (``meeting.decision.published.v1``)."""
        async with store.unit_of_work() as session:
            item = await agenda.find_item(session, caller.tenant, item_id)
            await agenda.publish_decision(session, item)
        oparl.publication_committed(request, caller.tenant)
        return ItemView.of(item)


async def create_item_once(
    store: Storage,
    tenant: str,
    config: MeetingConfig,
    new: agenda.NewItem,
    origin: ItemOrigin,
    creator: str,
) -> Item:
    """Create the item; a concurrent twin with the same external identifier is a conflict."""
    try:
        async with store.unit_of_work() as session:
            return await agenda.create_item(
                session,
                tenant=tenant,
                config=config,
                new=new,
                origin=origin,
                creator=creator,
                now=utcnow(),
            )
    except IntegrityError:
        if new.external_identifier is None:
            raise
        async with store.sessions() as session:
            linked = await agenda.find_linked_item(
                session, tenant, new.external_identifier, config.id
            )
        if linked is None:
            raise
        raise ExternalIdentifierLinked(new.external_identifier, linked.id) from None
