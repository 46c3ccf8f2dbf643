"""Inbound adapter: the consulted bodies' opinions, back from their platform.

A background task of the gateway polls the answers of every tenant's
``opinion_rest`` account (modelled contract ``contracts/opinions/openapi.yaml``).
For each answer it:

1. records it in ``gateway_inbound`` (channel ``opinion``, unique by the
   account's tenant and the platform's answer id) and stages
   ``gateway.opinion.received.v1`` for that tenant, in one transaction, unless
   the row exists already;
2. acknowledges it at the platform, which then stops listing it.

A crash between 1 and 2 leaves the answer listed: the next poll finds the
row and only acknowledges. So each answer is published once. An answer that
breaks the event contract is recorded ``refused`` with the reason, and
acknowledged all the same (it would come back at every poll otherwise); the
operator sees it in ``/v1/inbound``. One that cannot be recorded (the database
refuses its row) waits for a later poll, further and further apart, shown in
``/v1/inbound/waiting``, as Peppol's and NOTICe's do; one whose id the inbound
log cannot keep is left alone at the platform, and logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.envelope import new_event
from contracts.events.outside import OpinionReceived
from gateway.connectors.opinions import TYPE_NAME, OpinionRestSettings
from gateway.inbound.health import POLL_HEALTH
from gateway.inbound.records import (
    MESSAGE_ID_LENGTH,
    SENDER_LENGTH,
    InboundDocument,
    NotTaken,
    Status,
    WaitingItems,
    not_recorded_reason,
    path_segment,
    too_large_problem,
    usable_id,
)
from gateway.routing import RoutingTable
from kernel.database import utcnow
from kernel.outbox import OutboxRelay, stage
from kernel.telemetry import tracer
from kernel.texts import clipped, plain_text

log = logging.getLogger(__name__)
SOURCE = "urn:hub:gateway:opinions"
CHANNEL = "opinion"
DOCUMENT_TYPE = "opinion"


def source_of(tenant: str) -> str:
    """The inbound rows' ``source`` of a tenant's account. The contract makes an answer's
    id unique within its account only: keyed by the id alone, one tenant's ``AV-1`` was
    taken for another's already recorded, never published, and acknowledged for it.

    The tenant rather than ``<base_url>|<tenant>`` (Peppol's access point URL): the
    contract has one account per commune and the adapter polls one per tenant, and the
    rows of an older gateway can be given it exactly (gateway migration 6), where their
    platform's URL was never recorded. Keyed by a URL, a URL's change (a trailing slash,
    a new host name) would publish again every answer still listed."""
    return tenant


class OpinionPlatformError(RuntimeError):
    """The platform answered something unexpected; tried again at the next poll."""


class OpinionAnswers(Protocol):
    """What the adapter needs of a tenant's account (the HTTP client, or a fake)."""

    tenant: str

    async def list_new(self) -> list[dict[str, Any]]: ...

    async def acknowledge(self, answer_id: str) -> None: ...


class HttpOpinionAnswers:
    def __init__(self, tenant: str, settings: OpinionRestSettings, http: httpx.AsyncClient) -> None:
        self.tenant = tenant
        self._settings = settings
        self._http = http
        self._timeout = httpx.Timeout(settings.timeout_seconds)

    async def list_new(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/answers", params={"limit": 100})
        items = body.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise OpinionPlatformError("GET /answers: the answer breaks the contract")
        return items

    async def acknowledge(self, answer_id: str) -> None:
        await self._call("POST", f"/answers/{path_segment(answer_id)}/acknowledge")

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(
            method,
            self._settings.url(path),
            headers=self._settings.headers(),
            timeout=self._timeout,
            **kwargs,
        )
        if response.is_error:
            raise OpinionPlatformError(
                f"{method} {path}: HTTP {response.status_code} {response.text[:300]}"
            )
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise OpinionPlatformError(f"{method} {path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise OpinionPlatformError(f"{method} {path}: the answer is not a JSON object")
        return body


@dataclass(frozen=True)
class _Taken:
    row_id: int
    status: str
    source_status: str


class OpinionInbound:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        accounts: Sequence[OpinionAnswers],
        relay: OutboxRelay | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._accounts = list(accounts)
        self._relay = relay
        self._clock = clock
        self._tracer = tracer("gateway")
        self._waiting = WaitingItems(sessions, CHANNEL, clock)

    async def run(self, poll_seconds: float = 5.0) -> None:
        if not self._accounts:
            log.info("no tenant has an opinions platform account: nothing to poll")
            return
        while True:
            await self.poll_once()
            await asyncio.sleep(poll_seconds)

    async def poll_once(self) -> int:
        """Take every new answer of every account; return how many were taken.

        One that fails waits for a later poll (``WaitingItems``: further and further
        apart, and shown), as Peppol's and NOTICe's do. Only logged, an answer whose row
        the database refused (an id longer than its column) was tried every 5 s, never
        shown, and, a hundred of them listed first, held every later answer behind them.
        """
        taken = 0
        for account in self._accounts:
            try:
                answers = await account.list_new()
            except Exception as exc:  # the platform is away: try at the next poll
                log.warning("opinions of tenant %s could not be listed: %r", account.tenant, exc)
                POLL_HEALTH.failed(CHANNEL, account.tenant, account.tenant, self._clock(), exc)
                continue
            listed = {answer_id: a for a in answers if (answer_id := _usable_answer_id(a))}
            source = source_of(account.tenant)
            try:
                later = await self._waiting.not_due(source, list(listed))
            except Exception as exc:  # the database is away: this account at the next poll
                # Raised, it skipped the other tenants' accounts and restarted the job.
                log.warning("opinions of tenant %s not taken yet: %r", account.tenant, exc)
                POLL_HEALTH.failed(CHANNEL, account.tenant, account.tenant, self._clock(), exc)
                continue
            failures: list[NotTaken] = []
            for answer_id, answer in listed.items():
                if answer_id in later:  # failed lately: not at every poll
                    continue
                try:
                    await self.take(account, answer)
                    taken += 1
                except Exception as exc:  # this one waits for a later poll; the others go on
                    log.warning("opinion answer %r not taken yet: %r", answer_id, exc)
                    failures.append(NotTaken(answer_id, account.tenant, not_recorded_reason(exc)))
            await self._waiting.failed(source, failures)
            # The answers not taken wait on their own (above): the account's poll worked.
            POLL_HEALTH.succeeded(CHANNEL, account.tenant, account.tenant, self._clock())
        return taken

    async def take(self, account: OpinionAnswers, answer: Mapping[str, Any]) -> _Taken:
        answer_id = _usable_answer_id(answer)
        if answer_id is None:
            raise OpinionPlatformError("an answer has no answerId the inbound log can keep")
        taken = await self._known(account.tenant, answer_id) or await self._record(
            account.tenant, answer_id, answer
        )
        if taken.source_status != "acknowledged":
            await account.acknowledge(answer_id)
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(InboundDocument)
                    .where(InboundDocument.id == taken.row_id)
                    .values(source_status="acknowledged", updated_at=self._clock())
                )
        return _Taken(taken.row_id, taken.status, "acknowledged")

    async def _known(self, tenant: str, answer_id: str) -> _Taken | None:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(
                        InboundDocument.id, InboundDocument.status, InboundDocument.source_status
                    ).where(
                        InboundDocument.channel == CHANNEL,
                        InboundDocument.source == source_of(tenant),
                        InboundDocument.source_message_id == answer_id,
                    )
                )
            ).first()
        return _Taken(row[0], row[1], row[2]) if row else None

    async def _record(self, tenant: str, answer_id: str, answer: Mapping[str, Any]) -> _Taken:
        status: Status = "published"
        reason = None
        data: OpinionReceived | None = None
        try:
            data = OpinionReceived(
                opinion_id=answer["requestId"],
                file_id=answer["fileId"],
                body=answer["body"],
                verdict=answer["verdict"],
                text=answer["text"],
                given_on=answer["givenOn"],
            )
        except (KeyError, ValidationError) as exc:
            status = "refused"
            reason = f"The answer breaks the hub's event contract: {exc!r}"[:2000]
        event = (
            new_event(data, tenant=tenant, subject=data.file_id, source=SOURCE) if data else None
        )
        if event is not None and (problem := too_large_problem("answer", event)):
            status, reason, data, event = "refused", problem, None, None
        stored = json.dumps(dict(answer), sort_keys=True, ensure_ascii=False).encode()
        now = self._clock()
        row = InboundDocument(
            channel=CHANNEL,
            source=source_of(tenant),
            source_message_id=answer_id,
            tenant=tenant,
            # The platform's text: a NUL in it failed the row (PostgreSQL) at every poll.
            sender=clipped(plain_text(str(answer.get("body") or "?")), SENDER_LENGTH),
            receiver=tenant,
            document_type=DOCUMENT_TYPE,
            size=len(stored),
            sha256=hashlib.sha256(stored).hexdigest(),
            document=stored,
            status=status,
            source_status="pending",
            reason=reason,
            received_at=None,
            fetched_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
                await self._waiting.forget(session, source_of(tenant), [answer_id])
                if event is not None:
                    with self._tracer.start_as_current_span(
                        "opinion inbound", attributes={"hub.opinion.answer_id": answer_id}
                    ):
                        stage(session, event)
                    row.event_id = event.id
        except IntegrityError:
            known = await self._known(tenant, answer_id)  # another replica recorded it meanwhile
            if known is None:
                raise
            return known
        if data is not None:
            log.info("opinion %s published for tenant %s", answer_id, tenant)
            if self._relay:
                self._relay.wake()
        else:
            log.warning("opinion %s refused: %s", answer_id, reason)
        return _Taken(row.id, status, "pending")


def _usable_answer_id(answer: Mapping[str, Any]) -> str | None:
    """The answer's id; None (logged) when it has none the inbound log can keep (longer
    than its column, control characters): it is left alone at the platform."""
    answer_id = answer.get("answerId")
    if isinstance(answer_id, str | int) and usable_id(str(answer_id)):
        return str(answer_id)
    log.error(
        "an opinion answer without an answerId the inbound log can keep (at most %d"
        " characters, no control characters) is left alone: %.80r",
        MESSAGE_ID_LENGTH,
        answer_id,
    )
    return None


def opinion_accounts(
    settings_by_tenant: Mapping[str, OpinionRestSettings], http: httpx.AsyncClient
) -> list[HttpOpinionAnswers]:
    return [
        HttpOpinionAnswers(tenant, settings, http)
        for tenant, settings in settings_by_tenant.items()
    ]


def build_opinion_inbound(
    routing: RoutingTable,
    sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    relay: OutboxRelay | None,
) -> OpinionInbound:
    """The adapter polling the account of every tenant's ``opinion_rest`` connector."""
    accounts: dict[str, OpinionRestSettings] = {}
    for (tenant, _), config in sorted(routing.connector_settings.items()):
        if config["type"] == TYPE_NAME and tenant not in accounts:
            accounts[tenant] = OpinionRestSettings.model_validate(config)
    return OpinionInbound(sessions=sessions, accounts=opinion_accounts(accounts, http), relay=relay)
