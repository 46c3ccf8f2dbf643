"""Inbound adapter: permit notifications from the SPW's NOTICe.

A background task of the gateway polls, for every tenant whose file names its
NOTICe instance (``notice.instance``), that instance's
notifications awaiting a response (``EN_ATTENTE_REPONSE``), with the account
of the tenant's ``notice`` connector (modelled contract
``contracts/notice/openapi.yaml``). A page at a time (cursor paging), it:

1. looks up the page's notification ids in ``gateway_inbound`` (channel
   ``notice``) in one query and leaves the known ones alone: a notification
   stays listed until the commune answers FINAL, so it is seen at every poll
   and processed once;
2. fetches each new one and its documents, at most ``concurrency`` at a time,
   and checks every document against its metadata (size, SHA-256). A
   mismatch is fetched once more (a broken transfer); if it persists, the
   document is published as received, with its actual size and SHA-256 and
   the difference (``metadata_mismatch``), which is also recorded as the row's
   ``reason`` (``/v1/inbound``) and logged: urban keeps what NOTICe gave and
   shows the difference on the file rather than losing the request, and an
   operator sees the problem;
3. records the page's notifications and stages their
   ``gateway.notice.notification_received.v1`` events in one transaction.

A notification is the tenant's whose instance listed it. One listed under an
instance that is no tenant's is recorded ``unroutable`` and never published;
one whose details name another instance than the one that listed it, that
breaks the hub's event contract, or whose documents are too large for one
event, is recorded ``refused`` with the reason. NOTICe has no receipt
acknowledgement, so ``source_status`` stays ``pending``: the notification is
NOTICe's to close (the FINAL response, sent by the ``notice`` connector). The
row keeps the notification as fetched (metadata, not the documents), which
stay at NOTICe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import httpx
import pybase64
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event
from contracts.events.outside import (
    METADATA_MISMATCH_LENGTH,
    NoticeDocument,
    NoticeNotificationReceived,
)
from contracts.events.peppol import MAX_DOCUMENT_BYTES
from gateway.connectors.notice import TYPE_NAME, NoticeSettings
from gateway.http import ResponseTooLarge
from gateway.inbound.health import POLL_HEALTH
from gateway.inbound.records import (
    DOCUMENT_TYPE_LENGTH,
    MESSAGE_ID_LENGTH,
    InboundDocument,
    NotTaken,
    SourceError,
    Status,
    WaitingItems,
    contract_problem,
    database_away,
    not_recorded_reason,
    path_segment,
    usable_id,
)
from gateway.routing import RoutingTable
from kernel.database import utcnow, write_transaction
from kernel.outbox import OutboxRelay, stage
from kernel.telemetry import tracer
from kernel.tenants import Tenant
from kernel.texts import clipped, plain_text

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway:notice"
CHANNEL = "notice"
SENDER = "SPW NOTICe"
AWAITING = "EN_ATTENTE_REPONSE"
DOCUMENT_TYPE = "notice-notification"


class NoticeError(SourceError):
    """NOTICe answered something unexpected; the notification is tried at the next poll."""


#: Pages one instance's poll reads at most: a cursor that came back again (NOTICe's bug)
#: made a poll list forever, and the other tenants' instances waited behind it.
MAX_PAGES = 1000
#: New notifications fetched, then recorded, at a time: a page holds up to 500, each with
#: documents of up to 4 MiB (more in base64), all held in memory until its commit.
RECORD_BATCH = 32


class NoticeApi(Protocol):
    """What the adapter needs of a NOTICe account (the HTTP client, or a fake)."""

    name: str

    async def list_page(
        self, instance_code: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """One page of ids awaiting a response, and the cursor of the next page."""
        ...

    async def notification(self, notification_id: str) -> dict[str, Any]: ...

    async def document(self, notification_id: str, document_id: str) -> bytes: ...


class HttpNoticeApi:
    def __init__(self, settings: NoticeSettings, http: httpx.AsyncClient) -> None:
        self.name = settings.base_url
        self._settings = settings
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def list_page(
        self, instance_code: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        params: dict[str, Any] = {"status": AWAITING, "limit": limit}
        if after is not None:
            params["after"] = after
        response = await self._get(
            f"/instances/{path_segment(instance_code)}/notifications", params=params
        )
        body = _json_object(response)
        try:
            ids = [str(item["id"]) for item in body["items"]]
        except (KeyError, TypeError) as exc:
            raise NoticeError(f"instance {instance_code}: a listing breaks the contract") from exc
        cursor = body.get("next")
        return ids, str(cursor) if cursor else None

    async def notification(self, notification_id: str) -> dict[str, Any]:
        return _json_object(await self._get(f"/notifications/{path_segment(notification_id)}"))

    async def document(self, notification_id: str, document_id: str) -> bytes:
        # Each id one segment: a document "plans/1" was asked for at .../documents/plans/1,
        # answered 404, and its notification refused for good.
        notification, document = path_segment(notification_id), path_segment(document_id)
        return (await self._get(f"/notifications/{notification}/documents/{document}")).content

    async def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.get(
            self._settings.url(path),
            headers=self._settings.headers(),
            timeout=self._timeout,
            **kwargs,
        )
        if response.is_error:
            raise NoticeError(
                f"GET {path}: HTTP {response.status_code} {response.text[:300]}",
                response.status_code,
            )
        return response


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise NoticeError(f"{response.request.url.path}: the answer is not JSON") from exc
    if not isinstance(body, dict):
        raise NoticeError(f"{response.request.url.path}: the answer is not a JSON object")
    return body


@dataclass(frozen=True)
class NoticeSource:
    """One NOTICe account and the instances polled with it."""

    api: NoticeApi
    instances: tuple[str, ...]


@dataclass
class FetchedNotification:
    notification_id: str
    detail: dict[str, Any]
    #: The instance whose listing named it, fetched with that instance's account: it
    #: says whose the notification is (its details' ``instanceCode`` must agree).
    polled_instance: str
    documents: list[NoticeDocument] = field(default_factory=list)
    #: Documents that do not match their metadata, said for a person.
    mismatches: list[str] = field(default_factory=list)
    #: Why the notification cannot become an event (set while reading it).
    problem: str | None = None


def other_instance_reason(polled: str, named: str) -> str:
    return (
        f"NOTICe listed it under {polled!r} but it names instance {named!r}: kept here, not"
        " published (check the NOTICe account, and the poll_instances, that list it)."
    )


def unroutable_reason(instance_code: str) -> str:
    return (
        f"The NOTICe instance {instance_code!r} is no tenant's (no tenant file names it as"
        " notice.instance): the notification is kept here, not published."
    )


class NoticeInbound:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        sources: Sequence[NoticeSource],
        instances: Mapping[str, str],
        relay: OutboxRelay | None = None,
        clock: Callable[[], datetime] = utcnow,
        concurrency: int = 8,
        page_size: int = 500,
    ) -> None:
        self._sessions = sessions
        self._sources = list(sources)
        #: NOTICe instance code → tenant.
        self._tenants = dict(instances)
        self._relay = relay
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._page_size = page_size
        self._waiting = WaitingItems(sessions, CHANNEL, clock)
        self._tracer = tracer("gateway")

    async def run(self, poll_seconds: float = 5.0) -> None:
        if not self._sources:
            log.info("no tenant names a NOTICe instance: nothing to poll")
            return
        while True:
            try:
                await self.poll_once()
            except Exception:  # the database is away: the next poll tries again
                log.exception("NOTICe poll failed; trying again")
            await asyncio.sleep(poll_seconds)

    async def poll_once(self) -> int:
        """Take every new notification of every instance; return how many were taken."""
        taken = 0
        for source in self._sources:
            for instance in source.instances:
                try:
                    taken += await self._poll_instance(source.api, instance)
                except Exception as exc:  # the database is away: the other instances still try
                    log.exception("NOTICe instance %s not polled", instance)
                    self._failed(instance, exc)
        return taken

    async def _poll_instance(self, api: NoticeApi, instance: str) -> int:
        taken, after, cursors = 0, None, set[str]()
        for _ in range(MAX_PAGES):
            try:
                ids, after = await api.list_page(instance, after, self._page_size)
            except Exception as exc:  # NOTICe is away: try at the next poll
                log.warning("NOTICe instance %s could not be listed: %r", instance, exc)
                self._failed(instance, exc)
                return taken
            usable = [i for i in dict.fromkeys(ids) if _usable_id(instance, i)]
            known = await self._known(usable)
            new = [i for i in usable if i not in known]
            later = await self._waiting.not_due("", new)  # failed lately: not at every poll
            new = [i for i in new if i not in later]
            for start in range(0, len(new), RECORD_BATCH):
                failures: list[NotTaken] = []
                fetched = await asyncio.gather(
                    *(
                        self._fetch(api, instance, i, failures)
                        for i in new[start : start + RECORD_BATCH]
                    )
                )
                await self._waiting.failed("", failures)
                taken += await self._record(
                    [notification for notification in fetched if notification is not None]
                )
            if after is None or not ids:
                break
            if after in cursors:
                log.error("NOTICe instance %s: its listing came back to cursor %r", instance, after)
                break
            cursors.add(after)
        else:
            log.error(
                "NOTICe instance %s: more than %d pages; the rest next poll", instance, MAX_PAGES
            )
        # NOTICe answered every page asked (a cursor it repeats is its bug, logged above).
        POLL_HEALTH.succeeded(CHANNEL, instance, self._tenants.get(instance), self._clock())
        return taken

    def _failed(self, instance: str, exc: Exception) -> None:
        # An instance no tenant names (a ``poll_instances`` one) is no tenant's source.
        POLL_HEALTH.failed(CHANNEL, instance, self._tenants.get(instance), self._clock(), exc)

    async def _known(self, ids: Iterable[str]) -> set[str]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(InboundDocument.source_message_id).where(
                    InboundDocument.channel == CHANNEL,
                    InboundDocument.source_message_id.in_(list(ids)),
                )
            )
            return set(rows.all())

    async def _fetch(
        self, api: NoticeApi, instance: str, notification_id: str, failures: list[NotTaken]
    ) -> FetchedNotification | None:
        """The notification and its checked documents, or with the problem that keeps it
        from being published for good; None when it must wait for a later poll (added to
        ``failures``)."""
        tenant = self._tenants.get(instance)
        async with self._slots:
            try:
                detail = await api.notification(notification_id)
            except Exception as exc:
                return _unavailable(instance, tenant, notification_id, {}, "detail", exc, failures)
            fetched = FetchedNotification(notification_id, detail, instance)
            documents = detail.get("documents") or []
            if not isinstance(documents, list):
                fetched.problem = "its documents are not a list, as NOTICe's contract says"
                return fetched
            declared = _declared_bytes(documents)
            if declared > MAX_DOCUMENT_BYTES:  # refused before anything is downloaded
                fetched.problem = (
                    f"its documents are {declared} bytes; one event carries at most"
                    f" {MAX_DOCUMENT_BYTES}"
                )
                return fetched
            try:
                kept = 0
                for metadata in documents:
                    await self._fetch_document(api, fetched, metadata, kept)
                    if fetched.problem:
                        fetched.documents.clear()  # never published: not held until recorded
                        break
                    kept += fetched.documents[-1].size
            except Exception as exc:
                return _unavailable(
                    instance, tenant, notification_id, detail, "document", exc, failures
                )
        return fetched

    async def _fetch_document(
        self, api: NoticeApi, fetched: FetchedNotification, metadata: Any, kept: int
    ) -> None:
        """Fetch a document into ``fetched``, or set its problem; ``kept``: the bytes of the
        notification's documents fetched before it."""
        try:
            document_id = str(metadata["id"])
            declared_size, declared_sha256 = int(metadata["size"]), str(metadata["sha256"])
            filename, media_type = str(metadata["filename"]), str(metadata["mediaType"])
        except (KeyError, TypeError, ValueError):
            fetched.problem = f"a document's metadata breaks NOTICe's contract: {metadata!r}"
            return
        content = await api.document(fetched.notification_id, document_id)
        mismatch = document_mismatch(content, declared_size, declared_sha256)
        if mismatch and kept + len(content) <= MAX_DOCUMENT_BYTES:  # a broken transfer? again
            content = await api.document(fetched.notification_id, document_id)
            mismatch = document_mismatch(content, declared_size, declared_sha256)
        if kept + len(content) > MAX_DOCUMENT_BYTES:
            # Refused once what came is too much for one event: only the declared sizes
            # were checked, and documents understating theirs were all downloaded, twice
            # each, and held, before the notification was refused for their size.
            fetched.problem = (
                f"its documents are more than their metadata declare: {kept + len(content)}"
                f" bytes by document {document_id}; one event carries at most"
                f" {MAX_DOCUMENT_BYTES}"
            )
            return
        if mismatch:
            # Its declared SHA-256 is NOTICe's text, of any length and any characters.
            mismatch = clipped(plain_text(mismatch), METADATA_MISMATCH_LENGTH)
            fetched.mismatches.append(f"document {document_id} ({filename}): {mismatch}")
        fetched.documents.append(
            NoticeDocument(
                document_id=document_id,
                filename=filename,
                media_type=media_type,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                content_base64=pybase64.b64encode(content).decode(),
                metadata_mismatch=mismatch,
            )
        )

    async def _record(self, notifications: list[FetchedNotification]) -> int:
        """Record a page's notifications and stage their events in one transaction.

        Should another gateway replica have recorded one meanwhile, each is
        recorded on its own instead, and the ones already there are left alone.
        So is one whose row or event fails (a value its column cannot hold, that
        the checks missed): it failed its batch at every poll, and every later
        page of its instance waited behind it. Alone, it waits for a later poll
        (``WaitingItems``, shown) and the others are recorded.
        """
        if not notifications:
            return 0
        try:
            recorded = [self._row(n) for n in notifications]
            async with write_transaction(self._sessions) as session:
                for row, data in recorded:
                    self._add(session, row, data)
                await self._waiting.forget(
                    session, "", [row.source_message_id for row, _ in recorded]
                )
        except Exception as exc:
            if database_away(exc):
                raise
            recorded = await self._record_one_by_one(notifications)
        published = 0
        for row, _ in recorded:
            if row.status == "published":
                published += 1
            else:
                log.warning(
                    "NOTICe notification %s is %s: %s",
                    row.source_message_id,
                    row.status,
                    row.reason,
                )
        if published and self._relay:
            self._relay.wake()
        log.info("NOTICe: %d notifications recorded, %d published", len(recorded), published)
        return len(recorded)

    async def _record_one_by_one(
        self, notifications: list[FetchedNotification]
    ) -> list[tuple[InboundDocument, NoticeNotificationReceived | None]]:
        recorded, failures = [], []
        for notification in notifications:
            notification_id = notification.notification_id
            try:
                row, data = self._row(notification)  # the failed transaction's rows are spent
                async with self._sessions() as session, session.begin():
                    self._add(session, row, data)
                    await self._waiting.forget(session, "", [notification_id])
            except Exception as exc:
                if isinstance(exc, IntegrityError) and await self._known([notification_id]):
                    log.info("NOTICe notification %s was recorded concurrently", notification_id)
                    continue
                if database_away(exc):
                    raise
                log.exception("NOTICe notification %s not recorded yet", notification_id)
                tenant = self._tenants.get(notification.polled_instance)
                failures.append(NotTaken(notification_id, tenant, not_recorded_reason(exc)))
                continue
            recorded.append((row, data))
        await self._waiting.failed("", failures)
        return recorded

    def _row(
        self, fetched: FetchedNotification
    ) -> tuple[InboundDocument, NoticeNotificationReceived | None]:
        detail = fetched.detail
        # Whose it is by the instance polled, not by what the document says of itself: a
        # detail naming another tenant's instance (a shared or misconfigured account, a
        # proxy) made a document fetched with one tenant's key another tenant's file.
        instance = fetched.polled_instance
        named = str(detail.get("instanceCode", instance))
        tenant = self._tenants.get(instance)
        status: Status = "published"
        data: NoticeNotificationReceived | None = None
        reason = "; ".join(fetched.mismatches) or None
        stored = json.dumps(detail, sort_keys=True, ensure_ascii=False).encode()
        if tenant is None:
            status, reason = "unroutable", unroutable_reason(instance)
        elif named != instance:
            status, reason = "refused", other_instance_reason(instance, named)
        elif fetched.problem:
            status, reason = "refused", fetched.problem
        else:
            try:
                data = event_data(fetched)
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                status, reason = "refused", contract_problem("notification", exc)
            else:
                # Its details count too: a subject of megabytes made an event the broker
                # refused, and it waited in the outbox for ever.
                size = len(stored) + sum(len(d.content_base64) for d in data.documents)
                if size > MAX_DOCUMENT_BYTES:
                    status, data = "refused", None
                    reason = (
                        f"Its details and documents take {size} bytes (the documents in"
                        f" base64); one event carries at most {MAX_DOCUMENT_BYTES}. Kept here"
                        " for an operator."
                    )
        now = self._clock()
        row = InboundDocument(
            channel=CHANNEL,
            source_message_id=fetched.notification_id,
            tenant=tenant,
            sender=SENDER,
            receiver=instance[:210],
            # NOTICe's text, of any characters: a NUL failed the batch (PostgreSQL), at every
            # poll, and its instance's later notifications were never reached.
            document_type=clipped(
                plain_text(str(detail.get("fileType") or DOCUMENT_TYPE)), DOCUMENT_TYPE_LENGTH
            ),
            size=len(stored),
            sha256=hashlib.sha256(stored).hexdigest(),
            document=stored,
            status=status,
            source_status="pending",
            reason=reason,
            received_at=_received_at(detail.get("receivedOn")),
            fetched_at=now,
            updated_at=now,
        )
        return row, data

    def _add(
        self, session: AsyncSession, row: InboundDocument, data: NoticeNotificationReceived | None
    ) -> None:
        session.add(row)
        if data is None or row.tenant is None:
            return
        with self._tracer.start_as_current_span(
            "notice inbound", attributes={"hub.notice.notification_id": row.source_message_id}
        ):
            event = new_event(data, tenant=row.tenant, subject=row.source_message_id, source=SOURCE)
            stage(session, event)
        row.event_id = event.id


