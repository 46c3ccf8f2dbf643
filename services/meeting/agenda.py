"""The meeting service's use cases, each inside the caller's transaction with its events staged.

Callers (REST, WS4PM, the urban request consumer) open the unit of work and
check their input first; a use case changes the tables and stages the
matching event, so the change and its event commit together or not at all.

Concurrency: every change that depends on a meeting being open starts with
a guarded ``UPDATE`` of the meeting row (``state = 'open'``). It takes the
row's lock on PostgreSQL and the database's write lock on SQLite, so
closing a meeting and deciding in it are serialised, and a decision never
lands in a meeting closed meanwhile. Two decisions on one item are caught
by the item's optimistic version; decision numbers come from a counter row
updated in the same transaction, so a rolled back decision gives its
number back: numbers stay gap-free.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    FunctionElement,
    String,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import undefer
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.sql.compiler import SQLCompiler

from contracts.envelope import CloudEvent, new_event
from contracts.events.meeting import (
    AnnexReference,
    ConcernedParty,
    DecisionPublished,
    DecisionSummary,
    DecisionTransmissionRequested,
    ItemCreated,
    ItemDecided,
    ItemOrigin,
    MeetingClosed,
)
from kernel import outbox
from kernel.database import listing_page, next_in_sequence
from kernel.errors import Conflict, NotFound, ProblemError
from kernel.migrations import table_of
from kernel.sqlite_driver import UNICODE_LOWER
from services.meeting.configuration import MeetingConfig
from services.meeting.domain import (
    FINAL_STATES,
    MAX_ANNEX_FILENAME,
    MAX_CONCERNED_PARTY_NAME,
    MAX_EXTERNAL_IDENTIFIER,
    MAX_ITEM_TEXT,
    MAX_PROPOSING_SERVICE,
    AnnexPublicationFixed,
    AnnexUpload,
    Decision,
    DeliveryKind,
    DeliveryStatus,
    ExternalIdentifierLinked,
    ItemAlreadyDecided,
    ItemState,
    MeetingHasUndecidedItems,
    MeetingIsClosed,
    MeetingOfAnotherConfig,
    MeetingState,
    NothingToPublish,
    PostponedToAnEarlierMeeting,
    Transition,
    allocate_decision_number,
    check_decidable,
    check_length,
    state_after,
)
from services.meeting.publication import publication_turn, record_publication
from services.meeting.tables import (
    Annex,
    DecisionCounter,
    DecisionDelivery,
    Item,
    Meeting,
    UnplacedRequest,
)

SOURCE = "urn:hub:meeting"
log = logging.getLogger(__name__)
#: What a change of an item's events asks, when they would be too large to send.
TOO_LARGE_ADVICE = "Shorten the item's texts."


def _stage(session: AsyncSession, event: CloudEvent) -> None:
    """Stage ``event``, or refuse the change (413) when the producer would refuse its
    record, saying what to shorten."""
    outbox.stage(session, event, TOO_LARGE_ADVICE)


class SqlDecisionCounters:
    """One counter row per (tenant, configuration, year), incremented in the caller's transaction.

    The UPDATE holds the row's write lock (PostgreSQL) or the database's
    (SQLite) until commit, so concurrent decisions queue on it.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def next_sequence(self, tenant: str, meeting_config: str, year: int) -> int:
        key = {"tenant": tenant, "meeting_config": meeting_config, "year": year}
        return await next_in_sequence(self._session, table_of(DecisionCounter), key)


@dataclass(frozen=True)
class Attendee:
    name: str
    role: str | None
    present: bool | None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "present": self.present}


@dataclass(frozen=True)
class NewItem:
    """What an item is created with; already checked against its configuration."""

    title: str
    proposing_service: str
    category: str | None = None
    description: str | None = None
    motivation: str | None = None
    decision_text: str | None = None
    external_identifier: str | None = None
    preferred_meeting_id: str | None = None
    concerned_party: ConcernedParty | None = None
    annexes: tuple[AnnexUpload, ...] = ()


class BlankTitle(ProblemError):
    def __init__(self) -> None:
        super().__init__(
            422,
            "blank-title",
            "An item needs a title",
            "The item's title is empty or only spaces; it is what agendas and published "
            "decisions name the item by.",
            field="title",
        )


