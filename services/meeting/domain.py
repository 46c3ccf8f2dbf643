"""The rules of college and council meetings, without I/O.

- An agenda item moves ``created → proposed → validated → presented`` (in an
  open meeting of its configuration) and is then decided: ``accepted``,
  ``accepted_with_amendments``, ``refused`` or ``postponed``. A postponed item
  can be presented again at a later meeting; the other decisions are final.
- A decision (not a postponement) gets the next number of its meeting
  configuration and year (the meeting's year, Brussels time), gap-free:
  ``COL/2026/0042``.
- A meeting is open until it is closed, which needs every item presented in it
  to be decided; a closed meeting accepts neither items nor decisions.
- A decision is published once, after its meeting is closed.
- Annexes: at most 10 per item, 4 MiB each, checked against a declared MD5.

Rule violations are ``ProblemError`` subclasses: REST shows them as they are,
WS4PM as SOAP Faults with the same detail.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

from kernel.days import commune_day
from kernel.errors import Conflict, ProblemError
from services.meeting.configuration import Category, MeetingConfig

MAX_ANNEX_BYTES = 4 * 1024 * 1024
#: WS4PM's ``CreationData`` carries at most 10 annexes; REST keeps the same limit.
MAX_ANNEXES = 10
#: The longest texts the item's columns take (``tables.py``): SQLite stores a longer one,
#: PostgreSQL refuses it, which was a 500 (and an urban request retried, then rejected).
MAX_EXTERNAL_IDENTIFIER = 200
MAX_PROPOSING_SERVICE = 200
MAX_CONCERNED_PARTY_NAME = 200
MAX_ANNEX_FILENAME = 255
#: Titles, in characters: an item's and an annex's, by REST and by WS4PM alike.
MAX_ITEM_TITLE = 1000
MAX_ANNEX_TITLE = 500
#: An item's long texts (description, motivation, decision), in characters: ~100 pages,
#: more than any deliberation. Each travels in the item's events (``ItemDecided``,
#: ``DecisionPublished``…), which the producer refuses beyond ``MAX_REQUEST_BYTES``, and
#: courrier renders the decision's letter from it (a million characters took 13 s).
MAX_ITEM_TEXT = 200_000
#: The largest request an item's creation needs: its annexes in base64, its texts (at most
#: 4 bytes a character in UTF-8) and room for the rest. The hub's 12 MiB default refused
#: three annexes of 4 MiB, which WS4PM's rules and the REST schema allow.
MAX_ITEM_REQUEST_BYTES = (
    MAX_ANNEXES * (MAX_ANNEX_BYTES * 4 // 3 + 4) + 3 * 4 * MAX_ITEM_TEXT + 2**20
)


#: What a numbered decision may owe the outside world (``tables.DecisionDelivery``).
DeliveryKind = Literal["oversight", "publication", "notification"]
DeliveryStatus = Literal["pending", "in_progress", "done", "failed"]


class ItemState(StrEnum):
    CREATED = "created"
    PROPOSED = "proposed"
    VALIDATED = "validated"
    PRESENTED = "presented"
    ACCEPTED = "accepted"
    ACCEPTED_WITH_AMENDMENTS = "accepted_with_amendments"
    REFUSED = "refused"
    POSTPONED = "postponed"


class Decision(StrEnum):
    ACCEPTED = "accepted"
    ACCEPTED_WITH_AMENDMENTS = "accepted_with_amendments"
    REFUSED = "refused"
    POSTPONED = "postponed"

    @property
    def is_numbered(self) -> bool:
        """A postponement decides nothing on the matter: it takes no decision number."""
        return self is not Decision.POSTPONED


DECIDED_STATES = frozenset(ItemState(decision.value) for decision in Decision)
FINAL_STATES = DECIDED_STATES - {ItemState.POSTPONED}


class MeetingState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class Transition(StrEnum):
    PROPOSE = "propose"
    VALIDATE = "validate"
    PRESENT = "present"


#: The states each transition leaves from, and the state it leads to.
TRANSITIONS: dict[Transition, tuple[frozenset[ItemState], ItemState]] = {
    Transition.PROPOSE: (frozenset({ItemState.CREATED}), ItemState.PROPOSED),
    Transition.VALIDATE: (frozenset({ItemState.PROPOSED}), ItemState.VALIDATED),
    Transition.PRESENT: (
        frozenset({ItemState.VALIDATED, ItemState.POSTPONED}),
        ItemState.PRESENTED,
    ),
}


# -- errors ---------------------------------------------------------------------------


class UnknownMeetingConfig(ProblemError):
    def __init__(self, config_id: str, known: list[str]) -> None:
        super().__init__(
            422,
            "unknown-meeting-config",
            "Unknown meeting configuration",
            f"This tenant has no meeting configuration {config_id!r} "
            f"(configured: {', '.join(known) or 'none'}).",
            meeting_config=config_id,
        )


class UnknownCategory(ProblemError):
    def __init__(self, config: MeetingConfig, category: str) -> None:
        super().__init__(
            422,
            "unknown-category",
            "Unknown item category",
            f"Configuration {config.id!r} has no category {category!r} (categories: "
            f"{', '.join(c.id for c in config.categories) or 'none'}).",
        )


class UnknownProposingService(ProblemError):
    def __init__(self, config: MeetingConfig, service: str) -> None:
        super().__init__(
            422,
            "unknown-proposing-service",
            "Unknown proposing service",
            f"Configuration {config.id!r} takes items from {', '.join(config.proposing_services)}"
            f", not from {service!r}.",
        )


class TransitionNotAllowed(Conflict):
    def __init__(self, item_id: str, state: ItemState, transition: Transition) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[transition][0]))
        super().__init__(
            "transition-not-allowed",
            f"Item {item_id} is {state}: '{transition}' applies to an item that is {allowed}.",
            state=str(state),
        )


class ItemAlreadyDecided(Conflict):
    def __init__(self, item_id: str, state: ItemState | str) -> None:
        super().__init__(
            "item-already-decided",
            f"Item {item_id} is already decided ({state}); a decision is taken once.",
            state=str(state),
        )


class ItemNotPresented(Conflict):
    def __init__(self, item_id: str, state: ItemState) -> None:
        super().__init__(
            "item-not-presented",
            f"Item {item_id} is {state}: only an item presented in a meeting can be decided.",
            state=str(state),
        )


class MeetingIsClosed(Conflict):
    def __init__(self, meeting_id: str) -> None:
        super().__init__(
            "meeting-closed",
            f"Meeting {meeting_id} is closed: it takes no more items or decisions.",
        )


class MeetingOfAnotherConfig(ProblemError):
    def __init__(self, meeting_config: str, item_config: str) -> None:
        super().__init__(
            422,
            "meeting-of-another-configuration",
            "The meeting belongs to another configuration",
            f"The item is for {item_config!r} but the meeting is a {meeting_config!r} meeting.",
        )


class PostponedToAnEarlierMeeting(Conflict):
    def __init__(self, postponed_at: datetime, meeting_date: datetime) -> None:
        super().__init__(
            "postponed-to-a-later-meeting",
            f"The item was postponed at the meeting of {commune_day(postponed_at).isoformat()}: it"
            f" goes to a later meeting, not to the one of {commune_day(meeting_date).isoformat()}.",
        )


class MeetingHasUndecidedItems(Conflict):
    def __init__(self, meeting_id: str, item_ids: list[str]) -> None:
        super().__init__(
            "meeting-has-undecided-items",
            f"Meeting {meeting_id} still has {len(item_ids)} undecided items; decide them "
            "(or postpone them) before closing it.",
            undecided_items=item_ids,
        )


class ExternalIdentifierLinked(Conflict):
    def __init__(self, external_identifier: str, item_id: str) -> None:
        super().__init__(
            "external-identifier-already-linked",
            f"External identifier {external_identifier!r} is already linked to item {item_id} "
            "of this configuration.",
            item_id=item_id,
        )


class NothingToPublish(Conflict):
    def __init__(self, item_id: str, reason: str) -> None:
        super().__init__("nothing-to-publish", f"Item {item_id}: {reason}")


class AnnexPublicationFixed(Conflict):
    def __init__(self, item_id: str, annex_id: str) -> None:
        super().__init__(
            "annex-publication-fixed",
            f"Item {item_id}: its decision is published, with the annexes that were "
            f"publishable then; annex {annex_id} can no longer change.",
        )


class AnnexTooLarge(ProblemError):
    def __init__(self, filename: str, size: int) -> None:
        super().__init__(
            413,
            "annex-too-large",
            "An annex is too large",
            f"Annex {filename!r} has {size} bytes; annexes have at most {MAX_ANNEX_BYTES} "
            "bytes (4 MiB).",
            max_bytes=MAX_ANNEX_BYTES,
        )


class TooManyAnnexes(ProblemError):
    def __init__(self, count: int) -> None:
        super().__init__(
            422,
            "too-many-annexes",
            "Too many annexes",
            f"{count} annexes given; an item takes at most {MAX_ANNEXES} at creation.",
        )


class AnnexChecksumMismatch(ProblemError):
    def __init__(self, filename: str, declared: str, computed: str) -> None:
        super().__init__(
            422,
            "annex-checksum-mismatch",
            "An annex does not have its declared MD5",
            f"Annex {filename!r}: declared MD5 {declared}, received content has {computed}; "
            "the file was altered in transit or the MD5 belongs to another file.",
        )


class TextTooLong(ProblemError):
    def __init__(self, field: str, length: int, limit: int) -> None:
        super().__init__(
            422,
            "text-too-long",
            "A text is too long",
            f"{field} has {length} characters; it takes at most {limit}.",
            field=field,
            max_length=limit,
        )


def check_length(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise TextTooLong(field, len(value), limit)


# -- configurations -------------------------------------------------------------------


def configuration(configs: dict[str, MeetingConfig], config_id: str) -> MeetingConfig:
    config = configs.get(config_id)
    if config is None:
        raise UnknownMeetingConfig(config_id, sorted(configs))
    return config


def check_item_fields(
    config: MeetingConfig, category: str | None, proposing_service: str
) -> Category | None:
    """The item's category (None when it has none), or the rule it breaks."""
    if config.proposing_services and proposing_service not in config.proposing_services:
        raise UnknownProposingService(config, proposing_service)
    if category is None:
        return None
    found = config.category(category)
    if found is None:
        raise UnknownCategory(config, category)
    return found