def _unavailable(
    instance: str,
    tenant: str | None,
    notification_id: str,
    detail: dict[str, Any],
    what: str,
    exc: Exception,
    failures: list[NotTaken],
) -> FetchedNotification | None:
    """A notification NOTICe will never give whole (``SourceError.gone``), with
    that problem; None for any other failure, added to ``failures`` and tried again at a
    later poll."""
    if isinstance(exc, NoticeError) and exc.gone:
        gone = FetchedNotification(notification_id, detail, instance)
        gone.problem = f"NOTICe gives no {what} of it: {exc}"
        return gone
    if isinstance(exc, ResponseTooLarge) and 200 <= exc.status < 300:
        # Given as the document, but more than its metadata said: no event carries it. (Too
        # large an error page is only an error: the next poll tries again.)
        too_large = FetchedNotification(notification_id, detail, instance)
        too_large.problem = f"NOTICe answered its {what} with {exc}, more than one event carries"
        return too_large
    log.warning("NOTICe notification %s not taken yet: %r", notification_id, exc)
    failures.append(NotTaken(notification_id, tenant, f"NOTICe gave no {what} of it yet: {exc}"))
    return None


def _declared_bytes(documents: list[Any]) -> int:
    """The documents' sizes as their metadata declare them (broken metadata counts 0: it
    is refused when the document is read)."""
    total = 0
    for metadata in documents:
        try:
            total += max(int(metadata["size"]), 0)
        except (KeyError, TypeError, ValueError):
            continue
    return total