def check_new_item(new: NewItem) -> None:
    """The item has a title, and its texts fit their columns and its events
    (``domain.MAX_*``), whichever way it came: REST's schema, WS4PM's and urban's event
    contract leave some unbounded, and WS4PM's takes an empty title."""
    if not new.title.strip():
        raise BlankTitle()
    check_length("external_identifier", new.external_identifier, MAX_EXTERNAL_IDENTIFIER)
    check_length("proposing_service", new.proposing_service, MAX_PROPOSING_SERVICE)
    party_name = new.concerned_party.name if new.concerned_party else None
    check_length("concerned_party.name", party_name, MAX_CONCERNED_PARTY_NAME)
    check_length("description", new.description, MAX_ITEM_TEXT)
    check_length("motivation", new.motivation, MAX_ITEM_TEXT)
    check_length("decision_text", new.decision_text, MAX_ITEM_TEXT)
    for annex in new.annexes:
        check_length("annex filename", annex.filename, MAX_ANNEX_FILENAME)


# -- meetings ---------------------------------------------------------------------------


async def create_meeting(
    session: AsyncSession,
    *,
    tenant: str,
    config: MeetingConfig,
    date: datetime,
    place: str,
    attendees: tuple[Attendee, ...],
    now: datetime,
) -> Meeting:
    meeting = Meeting(
        id=str(uuid.uuid4()),
        tenant=tenant,
        meeting_config=config.id,
        date=date,
        place=place,
        state=MeetingState.OPEN,
        attendees=[attendee.as_json() for attendee in attendees],
        created_at=now,
        updated_at=now,
    )
    session.add(meeting)
    log.info("tenant %s scheduled a %s meeting %s", tenant, config.id, meeting.id)
    return meeting


