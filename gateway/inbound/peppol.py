"""Inbound adapter: business documents from the communes' Peppol access point.

A background task of the gateway polls the inbox of every access point
account the tenant files name (``peppol.access_point``: a ``peppol_ap``
connector; tenants sharing one account are polled once). For the new
messages of a listing it:

1. fetches those whose AP message id ``gateway_inbound`` does not have yet;
2. records them and, for each whose receiver is a tenant's participant,
   stages ``PeppolDocumentReceived`` in the gateway's outbox, in one
   transaction;
3. tells the access point, message by message: acknowledged (published) or
   rejected with reason code ``FD`` (unroutable: no tenant has that
   receiver; refused: too large, or its entry breaks the access point's
   contract, e.g. a sender that is no ``<scheme>:<identifier>``), then notes
   it was told.

A crash between 2 and 3 leaves the message new at the AP: the next poll
finds the row and only does 3. A crash between 1 and 2 records nothing: the
next poll fetches again. So each message is published once. The adapter does
not judge the document (not XML, too large…): the factures service does, and
answers the supplier with its reasons.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import pybase64
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event
from contracts.events.peppol import MAX_DOCUMENT_BYTES, PeppolDocumentReceived, PeppolEndpoint
from gateway.connectors.peppol_ap import PeppolApSettings
from gateway.http import ResponseTooLarge
from gateway.inbound.health import POLL_HEALTH
from gateway.inbound.records import (
    DOCUMENT_TYPE_LENGTH,
    NOT_IN_FIELD,
    SENDER_LENGTH,
    SOURCE_LENGTH,
    InboundDocument,
    NotTaken,
    SourceError,
    SourceStatus,
    Status,
    WaitingItems,
    contract_problem,
    database_away,
    not_recorded_reason,
    path_segment,
    usable_id,
)
from kernel.database import utcnow, write_transaction
from kernel.outbox import EventTooLarge, OutboxRelay, stage
from kernel.telemetry import tracer
from kernel.texts import clipped

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway:peppol"
CHANNEL = "peppol"
#: MLS-like reason code of a transport-level rejection (unknown receiver, too large).
FAILURE_OF_DELIVERY = "FD"
#: Messages fetched, then recorded, at a time: a listing's hundred documents of up to 4 MiB
#: each (and their events, in base64) were all in memory until one commit.
RECORD_BATCH = 16
#: Messages asked for in one listing. A listing this full may hide more behind it:
#: the poll takes the next one at once instead of waiting for the next poll.
LISTING_LIMIT = 100
#: Listings one inbox's poll takes at most (ten thousand messages): an access point whose
#: listing always named new messages would otherwise keep the poll, and the other
#: inboxes behind it, for ever.
MAX_LISTINGS = 100
#: The longest reason a rejection carries (the contract's ``Rejection.reason``): a longer
#: one was answered 400, and the message, never told, was rejected again at every poll.
REJECT_REASON_LENGTH = 1000
#: The longest account of a broken listing entry kept in a reason (``ValueError`` repeats
#: the text it could not read, however long).
ENTRY_PROBLEM_LENGTH = 300
#: A participant as the access point's contract writes it (``ParticipantId``), the only
#: form the hub's ``PeppolEndpoint`` takes. Another (an identifier of 201 characters…)
#: failed the event of its message when the batch was recorded, and the batch, listed
#: again first at every poll, blocked the inbox for good.
PARTICIPANT = re.compile(r"[0-9]{4}:[^\s:]{1,200}")
#: The identifier scheme the Peppol policy puts before a participant in the SMP and in
#: AS4 headers (``iso6523-actorid-upis::0208:0216987614``). Access points pass it on as
#: they received it, so the hub reads the participant behind it rather than refusing it.
PEPPOL_IDENTIFIER_SCHEME = "iso6523-actorid-upis::"


class AccessPointError(SourceError):
    """The access point answered something unexpected; the message is tried at the next poll."""


class DocumentUnavailable(AccessPointError):
    """A listed message whose document the access point will never give (no readable
    document, gone): recorded ``refused`` and rejected, so that it leaves the listing.
    Asked again at every poll, a hundred of them held every later message behind them."""


@dataclass(frozen=True)
class InboxItem:
    message_id: str
    sender: str
    receiver: str
    document_type: str
    received_at: datetime | None = None
    #: Why the message cannot be taken (its listing entry breaks the contract…), or None.
    problem: str | None = None
    #: The document's size as the listing declares it, when it does.
    size: int | None = None


@dataclass(frozen=True)
class FetchedDocument:
    item: InboxItem
    content: bytes


class AccessPointInbox(Protocol):
    """What the adapter needs of an access point account (the HTTP client, or a fake)."""

    name: str
    #: The account as its polls' health shows it (``gateway.inbound.health``): ``name``,
    #: with a fingerprint of its key when accounts share that URL (``inboxes_from``), so
    #: that one whose key was revoked is not hidden by another that works.
    account: str

    async def list_new(self) -> tuple[list[InboxItem], int]:
        """The oldest new messages the hub can take, and how many the access point listed
        (at most ``LISTING_LIMIT``: a full listing may hide more behind it). The two differ
        by the entries whose id no log can keep, left alone at the source."""
        ...

    async def fetch(self, message_id: str) -> FetchedDocument: ...

    async def acknowledge(self, message_id: str) -> None: ...

    async def reject(self, message_id: str, reason_code: str, reason: str) -> None: ...


class HttpAccessPointInbox:
    """The inbox of one account, over the modelled contract ``contracts/peppol-ap/openapi.yaml``."""

    def __init__(
        self, settings: PeppolApSettings, http: httpx.AsyncClient, account: str | None = None
    ) -> None:
        self.name = settings.base_url
        self.account = account or settings.base_url
        self._settings = settings
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def list_new(self) -> tuple[list[InboxItem], int]:
        body = await self._call("GET", "/inbox", params={"limit": LISTING_LIMIT})
        entries = body.get("items")
        if not isinstance(entries, list):
            raise AccessPointError("GET /inbox: the listing has no list of items")
        # One entry at a time: one that breaks the contract is that message's problem.
        items = [item for entry in entries if (item := _listed_item(entry)) is not None]
        return items, len(entries)

    async def fetch(self, message_id: str) -> FetchedDocument:
        try:
            body = await self._call("GET", f"/inbox/{path_segment(message_id)}")
        except AccessPointError as exc:
            if exc.gone:
                raise DocumentUnavailable(str(exc), exc.status) from exc
            raise
        try:
            content = pybase64.b64decode(body["document"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:  # ValueError: base64 or not ASCII
            raise DocumentUnavailable(f"message {message_id}: no readable document") from exc
        try:
            return FetchedDocument(_item(body), content)
        except AccessPointError as exc:
            raise DocumentUnavailable(f"message {message_id}: {exc}") from exc

    async def acknowledge(self, message_id: str) -> None:
        await self._call("POST", f"/inbox/{path_segment(message_id)}/acknowledge")

    async def reject(self, message_id: str, reason_code: str, reason: str) -> None:
        await self._call(
            "POST",
            f"/inbox/{path_segment(message_id)}/reject",
            json={"reasonCode": reason_code, "reason": clipped(reason, REJECT_REASON_LENGTH)},
        )

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(
            method,
            self._settings.url(path),
            headers=self._settings.headers(),
            timeout=self._timeout,
            **kwargs,
        )
        if response.is_error:
            raise AccessPointError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:300]}",
                response.status_code,
            )
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise AccessPointError(f"{method} {path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise AccessPointError(f"{method} {path}: the answer is not a JSON object")
        return body


def _item(entry: dict[str, Any]) -> InboxItem:
    try:
        received = entry.get("receivedAt")
        item = InboxItem(
            message_id=str(entry["messageId"]),
            sender=participant_of(str(entry["sender"])),
            receiver=participant_of(str(entry["receiver"])),
            document_type=str(entry["documentTypeId"]),
            received_at=_received_at(received) if received else None,
            size=size if isinstance(size := entry.get("size"), int) and size >= 0 else None,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        problem = clipped(repr(exc), ENTRY_PROBLEM_LENGTH)
        raise AccessPointError(f"an inbox entry breaks the contract: {problem}") from exc
    # No column keeps a control character: a sender ending in a NUL failed the batch's rows
    # on PostgreSQL, and the listing, given first again at every poll, blocked the inbox.
    unkeepable = [
        name
        for name, value in (
            ("messageId", item.message_id),
            ("sender", item.sender),
            ("receiver", item.receiver),
            ("documentTypeId", item.document_type),
        )
        if NOT_IN_FIELD.search(value)
    ]
    if unkeepable:
        raise AccessPointError(
            f"an inbox entry holds control characters, which this hub does not keep, in"
            f" {', '.join(unkeepable)}"
        )
    too_long = [
        f"{name} ({len(value)} characters, at most {longest})"
        for name, value, longest in (
            ("sender", item.sender, SENDER_LENGTH),
            ("receiver", item.receiver, SENDER_LENGTH),
            ("documentTypeId", item.document_type, DOCUMENT_TYPE_LENGTH),
        )
        if len(value) > longest
    ]
    if too_long:
        raise AccessPointError(
            f"an inbox entry is longer than this hub keeps: {', '.join(too_long)}"
        )
    not_participants = [
        f"{name} {value[:80]!r}"
        for name, value in (("sender", item.sender), ("receiver", item.receiver))
        if not PARTICIPANT.fullmatch(value)
    ]
    if not_participants:
        raise AccessPointError(
            "an inbox entry names no Peppol participant as '<4-digit scheme>:<identifier of"
            f" at most 200 characters, no spaces or colons>': {', '.join(not_participants)}"
        )
    return item


def _received_at(listed: Any) -> datetime:
    """``receivedAt``, read as UTC when it has no offset. The contract's ``date-time`` has
    one; ``fromisoformat`` also reads one without, which the UTC column refused when the
    batch was committed, and the listing, given first again at every poll, blocked the
    inbox for good. Refused instead, every invoice of an access point writing its times so
    was rejected for a field the hub only records."""
    received_at = datetime.fromisoformat(listed)
    return received_at if received_at.tzinfo is not None else received_at.replace(tzinfo=UTC)


def _listed_item(entry: Any) -> InboxItem | None:
    """A listing's entry as an item; one that breaks the contract, as an item holding its
    problem (recorded refused and rejected); one without a usable id, None (logged)."""
    message_id = entry.get("messageId") if isinstance(entry, dict) else None
    if not isinstance(message_id, str | int) or not usable_id(str(message_id)):
        log.error("a Peppol inbox entry without a usable messageId is left alone: %.300r", entry)
        return None
    try:
        return _item(entry)
    except AccessPointError as exc:
        return InboxItem(
            str(message_id), "", "", "", problem=f"As the access point listed it, {exc}."
        )


def _source_of(inbox_name: str) -> str:
    """The inbox's name (its access point's URL) as ``gateway_inbound.source`` holds it."""
    return inbox_name[:SOURCE_LENGTH]


def participant_of(listed: str) -> str:
    """A participant as listed, without the policy's identifier scheme if it has one."""
    if listed[: len(PEPPOL_IDENTIFIER_SCHEME)].lower() == PEPPOL_IDENTIFIER_SCHEME:
        return listed[len(PEPPOL_IDENTIFIER_SCHEME) :]
    return listed