def _usable_id(instance: str, notification_id: str) -> bool:
    if usable_id(notification_id):
        return True
    log.error(
        "NOTICe instance %s lists a notification id of %d characters, which the inbound log"
        " cannot keep (at most %d, no control characters): left alone, %.80r…",
        instance,
        len(notification_id),
        MESSAGE_ID_LENGTH,
        notification_id,
    )
    return False


def document_mismatch(content: bytes, size: int, sha256: str) -> str | None:
    """How ``content`` differs from its metadata, or None."""
    problems = []
    if len(content) != size:
        problems.append(f"{len(content)} bytes received, {size} declared")
    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256.lower():
        problems.append(f"SHA-256 {actual} received, {sha256} declared")
    return "; ".join(problems) or None


def event_data(fetched: FetchedNotification) -> NoticeNotificationReceived:
    detail = fetched.detail
    return NoticeNotificationReceived(
        notification_id=fetched.notification_id,
        instance_code=detail["instanceCode"],
        file_type=detail["fileType"],
        received_on=date.fromisoformat(detail["receivedOn"]),
        subject=detail["subject"],
        applicants=detail.get("applicants") or [],
        parcels=detail.get("parcels") or [],
        documents=fetched.documents,
    )


def _received_at(value: object) -> datetime | None:
    try:
        day = date.fromisoformat(str(value))
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def notice_sources(
    settings_by_tenant: Mapping[str, NoticeSettings],
    instances: Mapping[str, str],
    http: httpx.AsyncClient,
) -> list[NoticeSource]:
    """One source per NOTICe account, polling its tenants' instances and ``poll_instances``.

    ``settings_by_tenant``: each tenant's ``notice`` connector; ``instances``: NOTICe
    instance code → tenant. Tenants sharing an account are polled with it once.
    """
    accounts: dict[tuple[str, str], tuple[NoticeSettings, dict[str, None]]] = {}
    polled_by_tenant = {tenant: code for code, tenant in instances.items()}
    for tenant, settings in settings_by_tenant.items():
        account = (settings.base_url.rstrip("/"), settings.api_key.get_secret_value())
        _, codes = accounts.setdefault(account, (settings, {}))
        if tenant in polled_by_tenant:
            codes[polled_by_tenant[tenant]] = None
        codes.update(dict.fromkeys(settings.poll_instances))
    return [
        NoticeSource(HttpNoticeApi(settings, http), tuple(codes))
        for settings, codes in accounts.values()
        if codes
    ]


def build_notice_inbound(
    routing: RoutingTable,
    tenants: Mapping[str, Tenant],
    sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    relay: OutboxRelay | None,
) -> NoticeInbound:
    """The adapter for every tenant that names its NOTICe instance, polled with the
    account of its ``notice`` connector (a tenant without one is not polled)."""
    instances = {
        tenant.notice_instance: code
        for code, tenant in tenants.items()
        if tenant.notice_instance is not None
    }
    accounts: dict[str, NoticeSettings] = {}
    for (tenant, _), config in sorted(routing.connector_settings.items()):
        if config["type"] == TYPE_NAME and tenant not in accounts:
            accounts[tenant] = NoticeSettings.model_validate(config)
    for code, tenant in instances.items():
        if tenant not in accounts:
            log.warning(
                "tenant %s names NOTICe instance %s but has no notice connector: not polled",
                tenant,
                code,
            )
    return NoticeInbound(
        sessions=sessions,
        sources=notice_sources(accounts, instances, http),
        instances=instances,
        relay=relay,
    )