async def _hold_open_meeting(session: AsyncSession, meeting: Meeting, now: datetime) -> None:
    """Lock the meeting for this transaction, or refuse because it is closed (see module doc)."""
    result = await session.execute(
        update(Meeting)
        .where(
            Meeting.id == meeting.id,
            Meeting.tenant == meeting.tenant,
            Meeting.state == MeetingState.OPEN,
        )
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise MeetingIsClosed(meeting.id)


async def record_attendance(
    session: AsyncSession, meeting: Meeting, attendees: tuple[Attendee, ...], now: datetime
) -> None:
    await _hold_open_meeting(session, meeting, now)
    meeting.attendees = [attendee.as_json() for attendee in attendees]
    meeting.updated_at = now


async def close_meeting(
    session: AsyncSession, config: MeetingConfig, meeting: Meeting, now: datetime
) -> None:
    await _hold_open_meeting(session, meeting, now)
    items = list(
        (
            await session.scalars(
                select(Item)
                .where(Item.tenant == meeting.tenant, Item.meeting_id == meeting.id)
                .order_by(Item.decision_number, Item.created_at)
            )
        ).all()
    )
    undecided = [item.id for item in items if item.state == ItemState.PRESENTED]
    if undecided:
        raise MeetingHasUndecidedItems(meeting.id, undecided)
    meeting.state, meeting.closed_at, meeting.updated_at = MeetingState.CLOSED, now, now
    data = MeetingClosed(
        meeting_id=meeting.id,
        meeting_config=meeting.meeting_config,
        meeting_kind=config.kind,
        meeting_date=meeting.date,
        place=meeting.place,
        decisions=[
            DecisionSummary(
                item_id=item.id,
                decision=Decision(item.decision).value,
                decision_number=item.decision_number,
            )
            for item in items
            if item.decision is not None
        ],
    )
    _stage(session, new_event(data, tenant=meeting.tenant, subject=meeting.id, source=SOURCE))
    log.info("tenant %s closed meeting %s (%d items)", meeting.tenant, meeting.id, len(items))


# -- items --------------------------------------------------------------------------------


async def create_item(
    session: AsyncSession,
    *,
    tenant: str,
    config: MeetingConfig,
    new: NewItem,
    origin: ItemOrigin,
    creator: str,
    now: datetime,
    requested_by_event_id: str | None = None,
) -> Item:
    check_new_item(new)
    await refuse_linked(session, tenant, new.external_identifier, config.id)
    if new.preferred_meeting_id is not None:
        # A meeting that cannot take the item (meetingsAcceptingItems would not list it)
        # is no preference: WS4PM's getItemInfos showed a closed meeting's date.
        preferred = await find_meeting(session, tenant, new.preferred_meeting_id)
        if preferred.meeting_config != config.id:
            raise MeetingOfAnotherConfig(preferred.meeting_config, config.id)
        if preferred.state != MeetingState.OPEN:
            raise MeetingIsClosed(preferred.id)
    party = new.concerned_party
    item = Item(
        id=str(uuid.uuid4()),
        tenant=tenant,
        meeting_config=config.id,
        state=ItemState.CREATED,
        title=new.title,
        proposing_service=new.proposing_service,
        category=new.category,
        description=new.description,
        motivation=new.motivation,
        decision_text=new.decision_text,
        external_identifier=new.external_identifier,
        preferred_meeting_id=new.preferred_meeting_id,
        concerned_party_kind=party.kind if party else None,
        concerned_party_identifier=party.identifier if party else None,
        concerned_party_name=party.name if party else None,
        origin=origin,
        creator=creator,
        created_at=now,
        updated_at=now,
        deliveries=[],  # owed once decided; empty now, so no lazy load after commit
        annexes=[
            Annex(
                id=str(uuid.uuid4()),
                tenant=tenant,
                position=position,
                title=annex.title,
                filename=annex.filename,
                media_type=annex.media_type,
                size=len(annex.content),
                md5=annex.md5,
                content=annex.content,
                created_at=now,
                publishable=annex.publishable,
            )
            for position, annex in enumerate(new.annexes)
        ],
    )
    session.add(item)
    data = ItemCreated(
        item_id=item.id,
        meeting_config=config.id,
        title=item.title,
        proposing_service=item.proposing_service,
        category=item.category,
        external_identifier=item.external_identifier,
        origin=origin,
        requested_by_event_id=requested_by_event_id,
    )
    _stage(session, new_event(data, tenant=tenant, subject=item.id, source=SOURCE))
    log.info("tenant %s created %s item %s (%s)", tenant, config.id, item.id, origin)
    return item


async def apply_transition(
    session: AsyncSession,
    item: Item,
    transition: Transition,
    now: datetime,
    meeting: Meeting | None = None,
) -> None:
    """Propose, validate or present an item (into an open meeting of its configuration)."""
    item_id = item.id  # a failed flush expires the item's attributes
    new_state = state_after(item.id, ItemState(item.state), transition)
    if transition is Transition.PRESENT:
        if meeting is None:
            raise ValueError("presenting an item needs the meeting")
        if meeting.meeting_config != item.meeting_config:
            raise MeetingOfAnotherConfig(meeting.meeting_config, item.meeting_config)
        if item.state == ItemState.POSTPONED and item.meeting_id is not None:
            postponed_at = await session.get(Meeting, item.meeting_id)
            if postponed_at is not None and meeting.date <= postponed_at.date:
                raise PostponedToAnEarlierMeeting(postponed_at.date, meeting.date)
        await _hold_open_meeting(session, meeting, now)
        item.meeting_id, item.decision, item.decided_at = meeting.id, None, None
    item.state, item.updated_at = new_state, now
    try:
        await session.flush()
    except StaleDataError as exc:  # a concurrent request moved it first
        raise ItemAlreadyDecided(item_id, "changed by a concurrent request") from exc


async def decide(
    session: AsyncSession,
    config: MeetingConfig,
    item: Item,
    decision: Decision,
    decision_text: str | None,
    now: datetime,
) -> None:
    item_id = item.id
    check_length("decision_text", decision_text, MAX_ITEM_TEXT)
    check_decidable(item_id, ItemState(item.state))
    if item.meeting_id is None:
        raise RuntimeError(f"presented item {item_id} has no meeting")
    meeting = await find_meeting(session, item.tenant, item.meeting_id)
    await _hold_open_meeting(session, meeting, now)
    number = (
        await allocate_decision_number(
            SqlDecisionCounters(session), item.tenant, config, meeting.date
        )
        if decision.is_numbered
        else None
    )
    category = config.category(item.category) if item.category else None
    item.state, item.decision, item.decision_number = ItemState(decision.value), decision, number
    item.decision_text = decision_text if decision_text is not None else item.decision_text
    item.decided_at = item.updated_at = now
    item.oversight_applies = bool(category and category.oversight) and decision.is_numbered
    item.publication_required = bool(category and category.publication) and decision.is_numbered
    try:
        await session.flush()
    except StaleDataError as exc:  # a concurrent request decided it first
        raise ItemAlreadyDecided(item_id, "decided by a concurrent request") from exc
    data = ItemDecided(
        item_id=item.id,
        meeting_id=meeting.id,
        meeting_config=config.id,
        meeting_kind=config.kind,
        meeting_date=meeting.date,
        title=item.title,
        decision=decision.value,
        decision_text=item.decision_text or "",
        decision_number=number,
        category=item.category,
        external_identifier=item.external_identifier,
        oversight_applies=item.oversight_applies,
        publication_required=item.publication_required,
        concerned_party=concerned_party_of(item),
    )
    for kind in required_deliveries(data):
        item.deliveries.append(
            DecisionDelivery(tenant=item.tenant, kind=kind, status="pending", updated_at=now)
        )
    _stage(session, new_event(data, tenant=item.tenant, subject=item.id, source=SOURCE))
    if data.oversight_applies:
        transmission = transmission_requested(data, item)
        _stage(session, new_event(transmission, tenant=item.tenant, subject=item.id, source=SOURCE))
    log.info("tenant %s decided item %s: %s %s", item.tenant, item.id, decision, number or "")


def transmission_requested(decided: ItemDecided, item: Item) -> DecisionTransmissionRequested:
    """What the regional oversight needs of a decision subject to it (annexes by reference)."""
    if decided.decision_number is None or decided.category is None:
        raise ValueError(
            f"item {decided.item_id}: only numbered, categorised decisions go to oversight"
        )
    return DecisionTransmissionRequested(
        item_id=decided.item_id,
        meeting_id=decided.meeting_id,
        meeting_config=decided.meeting_config,
        meeting_kind=decided.meeting_kind,
        meeting_date=decided.meeting_date,
        decision=decided.decision,
        decision_number=decided.decision_number,
        category=decided.category,
        title=decided.title,
        decision_text=decided.decision_text,
        annexes=[
            AnnexReference(
                annex_id=annex.id,
                title=annex.title,
                filename=annex.filename,
                media_type=annex.media_type,
                md5=annex.md5,
            )
            for annex in item.annexes
        ],
    )


def required_deliveries(decided: ItemDecided) -> list[DeliveryKind]:
    """What a decision owes the outside world; a postponed item (no decision) owes nothing."""
    if decided.decision_number is None:
        return []
    kinds: list[DeliveryKind] = []
    if decided.oversight_applies:
        kinds.append("oversight")
    if decided.publication_required:
        kinds.append("publication")
    if decided.concerned_party is not None:
        kinds.append("notification")
    return kinds


async def record_delivery(
    session: AsyncSession,
    tenant: str,
    item_id: str,
    kind: DeliveryKind,
    status: DeliveryStatus,
    now: datetime,
    *,
    reference: str | None = None,
    detail: str | None = None,
) -> bool:
    """Move one of a decision's deliveries on; False when the decision does not owe it.

    A delivery that is done stays done: a late or repeated report (a receipt
    redelivered, a retry's outcome) never takes it back.
    """
    delivery = await session.scalar(
        select(DecisionDelivery)
        .where(
            DecisionDelivery.tenant == tenant,
            DecisionDelivery.item_id == item_id,
            DecisionDelivery.kind == kind,
        )
        .with_for_update()
    )
    if delivery is None:
        return False
    if delivery.status == "done" and status != "done":
        return True
    delivery.status = status
    delivery.reference = reference if reference is not None else delivery.reference
    delivery.detail = detail
    delivery.updated_at = now
    return True


async def publish_decision(session: AsyncSession, item: Item) -> None:
    if ItemState(item.state) not in FINAL_STATES or item.decision_number is None:
        raise NothingToPublish(item.id, f"it is {item.state}; only decisions are published.")
    if item.published_at is not None:
        raise NothingToPublish(item.id, "its decision is already published.")
    meeting = await find_meeting(session, item.tenant, item.meeting_id or "")
    if meeting.state != MeetingState.CLOSED:
        raise NothingToPublish(item.id, f"its meeting {meeting.id} is not closed yet.")
    now = await publication_turn(session, item.tenant)
    # The meeting enters OParl's list at its end, with its first publication only: read
    # before the turn was taken, ``meeting`` may not show one committed meanwhile.
    await session.execute(
        update(Meeting)
        .where(Meeting.id == meeting.id, Meeting.first_published_at.is_(None))
        .values(first_published_at=now)
        .execution_options(synchronize_session=False)
    )
    item_id = item.id
    item.published_at = item.updated_at = now
    try:
        await session.flush()
    except StaleDataError as exc:
        raise NothingToPublish(
            item_id, "its decision was published by a concurrent request."
        ) from exc
    await record_publication(session, item, meeting, now)
    data = DecisionPublished(
        item_id=item.id,
        meeting_id=meeting.id,
        meeting_config=item.meeting_config,
        decision=Decision(item.state).value,
        decision_number=item.decision_number,
        title=item.title,
        decision_text=item.decision_text or "",
        category=item.category,
        external_identifier=item.external_identifier,
        published_at=now,
    )
    _stage(session, new_event(data, tenant=item.tenant, subject=item.id, source=SOURCE))
    await record_delivery(session, item.tenant, item.id, "publication", "done", now)


def concerned_party_of(item: Item) -> ConcernedParty | None:
    if item.concerned_party_kind is None or item.concerned_party_identifier is None:
        return None
    return ConcernedParty.model_validate(
        {
            "kind": item.concerned_party_kind,
            "identifier": item.concerned_party_identifier,
            "name": item.concerned_party_name,
        }
    )


def keep_unplaced_request(
    session: AsyncSession,
    *,
    event_id: str,
    tenant: str,
    event_type: str,
    subject: str,
    reason: str,
    data: dict[str, Any],
    now: datetime,
) -> None:
    session.add(
        UnplacedRequest(
            event_id=event_id,
            tenant=tenant,
            event_type=event_type,
            subject=subject,
            reason=reason,
            data=data,
            received_at=now,
        )
    )


# -- queries ------------------------------------------------------------------------------


async def find_item(session: AsyncSession, tenant: str, item_id: str) -> Item:
    """The tenant's item; another tenant's item is "not found", never "forbidden"."""
    item = await session.scalar(select(Item).where(Item.id == item_id, Item.tenant == tenant))
    if item is None:
        raise NotFound("item", item_id)
    return item


async def find_meeting(session: AsyncSession, tenant: str, meeting_id: str) -> Meeting:
    meeting = await session.scalar(
        select(Meeting).where(Meeting.id == meeting_id, Meeting.tenant == tenant)
    )
    if meeting is None:
        raise NotFound("meeting", meeting_id)
    return meeting


async def find_linked_item(
    session: AsyncSession, tenant: str, external_identifier: str, meeting_config: str | None
) -> Item | None:
    query = select(Item).where(
        Item.tenant == tenant, Item.external_identifier == external_identifier
    )
    if meeting_config is not None:
        query = query.where(Item.meeting_config == meeting_config)
    return await session.scalar(query.order_by(Item.created_at).limit(1))


async def refuse_linked(
    session: AsyncSession, tenant: str, external_identifier: str | None, meeting_config: str
) -> None:
    """Refuse an external identifier already linked to an item of the configuration."""
    if external_identifier is None:
        return
    linked = await find_linked_item(session, tenant, external_identifier, meeting_config)
    if linked is not None:
        raise ExternalIdentifierLinked(external_identifier, linked.id)


async def read_annex(session: AsyncSession, tenant: str, item_id: str, annex_id: str) -> Annex:
    annex = await session.scalar(
        select(Annex)
        .where(Annex.id == annex_id, Annex.item_id == item_id, Annex.tenant == tenant)
        .options(undefer(Annex.content))
    )
    if annex is None:
        raise NotFound("annex", annex_id)
    return annex


async def mark_annex_publishable(
    session: AsyncSession, item: Item, annex_id: str, publishable: bool, now: datetime
) -> Annex:
    """Say whether an annex is published with the decision; fixed once the decision is."""
    annex = next((annex for annex in item.annexes if annex.id == annex_id), None)
    if annex is None:
        raise NotFound("annex", annex_id)
    item_id = item.id
    if item.published_at is not None:
        raise AnnexPublicationFixed(item_id, annex_id)
    annex.publishable = publishable
    item.updated_at = now  # bumps the item's version: a publication racing this one fails
    try:
        await session.flush()
    except StaleDataError as exc:
        raise Conflict(
            "concurrent-change",
            f"Item {item_id} was changed by a concurrent request (its publication?): "
            "read it again and retry.",
        ) from exc
    return annex


async def annex_contents(session: AsyncSession, item: Item) -> dict[str, bytes]:
    rows = await session.execute(
        select(Annex.id, Annex.content).where(Annex.item_id == item.id, Annex.tenant == item.tenant)
    )
    return {annex_id: content for annex_id, content in rows.tuples()}


@dataclass(frozen=True)
class ItemFilter:
    meeting_config: str | None = None
    state: ItemState | None = None
    category: str | None = None
    proposing_service: str | None = None
    meeting_id: str | None = None
    external_identifier: str | None = None
    #: In the title or the description.
    text: str | None = None
    item_id: str | None = None
    title: str | None = None
    description: str | None = None
    creator: str | None = None
    decision: Decision | None = None


class _LowerCase(FunctionElement[str]):
    """``lower()`` of every letter, on both databases: SQLite's own ``lower()`` leaves
    "É" as it is, so "église" did not find "Église Saint-Éloi" there (PostgreSQL's did)."""

    type = String()
    inherit_cache = True


@compiles(_LowerCase)
def _lower_case(element: _LowerCase, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(_LowerCase, "sqlite")
def _lower_case_on_sqlite(element: _LowerCase, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{UNICODE_LOWER}({compiler.process(element.clauses, **kw)})"


def _holds_text(column: ColumnExpressionArgument[str | None], text: str) -> ColumnElement[bool]:
    """``column`` holds ``text``, in any case. ``autoescape`` makes the searcher's ``%``
    and ``_`` mean themselves, not LIKE's wildcards, with one escape character that both
    databases read alike (PostgreSQL's default escape, the backslash, is none on SQLite)."""
    return _LowerCase(column).contains(text.lower(), autoescape=True)


def _item_conditions(tenant: str, where: ItemFilter) -> list[ColumnElement[bool]]:
    conditions = [Item.tenant == tenant]
    for column, value in (
        (Item.meeting_config, where.meeting_config),
        (Item.state, where.state),
        (Item.category, where.category),
        (Item.proposing_service, where.proposing_service),
        (Item.meeting_id, where.meeting_id),
        (Item.external_identifier, where.external_identifier),
        (Item.id, where.item_id),
        (Item.creator, where.creator),
        (Item.decision, where.decision),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.text:
        conditions.append(
            or_(_holds_text(Item.title, where.text), _holds_text(Item.description, where.text))
        )
    if where.title:
        conditions.append(_holds_text(Item.title, where.title))
    if where.description:
        conditions.append(_holds_text(Item.description, where.description))
    return conditions


async def list_items(
    session: AsyncSession, tenant: str, where: ItemFilter, *, limit: int, offset: int
) -> tuple[list[Item], int]:
    conditions = _item_conditions(tenant, where)
    order = (Item.created_at.desc(), Item.id)
    return await listing_page(session, Item, conditions, order, limit=limit, offset=offset)


async def list_meetings(
    session: AsyncSession,
    tenant: str,
    *,
    meeting_config: str | None,
    state: MeetingState | None,
    limit: int,
    offset: int,
) -> tuple[list[Meeting], int]:
    conditions: list[ColumnElement[bool]] = [Meeting.tenant == tenant]
    if meeting_config is not None:
        conditions.append(Meeting.meeting_config == meeting_config)
    if state is not None:
        conditions.append(Meeting.state == state)
    order = (Meeting.date, Meeting.id)
    return await listing_page(session, Meeting, conditions, order, limit=limit, offset=offset)


async def meetings_accepting_items(
    session: AsyncSession, tenant: str, meeting_config: str, now: datetime
) -> list[Meeting]:
    """Open meetings of the configuration that have not taken place yet, soonest first."""
    rows = await session.scalars(
        select(Meeting)
        .where(
            Meeting.tenant == tenant,
            Meeting.meeting_config == meeting_config,
            Meeting.state == MeetingState.OPEN,
            Meeting.date >= now,
        )
        .order_by(Meeting.date)
    )
    return list(rows.all())


async def meeting_dates(session: AsyncSession, tenant: str, ids: set[str]) -> dict[str, datetime]:
    if not ids:
        return {}
    rows = await session.execute(
        select(Meeting.id, Meeting.date).where(Meeting.tenant == tenant, Meeting.id.in_(ids))
    )
    return {meeting_id: date for meeting_id, date in rows.tuples()}


async def list_unplaced_requests(
    session: AsyncSession, tenant: str, *, limit: int, offset: int
) -> list[UnplacedRequest]:
    rows = await session.scalars(
        select(UnplacedRequest)
        .where(UnplacedRequest.tenant == tenant)
        .order_by(UnplacedRequest.received_at.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.all())