# -- workflow ---------------------------------------------------------------------------


def state_after(item_id: str, state: ItemState, transition: Transition) -> ItemState:
    sources, target = TRANSITIONS[transition]
    if state not in sources:
        if state in FINAL_STATES:
            raise ItemAlreadyDecided(item_id, state)
        raise TransitionNotAllowed(item_id, state, transition)
    return target


def check_decidable(item_id: str, state: ItemState) -> None:
    if state in DECIDED_STATES:
        raise ItemAlreadyDecided(item_id, state)
    if state is not ItemState.PRESENTED:
        raise ItemNotPresented(item_id, state)


# -- decision numbers -------------------------------------------------------------------


def decision_year(meeting_date: datetime) -> int:
    """Decisions count per calendar year of their meeting, as the commune's calendar says."""
    return commune_day(meeting_date).year


def format_decision_number(prefix: str, year: int, sequence: int) -> str:
    if sequence < 1:
        raise ValueError("decision sequences start at 1")
    return f"{prefix}/{year}/{sequence:04d}"


class DecisionCounters(Protocol):
    """Hands out the next sequence of (tenant, configuration, year) in the caller's transaction."""

    async def next_sequence(self, tenant: str, meeting_config: str, year: int) -> int: ...


async def allocate_decision_number(
    counters: DecisionCounters, tenant: str, config: MeetingConfig, meeting_date: datetime
) -> str:
    year = decision_year(meeting_date)
    sequence = await counters.next_sequence(tenant, config.id, year)
    return format_decision_number(config.decision_prefix, year, sequence)


# -- annexes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnexUpload:
    title: str
    filename: str
    media_type: str
    content: bytes
    declared_md5: str | None = None
    #: Published with the decision (OParl): never by default (see ``tables.Annex``).
    publishable: bool = False
    #: Computed once, as the upload is read: not later, inside the item's transaction,
    #: where a megabyte's digest would hold the database's writer turn (1.3 ms).
    md5: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "md5", hashlib.md5(self.content).hexdigest())


def check_annexes(annexes: tuple[AnnexUpload, ...]) -> None:
    if len(annexes) > MAX_ANNEXES:
        raise TooManyAnnexes(len(annexes))
    for annex in annexes:
        if len(annex.content) > MAX_ANNEX_BYTES:
            raise AnnexTooLarge(annex.filename, len(annex.content))
        if annex.declared_md5 is not None and annex.declared_md5.lower() != annex.md5:
            raise AnnexChecksumMismatch(annex.filename, annex.declared_md5, annex.md5)