def endpoint_of(participant: str) -> PeppolEndpoint:
    scheme, _, identifier = participant.partition(":")
    return PeppolEndpoint(scheme=scheme, identifier=identifier)


def too_large_reason(size: int) -> str:
    return (
        f"The document is {size} bytes; this hub accepts business documents of at most "
        f"{MAX_DOCUMENT_BYTES} bytes. Send the invoice without embedded attachments, or "
        "with smaller ones."
    )


def too_large_reason_of(error: ResponseTooLarge) -> str:
    return (
        f"The access point answered with {error}, more than one event carries"
        f" ({MAX_DOCUMENT_BYTES} bytes of document); ask the sender for a smaller document."
    )


def unroutable_reason(receiver: str) -> str:
    return (
        f"The receiver {receiver} is not a participant served by this hub (no commune or CPAS"
        " has it): the document cannot be delivered. Check the receiver's Peppol identifier."
    )


class PeppolInbound:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        inboxes: Sequence[AccessPointInbox],
        participants: Mapping[str, str],
        relay: OutboxRelay | None = None,
        clock: Callable[[], datetime] = utcnow,
        concurrency: int = 8,
    ) -> None:
        self._sessions = sessions
        self._inboxes = list(inboxes)
        self._slots = asyncio.Semaphore(concurrency)
        # Peppol identifiers compare case-insensitively.
        self._tenants = {p.lower(): tenant for tenant, p in participants.items()}
        self._relay = relay
        self._clock = clock
        self._tracer = tracer("gateway")
        self._waiting = WaitingItems(sessions, CHANNEL, clock)

    async def run(self, poll_seconds: float = 5.0) -> None:
        if not self._inboxes:
            log.info("no tenant names a Peppol access point: nothing to poll")
            return
        while True:
            await self.poll_once()
            await asyncio.sleep(poll_seconds)

    async def poll_once(self) -> int:
        """Take every new message of every inbox; return how many were taken.

        A listing is taken in batches of ``RECORD_BATCH``: one query finds the
        messages already recorded, the others are fetched ``concurrency`` at a
        time (the round trips to the access point, not the work, set the pace),
        recorded in one transaction, told to the access point ``concurrency`` at
        a time, and marked told in one more. Per message, the statements and commits cost
        more of the gateway's CPU than the rest of taking it.
        """
        taken = 0
        for inbox in self._inboxes:
            taken += await self._take_inbox(inbox)
        return taken

    async def _take_inbox(self, inbox: AccessPointInbox) -> int:
        """Take listings of ``inbox`` while they come back full and something was taken.

        A backlog (a night of the access point's invoices, a batch run of a
        supplier) is drained at the pace of the work, not one listing per poll
        interval (100 messages per 5 s by default). A full listing of which
        nothing could be taken (the AP failing each tell) waits for the next poll.

        Taken means told now: a message the access point still lists once told (it
        acknowledges lazily, or reads from a replica) is no progress. Counted as
        taken, it made a poll list and acknowledge the same hundred messages without
        a pause, hundreds of times a second, and the other inboxes waited. So a
        message is taken once per poll however often it is listed, a listing whose
        messages were all seen in this poll ends it, and so do ``MAX_LISTINGS``.
        """
        taken, seen = 0, set[str]()
        # An account shared by tenants, whose listings carry documents for no tenant too,
        # is no single tenant's source.
        source, tenant = _source_of(inbox.account), None
        for _ in range(MAX_LISTINGS):
            try:
                items, listed = await inbox.list_new()
            except Exception as exc:  # the AP is away: try at the next poll
                log.warning("Peppol inbox %s could not be listed: %r", inbox.name, exc)
                POLL_HEALTH.failed(CHANNEL, source, tenant, self._clock(), exc)
                return taken
            new = [item for item in dict.fromkeys(items) if item.message_id not in seen]
            if not new:
                break
            seen.update(item.message_id for item in new)
            try:
                taken_now = await self._take_listing(inbox, new)
            except Exception as exc:  # the database is away: the AP lists them again
                log.warning("Peppol inbox %s: listing not taken yet: %r", inbox.name, exc)
                POLL_HEALTH.failed(CHANNEL, source, tenant, self._clock(), exc)
                return taken
            taken += taken_now
            # Counted as listed: a message left alone at the head of every listing made
            # each one look short, and a backlog came one listing per poll.
            if listed < LISTING_LIMIT or taken_now == 0:
                break
        else:
            log.warning(
                "Peppol inbox %s: more than %d listings in one poll; the rest next poll",
                inbox.name,
                MAX_LISTINGS,
            )
        # Messages not taken (a fetch or a tell that failed) wait on their own: the poll worked.
        POLL_HEALTH.succeeded(CHANNEL, source, tenant, self._clock())
        return taken

    async def _take_listing(self, inbox: AccessPointInbox, items: list[InboxItem]) -> int:
        """Take a listing's messages ``RECORD_BATCH`` at a time, in the listing's order."""
        taken = 0
        for start in range(0, len(items), RECORD_BATCH):
            taken += await self._take_batch(inbox, items[start : start + RECORD_BATCH])
        return taken

    async def _take_batch(self, inbox: AccessPointInbox, items: list[InboxItem]) -> int:
        known = await self._known_among(inbox.name, [item.message_id for item in items])
        source = _source_of(inbox.name)
        new = [item for item in items if item.message_id not in known]
        later = await self._waiting.not_due(source, [item.message_id for item in new])
        failures: list[NotTaken] = []
        fetched = await asyncio.gather(
            *(
                self._fetch_or_wait(inbox, item, failures)
                for item in new
                if item.message_id not in later  # failed lately: not at every poll
            )
        )
        recorded = await self._record_all(
            inbox.name, [document for document in fetched if document], failures
        )
        await self._waiting.failed(source, failures)
        # Listing order: a supplier's invoice and its credit note arrive in that order.
        records = [
            record
            for item in items
            if (record := known.get(item.message_id) or recorded.get(item.message_id))
        ]
        told = await asyncio.gather(*(self._tell_or_wait(inbox, record) for record in records))
        return await self._mark_told(
            [record for record, ok in zip(records, told, strict=True) if ok]
        )

    async def _fetch_or_wait(
        self, inbox: AccessPointInbox, item: InboxItem, failures: list[NotTaken]
    ) -> FetchedDocument | None:
        """The message's document; one it will never have, with its problem; None when it
        must wait for a later poll (added to ``failures``)."""
        if item.problem is not None:
            return FetchedDocument(item, b"")
        if item.size is not None and item.size > MAX_DOCUMENT_BYTES:  # not downloaded at all
            return FetchedDocument(replace(item, problem=too_large_reason(item.size)), b"")
        async with self._slots:
            try:
                return await inbox.fetch(item.message_id)
            except DocumentUnavailable as exc:
                problem = f"The access point gives no document for this message: {exc}."
                return FetchedDocument(replace(item, problem=problem), b"")
            except ResponseTooLarge as exc:
                # The document itself only if it came as one (2xx) and was listed without a
                # size (one listed within the limit cannot be this large): otherwise an
                # error page or a broken transfer, which the next poll tries again.
                if 200 <= exc.status < 300 and item.size is None:
                    return FetchedDocument(replace(item, problem=too_large_reason_of(exc)), b"")
                self._not_fetched_yet(item, exc, failures)
                return None
            except Exception as exc:  # this one waits for a later poll; the others go on
                self._not_fetched_yet(item, exc, failures)
                return None

    def _not_fetched_yet(self, item: InboxItem, exc: Exception, failures: list[NotTaken]) -> None:
        log.warning("Peppol message %s not fetched yet: %r", item.message_id, exc)
        tenant = self._tenants.get(item.receiver.lower())
        reason = f"The access point gave no document for it yet: {exc}"
        failures.append(NotTaken(item.message_id, tenant, reason))

    async def _tell_or_wait(self, inbox: AccessPointInbox, record: InboundDocument) -> bool:
        async with self._slots:
            try:
                await self._tell(inbox, record)
                return True
            except Exception as exc:  # still listed at the next poll, which only tells it
                log.warning("Peppol message %s not told yet: %r", record.source_message_id, exc)
                return False

    async def _known_among(self, source: str, message_ids: list[str]) -> dict[str, InboundDocument]:
        async with self._sessions() as session:
            found = await session.scalars(
                select(InboundDocument).where(
                    InboundDocument.channel == CHANNEL,
                    # "": recorded before the source was (gateway migration 3).
                    InboundDocument.source.in_([_source_of(source), ""]),
                    InboundDocument.source_message_id.in_(message_ids),
                )
            )
            return {record.source_message_id: record for record in found}

    async def _known(self, source: str, message_id: str) -> InboundDocument | None:
        return (await self._known_among(source, [message_id])).get(message_id)

    async def _record_all(
        self, source: str, documents: list[FetchedDocument], failures: list[NotTaken]
    ) -> dict[str, InboundDocument]:
        """Record a listing's fetched documents in one transaction, by message id.

        Should another gateway replica have recorded one of them meanwhile, the
        transaction fails as a whole and each is recorded on its own, which
        keeps theirs. One whose event could not be staged is left out (added to
        ``failures``) and the others are recorded. So is one whose row the
        database refuses (a value its column cannot hold, whatever the listing's
        checks missed): it failed the batch at every poll, and the inbox with it.
        """
        if not documents:
            return {}
        records = [self._new_record(source, document) for document in documents]
        left_out: list[NotTaken] = []
        try:
            async with write_transaction(self._sessions) as session:
                added = [
                    record
                    for document, record in zip(documents, records, strict=True)
                    if self._add(session, document, record, left_out)
                ]
                taken = [record.source_message_id for record in added]
                await self._waiting.forget(session, _source_of(source), taken)
        except Exception as exc:
            if database_away(exc):
                raise
            one_by_one = {
                document.item.message_id: await self._record(source, document, failures)
                for document in documents
            }
            return {key: record for key, record in one_by_one.items() if record is not None}
        failures.extend(left_out)
        for record in added:
            self._log_recorded(record)
        return {record.source_message_id: record for record in added}

    async def _record(
        self, source: str, fetched: FetchedDocument, failures: list[NotTaken] | None = None
    ) -> InboundDocument | None:
        """Record one fetched document, or return the record another replica made of it;
        None when its event could not be staged or the database refuses its row (added
        to ``failures``, when given)."""
        record = self._new_record(source, fetched)
        left_out: list[NotTaken] = []
        try:
            async with write_transaction(self._sessions) as session:
                if self._add(session, fetched, record, left_out):
                    await self._waiting.forget(
                        session, _source_of(source), [record.source_message_id]
                    )
        except Exception as exc:
            if isinstance(exc, IntegrityError):
                known = await self._known(source, fetched.item.message_id)
                if known is not None:
                    return known
            if failures is None or database_away(exc):
                raise
            log.exception("Peppol message %s not recorded yet", record.source_message_id)
            failures.append(
                NotTaken(record.source_message_id, record.tenant, not_recorded_reason(exc))
            )
            return None
        if left_out:
            if failures is not None:
                failures.extend(left_out)
            return None
        self._log_recorded(record)
        return record

    def _new_record(self, source: str, fetched: FetchedDocument) -> InboundDocument:
        item = fetched.item
        tenant = self._tenants.get(item.receiver.lower())
        status: Status = "published"
        reason = None
        if item.problem is not None:
            status, reason = "refused", item.problem
        elif tenant is None:
            status, reason = "unroutable", unroutable_reason(item.receiver)
        elif len(fetched.content) > MAX_DOCUMENT_BYTES:
            # Its event could not be published (Kafka's record limit): it would block
            # the outbox for good. Refused at the door, kept here for the operator.
            status, reason = "refused", too_large_reason(len(fetched.content))
        now = self._clock()
        return InboundDocument(
            channel=CHANNEL,
            source=_source_of(source),
            source_message_id=item.message_id,
            tenant=tenant,
            sender=item.sender,
            receiver=item.receiver,
            document_type=item.document_type,
            size=len(fetched.content) or (item.size or 0),
            sha256=hashlib.sha256(fetched.content).hexdigest(),
            document=fetched.content,
            status=status,
            source_status="pending",
            reason=reason,
            received_at=item.received_at,
            fetched_at=now,
            updated_at=now,
        )

    def _add(
        self,
        session: AsyncSession,
        fetched: FetchedDocument,
        record: InboundDocument,
        left_out: list[NotTaken],
    ) -> bool:
        """Add ``record`` to the transaction, and stage its event when it is published.

        Staging failed the batch's transaction, and the batch, listed first again at
        every poll, blocked the inbox for good. So a message that can never be the hub's
        event is recorded refused (and rejected, as a broken listing entry is); one that
        failed for a reason nobody foresaw is left out (in ``left_out``, False) and waits
        for a later poll, while the batch's other messages are recorded.
        """
        if record.tenant is not None and record.status == "published":
            try:
                # A span, so a trace, of its own: staged under the poll's span, the invoices
                # of a listing (several tenants' often) shared one trace, and a tenant's
                # invoice's trace showed the others', their routes and their tenants.
                with self._tracer.start_as_current_span(
                    "peppol inbound",
                    attributes={
                        "hub.peppol.message_id": record.source_message_id,
                        "hub.tenant": record.tenant,
                    },
                ):
                    record.event_id = self._stage(session, record.tenant, fetched, record.sha256)
            except (ValidationError, EventTooLarge) as exc:
                record.status, record.reason = "refused", contract_problem("Peppol message", exc)
            except Exception as exc:
                log.exception(
                    "Peppol message %s not recorded yet: its event could not be staged",
                    record.source_message_id,
                )
                reason = f"Its event could not be staged: {exc!r}"
                left_out.append(NotTaken(record.source_message_id, record.tenant, reason))
                return False
        session.add(record)
        return True

    def _log_recorded(self, record: InboundDocument) -> None:
        if record.status == "published":
            log.info(
                "Peppol message %s published for tenant %s", record.source_message_id, record.tenant
            )
            if self._relay:
                self._relay.wake()
        else:
            log.warning(
                "Peppol message %s is %s: %s",
                record.source_message_id,
                record.status,
                record.reason,
            )

    @staticmethod
    def _stage(session: AsyncSession, tenant: str, fetched: FetchedDocument, sha256: str) -> str:
        item = fetched.item
        data = PeppolDocumentReceived(
            access_point_message_id=item.message_id,
            sender=endpoint_of(item.sender),
            receiver=endpoint_of(item.receiver),
            document_type=item.document_type,
            document_base64=pybase64.b64encode(fetched.content).decode(),
            sha256=sha256,
        )
        event = new_event(data, tenant=tenant, subject=item.message_id, source=SOURCE)
        stage(session, event)
        return event.id

    @staticmethod
    def _told_status(record: InboundDocument) -> SourceStatus:
        return "acknowledged" if record.status == "published" else "rejected"

    async def _tell(self, inbox: AccessPointInbox, record: InboundDocument) -> None:
        """Acknowledge a published document to the access point; reject the others."""
        if record.status == "published":
            await inbox.acknowledge(record.source_message_id)
        else:
            await inbox.reject(
                record.source_message_id, FAILURE_OF_DELIVERY, record.reason or record.status
            )

    async def _mark_told(self, records: list[InboundDocument]) -> int:
        """Note, in one transaction, that the access point was told of these records;
        return how many it was told of for the first time (taken now)."""
        by_status: dict[SourceStatus, list[int]] = {}
        for record in records:
            told = self._told_status(record)
            if record.source_status != told:
                by_status.setdefault(told, []).append(record.id)
        if not by_status:
            return 0
        async with write_transaction(self._sessions) as session:
            for told, ids in by_status.items():
                await session.execute(
                    update(InboundDocument)
                    .where(InboundDocument.id.in_(ids))
                    .values(source_status=told, updated_at=self._clock())
                )
        for record in records:
            record.source_status = self._told_status(record)
        return sum(len(ids) for ids in by_status.values())


def inboxes_from(
    settings_by_tenant: Iterable[PeppolApSettings], http: httpx.AsyncClient
) -> list[HttpAccessPointInbox]:
    """One inbox per access point account: tenants sharing an account are polled once."""
    accounts: dict[tuple[str, str], PeppolApSettings] = {}
    for settings in settings_by_tenant:
        account = (settings.base_url.rstrip("/"), settings.api_key.get_secret_value())
        accounts.setdefault(account, settings)
    per_url: dict[str, int] = {}
    for url, _key in accounts:
        per_url[url] = per_url.get(url, 0) + 1
    return [
        HttpAccessPointInbox(
            settings,
            http,
            # A fingerprint, not the key: 8 hex digits of its SHA-256 tell accounts apart.
            f"{settings.base_url} (key {hashlib.sha256(key.encode()).hexdigest()[:8]})"
            if per_url[url] > 1
            else None,
        )
        for (url, key), settings in accounts.items()
    ]
