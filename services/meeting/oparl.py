"""The public OParl 1.1 API (``/oparl/v1``): the decisions communes publish, read-only, no token.

One OParl ``Body`` per tenant with meeting configurations; in it, the
configurations (college, council) as ``Organization``, the closed meetings
that have a published decision as ``Meeting``, each published decision as an
``AgendaItem`` and as a ``Paper`` (same id, two views), and the annexes of
published decisions as ``File`` with their bytes. Nothing else is visible:
not an unpublished decision, not a person (the body's person list is empty),
and a tenant's objects only under its own body.

Everything served comes from the read model written at publication
(``publication.py``: pseudonymised once), through indexed queries of a page
(offset on ``(tenant, published_at, id)``) and a count, serialised from
plain rows into dictionaries, without pydantic on the way out.

A tenant's lists change only when it publishes (a published decision's
meeting is closed and no longer changes), so a rendered list page stays true
until the tenant's next publication. ``PageCache`` keeps rendered pages, and
each list's size, under the tenant's publication generation
(``PublicationGeneration``, a counter the publication increments in its own
transaction), and serves them with that generation in the ``ETag``: a crawler
that sends ``If-None-Match`` gets a ``304``. A process reads the generation
from the database at most once a second (``GENERATION_TTL_SECONDS``), and at
once after it published itself, so a publication shows in every process
within a second.

Object ids are absolute URLs on ``HUB_PUBLIC_BASE_URL`` when set, else on the
address the request came to.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, Select, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from kernel.api import EARLIEST_DAY, LARGEST_INTEGER, LATEST_DAY
from kernel.days import BRUSSELS, commune_day
from kernel.errors import NotFound, ProblemError
from kernel.tenants import Tenant
from services.meeting.configuration import MeetingConfig, TenantMeetings
from services.meeting.domain import MeetingState
from services.meeting.tables import (
    Annex,
    Meeting,
    PublicationGeneration,
    PublishedDecision,
    PublishedFile,
)

PREFIX = "/oparl/v1"
OPARL_VERSION = "https://schema.oparl.org/1.1/"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

#: ``AgendaItem.result``: the decision in the commune's words.
RESULTS = {
    "accepted": "Approuvé",
    "accepted_with_amendments": "Approuvé avec amendements",
    "refused": "Refusé",
}
PAPER_TYPES = {"college": "Décision du collège communal", "council": "Délibération du conseil"}
#: Published files are public: any web page may read them (OParl asks servers for CORS).
CORS = {"Access-Control-Allow-Origin": "*"}
#: Rendered list pages kept per meeting process by default (a page of 20 decisions is
#: ~20 kB); ``HUB_OPARL_PAGE_CACHE_MB`` sets it.
PAGE_CACHE_BYTES = 64 * 1024 * 1024
#: How long a meeting process trusts the publication generation it read last, so that
#: a cached page costs no database round trip. A publication made through this process
#: shows at once (``forget_generation``); one made through another, within this time.
GENERATION_TTL_SECONDS = 1.0


def oparl_type(name: str) -> str:
    return f"https://schema.oparl.org/1.1/{name}"


def timestamp(moment: datetime) -> str:
    """``created`` and ``modified`` as stored, microseconds included: cut to the second,
    ``modified_until`` set to an object's own ``modified`` left that object out."""
    return moment.astimezone(BRUSSELS).isoformat()


class InvalidCursor(ProblemError):
    def __init__(self, cursor: str) -> None:
        super().__init__(
            400,
            "invalid-cursor",
            "Invalid page cursor",
            f"after={cursor!r} is not a cursor of this list; follow the list's links.",
        )


class InvalidFilter(ProblemError):
    def __init__(self, name: str, value: str, reason: str | None = None) -> None:
        super().__init__(
            400,
            "invalid-filter",
            "Invalid date filter",
            f"{name}={value!r} "
            + (reason or "is not an ISO 8601 date-time (e.g. 2026-05-01T00:00:00+02:00)")
            + ".",
        )


# -- the URLs of objects ------------------------------------------------------------------

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Urls:
    root: str

    @classmethod
    def of(cls, request: Request) -> Urls:
        public: str | None = request.app.state.settings.public_base_url
        base = public or str(request.base_url)
        return cls(base.rstrip("/") + PREFIX)

    @property
    def system(self) -> str:
        return f"{self.root}/system"

    @property
    def bodies(self) -> str:
        return f"{self.root}/bodies"

    def body(self, tenant: str) -> str:
        return f"{self.root}/bodies/{tenant}"

    def listing(self, tenant: str, kind: str) -> str:
        return f"{self.root}/bodies/{tenant}/{kind}"

    def object(self, tenant: str, kind: str, identifier: str) -> str:
        if not _PLAIN_ID.fullmatch(identifier):  # ids are UUIDs and configuration names
            identifier = quote(identifier, safe="")
        return f"{self.root}/bodies/{tenant}/{kind}/{identifier}"


# -- objects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A tenant that publishes: its name and meeting configurations."""

    tenant: Tenant
    meetings: TenantMeetings

    @property
    def code(self) -> str:
        return self.tenant.code

    def config(self, config_id: str) -> MeetingConfig | None:
        return self.meetings.configurations.get(config_id)


def system_json(urls: Urls) -> dict[str, Any]:
    return {
        "id": urls.system,
        "type": oparl_type("System"),
        "oparlVersion": OPARL_VERSION,
        "body": urls.bodies,
        "name": "Hub e-government des communes wallonnes: décisions publiées",
    }


def body_json(urls: Urls, body: Body) -> dict[str, Any]:
    code = body.code
    return {
        "id": urls.body(code),
        "type": oparl_type("Body"),
        "system": urls.system,
        "name": body.tenant.name,
        "shortName": code,
        "classification": "Pouvoir local (code INS " + code + ")",
        "organization": urls.listing(code, "organizations"),
        "person": urls.listing(code, "people"),
        "meeting": urls.listing(code, "meetings"),
        "paper": urls.listing(code, "papers"),
        "agendaItem": urls.listing(code, "agenda-items"),
        "file": urls.listing(code, "files"),
        "legislativeTerm": [],
    }


def organization_json(urls: Urls, tenant: str, config: MeetingConfig) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": urls.object(tenant, "organizations", config.id),
        "type": oparl_type("Organization"),
        "body": urls.body(tenant),
        "name": config.title,
        "shortName": config.id,
        "organizationType": "Gremium",
        "classification": config.kind,
    }
    if config.description:
        data["keyword"] = [config.description]
    return data


def file_json(
    urls: Urls, tenant: str, item_id: str, meeting_id: str, file: dict[str, Any], published: str
) -> dict[str, Any]:
    url = urls.object(tenant, "files", file["annex_id"])
    return {
        "id": url,
        "type": oparl_type("File"),
        "name": file["name"],
        "fileName": file["file_name"],
        "mimeType": file["mime_type"],
        "size": file["size"],
        "sha1Checksum": file["sha1"],
        "accessUrl": url + "/content",
        "downloadUrl": url + "/download",
        "date": published[:10],
        "agendaItem": [urls.object(tenant, "agenda-items", item_id)],
        "paper": [urls.object(tenant, "papers", item_id)],
        "meeting": [urls.object(tenant, "meetings", meeting_id)],
        "created": published,
        "modified": published,
    }


#: The columns of ``PublishedDecision`` a page reads (never the ORM object: cheaper rows).
DECISION_COLUMNS = (
    PublishedDecision.item_id,
    PublishedDecision.meeting_id,
    PublishedDecision.meeting_config,
    PublishedDecision.meeting_date,
    PublishedDecision.position,
    PublishedDecision.decision,
    PublishedDecision.decision_number,
    PublishedDecision.title,
    PublishedDecision.resolution_text,
    PublishedDecision.files,
    PublishedDecision.published_at,
)


def _files(urls: Urls, tenant: str, row: Any, published: str) -> list[dict[str, Any]]:
    return [
        file_json(urls, tenant, row.item_id, row.meeting_id, file, published)
        for file in row.files or ()
    ]


def agenda_item_json(urls: Urls, tenant: str, row: Any) -> dict[str, Any]:
    published = timestamp(row.published_at)
    return {
        "id": urls.object(tenant, "agenda-items", row.item_id),
        "type": oparl_type("AgendaItem"),
        "meeting": urls.object(tenant, "meetings", row.meeting_id),
        "number": str(row.position + 1),
        "order": row.position,
        "name": row.title,
        "public": True,
        "result": RESULTS.get(row.decision, row.decision),
        "resolutionText": row.resolution_text,
        "auxiliaryFile": _files(urls, tenant, row, published),
        "keyword": [row.decision_number],
        "created": published,
        "modified": published,
    }


def paper_json(urls: Urls, body: Body, row: Any) -> dict[str, Any]:
    published = timestamp(row.published_at)
    config = body.config(row.meeting_config)
    data: dict[str, Any] = {
        "id": urls.object(body.code, "papers", row.item_id),
        "type": oparl_type("Paper"),
        "body": urls.body(body.code),
        "name": row.title,
        "reference": row.decision_number,
        "date": commune_day(row.meeting_date).isoformat(),
        "paperType": PAPER_TYPES[config.kind] if config else "Décision",
        "auxiliaryFile": _files(urls, body.code, row, published),
        "created": published,
        "modified": published,
    }
    if config is not None:
        data["underDirectionOf"] = [urls.object(body.code, "organizations", config.id)]
    return data


def meeting_json(urls: Urls, body: Body, meeting: Any, decisions: Sequence[Any]) -> dict[str, Any]:
    config = body.config(meeting.meeting_config)
    title = config.title if config else meeting.meeting_config
    start = meeting.date.astimezone(BRUSSELS)
    modified = max([meeting.updated_at, *(row.published_at for row in decisions)])
    data: dict[str, Any] = {
        "id": urls.object(body.code, "meetings", meeting.id),
        "type": oparl_type("Meeting"),
        "name": f"{title} du {start:%d/%m/%Y}",
        "meetingState": "clôturée",
        "cancelled": False,
        "start": start.isoformat(timespec="seconds"),
        "agendaItem": [agenda_item_json(urls, body.code, row) for row in decisions],
        "created": timestamp(meeting.created_at),
        "modified": timestamp(modified),
    }
    if config is not None:
        data["organization"] = [urls.object(body.code, "organizations", config.id)]
    return data


# -- paging -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paging:
    page: int
    limit: int
    created_since: datetime | None = None
    created_until: datetime | None = None
    modified_since: datetime | None = None
    modified_until: datetime | None = None
    #: Where the previous page ended (``next`` links carry it): the page starts after it
    #: through the index instead of skipping ``offset`` rows.
    after: str | None = None
    #: How many objects the list holds, when an earlier page of the same publication
    #: generation counted them: this page then needs no count.
    total: int | None = None

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    @property
    def filtered(self) -> bool:
        moments = (self.created_since, self.created_until, self.modified_since, self.modified_until)
        return any(moment is not None for moment in moments)

    def query(self, page: int, after: str | None = None) -> str:
        params: dict[str, str] = {}
        for name in ("created_since", "created_until", "modified_since", "modified_until"):
            value: datetime | None = getattr(self, name)
            if value is not None:
                params[name] = value.isoformat()
        if self.limit != DEFAULT_PAGE_SIZE:
            params["limit"] = str(self.limit)
        params["page"] = str(page)
        if after is not None:
            params["after"] = after
        return urlencode(params)


@dataclass(frozen=True)
class Listed:
    """One page of a list: its objects, how many the list holds, and where the page ended."""

    data: list[dict[str, Any]]
    total: int
    after: str | None = None


@dataclass(frozen=True)
class SortKey:
    """A list's order: its columns, each read back from a cursor by ``parse``."""

    columns: tuple[Any, ...]
    parsers: tuple[Callable[[str], Any], ...]

    def cursor(self, row: Any) -> str:
        return ",".join(
            value.isoformat() if isinstance(value, datetime) else str(value)
            for value in (getattr(row, column.key) for column in self.columns)
        )

    def after(self, cursor: str) -> ColumnElement[bool]:
        parts = cursor.split(",")
        if len(parts) != len(self.columns):
            raise InvalidCursor(cursor)
        try:
            values = [parse(part) for parse, part in zip(self.parsers, parts, strict=True)]
        except ValueError:
            raise InvalidCursor(cursor) from None
        return tuple_(*self.columns) > tuple_(*values)


def within_calendar(moment: datetime) -> datetime:
    """``moment`` in UTC, or ValueError when it is out of the calendar the hub's APIs take
    (``EARLIEST_DAY`` to ``LATEST_DAY``): 0001-01-01T00:00:00+14:00 does not convert to
    UTC, and 9999-12-31 is past PostgreSQL's dates; either was a 500 from the database."""
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of the calendar") from None
    if not EARLIEST_DAY <= in_utc.date() <= LATEST_DAY:
        raise ValueError(f"{moment.isoformat()} is out of the calendar")
    return in_utc


def parse_moment(name: str, value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    # An unencoded "+02:00" reaches us as " 02:00".
    text = value.strip().replace(" ", "+") if "T" in value else value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidFilter(name, value) from None
    # Without an offset, the time is Brussels', as every time these lists show.
    moment = moment if moment.tzinfo else moment.replace(tzinfo=BRUSSELS)
    try:
        within_calendar(moment)
    except ValueError:
        raise InvalidFilter(
            name,
            value,
            f"is out of the calendar this API takes ({EARLIEST_DAY.isoformat()} to "
            f"{LATEST_DAY.isoformat()})",
        ) from None
    return moment


def list_response(url: str, paging: Paging, listed: Listed) -> JSONResponse:
    pages = max(1, math.ceil(listed.total / paging.limit))
    links = {"first": f"{url}?{paging.query(1)}", "last": f"{url}?{paging.query(pages)}"}
    if paging.page > 1:
        links["prev"] = f"{url}?{paging.query(min(paging.page - 1, pages))}"
    if paging.page < pages and listed.data:
        links["next"] = f"{url}?{paging.query(paging.page + 1, listed.after)}"
    body = {
        "data": listed.data,
        "pagination": {
            "totalElements": listed.total,
            "elementsPerPage": paging.limit,
            "currentPage": paging.page,
            "totalPages": pages,
        },
        "links": links,
    }
    return JSONResponse(body, headers=CORS)


def object_response(data: dict[str, Any]) -> JSONResponse:
    return JSONResponse(data, headers=CORS)


#: A rendered page's place in ``PageCache``: (tenant, publication generation, URL).
PageKey = tuple[str, int, str]


@dataclass(frozen=True)
class RenderedPage:
    content: bytes
    etag: str


class PageCache:
    """Rendered list pages by (tenant, publication generation, URL), least recently used first out.

    A page of an older generation is never asked for again (the key holds the
    generation) and ages out; the total size stays under ``max_bytes``.
    """

    def __init__(self, max_bytes: int = PAGE_CACHE_BYTES) -> None:
        self._pages: OrderedDict[PageKey, RenderedPage] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        #: (tenant, list) → (generation, how many objects the unfiltered list holds).
        self._sizes: dict[tuple[str, str], tuple[int, int]] = {}
        #: tenant → (generation, when it was read, ``time.monotonic()``).
        self._generations: dict[str, tuple[int, float]] = {}

    def known_generation(self, tenant: str, now: float) -> int | None:
        """The tenant's generation as read less than ``GENERATION_TTL_SECONDS`` ago."""
        known = self._generations.get(tenant)
        if known is None or now - known[1] >= GENERATION_TTL_SECONDS:
            return None
        return known[0]

    def keep_generation(self, tenant: str, generation: int, now: float) -> None:
        self._generations[tenant] = (generation, now)

    def forget_generation(self, tenant: str) -> None:
        """This process published for ``tenant``: read its generation again at once."""
        self._generations.pop(tenant, None)

    def list_size(self, tenant: str, kind: str, generation: int) -> int | None:
        kept = self._sizes.get((tenant, kind))
        return kept[1] if kept is not None and kept[0] == generation else None

    def keep_list_size(self, tenant: str, kind: str, generation: int, size: int) -> None:
        # One entry per list, replaced at the next generation: the memory stays bounded.
        self._sizes[(tenant, kind)] = (generation, size)

    def get(self, key: PageKey) -> RenderedPage | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: PageKey, content: bytes) -> RenderedPage:
        generation = key[1]
        digest = hashlib.blake2b(content, digest_size=8).hexdigest()
        page = RenderedPage(content, f'"{generation}-{digest}"')
        if len(content) > self._max_bytes:
            return page
        previous = self._pages.pop(key, None)
        self._bytes += len(content) - (len(previous.content) if previous else 0)
        self._pages[key] = page
        while self._bytes > self._max_bytes:
            _, oldest = self._pages.popitem(last=False)
            self._bytes -= len(oldest.content)
        return page


def page_key(urls: Urls, tenant: str, kind: str, generation: int, query: str) -> PageKey:
    """Where a rendered page of ``kind`` is kept: the list route and ``RenderedPageFront``
    must agree on it to the byte."""
    return (tenant, generation, f"{urls.listing(tenant, kind)}?{query}")


async def publication_generation(connection: AsyncConnection, tenant: str) -> int:
    generation = await connection.scalar(
        select(PublicationGeneration.generation).where(PublicationGeneration.tenant == tenant)
    )
    return int(generation or 0)


def page_response(request: Request, page: RenderedPage) -> Response:
    """The page, or ``304 Not Modified`` when the client holds this very page."""
    headers = {**CORS, "ETag": page.etag, "Cache-Control": "no-cache"}
    asked = request.headers.get("if-none-match", "")
    held = {tag.strip().removeprefix("W/") for tag in asked.split(",")}
    if page.etag in held or "*" in held:
        return Response(status_code=304, headers=headers)
    return Response(page.content, media_type="application/json", headers=headers)


class RenderedPageFront:
    """Answers a list page already rendered for the tenant's known generation before
    FastAPI routes the request (plain ASGI).

    A crawler walking a body's lists asks mostly for pages already kept; routing,
    query validation and dependency resolution cost more CPU than sending the kept
    bytes. Anything else (another path, a page not kept, a generation not read
    within ``GENERATION_TTL_SECONDS``) goes on to the routes, which render and keep
    it, so both answer the same bytes under the same key (``page_key``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lists = PREFIX + "/bodies/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = self._kept_page(scope) if scope["type"] == "http" else None
        if page is None:
            await self.app(scope, receive, send)
            return
        await page_response(Request(scope), page)(scope, receive, send)

    def _kept_page(self, scope: Scope) -> RenderedPage | None:
        if scope["method"] != "GET":
            return None
        path: str = scope["path"]
        if not path.startswith(self._lists):
            return None
        tenant, _, kind = path[len(self._lists) :].partition("/")
        if not tenant or not kind or "/" in kind:
            return None  # the bodies list, a body, or an object: not a kept list page
        cache: PageCache | None = getattr(scope["app"].state, "oparl_pages", None)
        if cache is None:
            return None
        generation = cache.known_generation(tenant, time.monotonic())
        if generation is None:
            return None
        request = Request(scope)
        return cache.get(page_key(Urls.of(request), tenant, kind, generation, request.url.query))


async def page_of(
    connection: AsyncConnection,
    query: Select[Any],
    count: Select[Any],
    paging: Paging,
    key: SortKey,
) -> tuple[Sequence[Any], int, str | None]:
    """A page's rows (after the cursor, else at the offset), the list's size, the page's end."""
    query = query.order_by(*key.columns).limit(paging.limit)
    cursor = paging.after
    query = query.where(key.after(cursor)) if cursor else query.offset(paging.offset)
    rows = (await connection.execute(query)).all()
    after = key.cursor(rows[-1]) if rows else None
    # A short first page is the whole list, and its length the list's size: not a page
    # after a cursor (``page=1&after=…``), whose rows are only the list's tail. Its length,
    # kept as the list's size for the publication generation, showed every crawler a
    # shorter list, with no ``next`` link, until the tenant published again.
    if not cursor and paging.offset == 0 and len(rows) < paging.limit:
        return rows, len(rows), after  # the whole list is on this page: no count needed
    if paging.total is not None:
        return rows, paging.total, after
    return rows, int(await connection.scalar(count) or 0), after


def _moment_conditions(
    column: Any, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column <= until)
    return conditions


def published_conditions(model: Any, tenant: str, paging: Paging) -> list[ColumnElement[bool]]:
    """A publication is created and last modified when published (it never changes after)."""
    return [
        model.tenant == tenant,
        *_moment_conditions(model.published_at, paging.created_since, paging.created_until),
        *_moment_conditions(model.published_at, paging.modified_since, paging.modified_until),
    ]


def meeting_conditions(tenant: str, paging: Paging) -> list[ColumnElement[bool]]:
    """Closed meetings with a published decision; modified when their last one was published."""
    decisions = PublishedDecision

    def published(*extra: ColumnElement[bool]) -> ColumnElement[bool]:
        return (
            select(decisions.item_id)
            .where(decisions.tenant == tenant, decisions.meeting_id == Meeting.id, *extra)
            .exists()
        )

    conditions = [
        Meeting.tenant == tenant,
        Meeting.state == MeetingState.CLOSED,
        Meeting.first_published_at.is_not(None),
        *_moment_conditions(Meeting.created_at, paging.created_since, paging.created_until),
    ]
    if paging.modified_since is not None:
        conditions.append(published(decisions.published_at >= paging.modified_since))
    if paging.modified_until is not None:
        conditions.append(~published(decisions.published_at > paging.modified_until))
    return conditions


MEETING_COLUMNS = (
    Meeting.id,
    Meeting.meeting_config,
    Meeting.date,
    Meeting.first_published_at,
    Meeting.created_at,
    Meeting.updated_at,
)


async def decisions_of_meetings(
    connection: AsyncConnection, tenant: str, meeting_ids: list[str]
) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {meeting_id: [] for meeting_id in meeting_ids}
    if not meeting_ids:
        return found
    rows = await connection.execute(
        select(*DECISION_COLUMNS)
        .where(PublishedDecision.tenant == tenant, PublishedDecision.meeting_id.in_(meeting_ids))
        .order_by(PublishedDecision.meeting_id, PublishedDecision.position)
    )
    for row in rows:
        found[row.meeting_id].append(row)
    return found


FILE_COLUMNS = (
    PublishedFile.annex_id,
    PublishedFile.item_id,
    PublishedFile.meeting_id,
    PublishedFile.name,
    PublishedFile.file_name,
    PublishedFile.mime_type,
    PublishedFile.size,
    PublishedFile.sha1,
    PublishedFile.published_at,
    PublishedFile.position,
)


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("a cursor's moment has its offset")
    # In UTC, as the columns hold it: a row-value comparison binds the value without the
    # column's type, and SQLite compared "+02:00" text with UTC's.
    return within_calendar(moment)


#: An annex's position is below ``MAX_ANNEXES``; a cursor's is bounded well above that, and
#: below what the database binds (a larger integer was an ``OverflowError`` on SQLite and
#: "out of int64 range" on PostgreSQL: a 500).
LARGEST_POSITION = 2**31 - 1


def _position(text: str) -> int:
    position = int(text)
    if not 0 <= position <= LARGEST_POSITION:
        raise ValueError(f"a cursor's position is from 0 to {LARGEST_POSITION}")
    return position


#: The lists' orders; each is an index's (``tables.py``), so a page after a cursor is a seek.
DECISION_ORDER = SortKey(
    (PublishedDecision.published_at, PublishedDecision.item_id), (_moment, str)
)
FILE_ORDER = SortKey(
    (PublishedFile.published_at, PublishedFile.item_id, PublishedFile.position),
    (_moment, str, _position),
)
MEETING_ORDER = SortKey((Meeting.first_published_at, Meeting.id), (_moment, str))


def published_file_json(urls: Urls, tenant: str, row: Any) -> dict[str, Any]:
    file = {
        "annex_id": row.annex_id,
        "name": row.name,
        "file_name": row.file_name,
        "mime_type": row.mime_type,
        "size": row.size,
        "sha1": row.sha1,
    }
    return file_json(urls, tenant, row.item_id, row.meeting_id, file, timestamp(row.published_at))


# -- the router ---------------------------------------------------------------------------


def _bodies(request: Request) -> dict[str, Body]:
    """Tenants with a meeting configuration, by code (cached: the tenant files are read once)."""
    state = request.app.state
    cached: dict[str, Body] | None = getattr(state, "oparl_bodies", None)
    if cached is None:
        tenants: dict[str, Tenant] = state.tenants
        settings: dict[str, TenantMeetings] = state.meeting_settings
        cached = {
            code: Body(tenants[code], settings[code])
            for code in sorted(settings)
            if code in tenants and settings[code].configurations
        }
        state.oparl_bodies = cached
    return cached


def _page_cache(request: Request) -> PageCache:
    state = request.app.state
    cache: PageCache | None = getattr(state, "oparl_pages", None)
    if cache is None:
        megabytes: int = state.settings.oparl_page_cache_mb
        cache = state.oparl_pages = PageCache(megabytes * 1024 * 1024)
    return cache


def publication_committed(request: Request, tenant: str) -> None:
    """A publication of ``tenant`` committed through this process: OParl shows it at once."""
    cache: PageCache | None = getattr(request.app.state, "oparl_pages", None)
    if cache is not None:
        cache.forget_generation(tenant)


def _body(request: Request, tenant: str) -> Body:
    body = _bodies(request).get(tenant)
    if body is None:
        raise NotFound("body", tenant)
    return body


#: Bounded so that the rows it skips stay a number the database takes.
PageQuery = Annotated[
    int, Query(ge=1, le=LARGEST_INTEGER // MAX_PAGE_SIZE, description="1 for the first page")
]
LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description="Objects per page (elementsPerPage)")
]
MomentQuery = Annotated[
    str | None,
    Query(description="ISO 8601 date-time; without an offset, in Brussels time (as shown)"),
]
AfterQuery = Annotated[
    str | None, Query(description="Where the previous page ended (set by the `next` links)")
]


def _paging(
    page: int,
    limit: int,
    created_since: str | None,
    created_until: str | None,
    modified_since: str | None,
    modified_until: str | None,
) -> Paging:
    return Paging(
        page,
        limit,
        parse_moment("created_since", created_since),
        parse_moment("created_until", created_until),
        parse_moment("modified_since", modified_since),
        parse_moment("modified_until", modified_until),
    )


def oparl_router() -> APIRouter:
    """Public routes: no token (published decisions are public by law)."""
    api = APIRouter(prefix=PREFIX, tags=["OParl 1.1 (public)"])
    _system_routes(api)
    _list_routes(api)
    _object_routes(api)
    _file_routes(api)
    return api


def _system_routes(api: APIRouter) -> None:
    @api.get("/system", response_class=JSONResponse)
    async def system(request: Request) -> JSONResponse:
        """The OParl System: the entry point, listing the bodies."""
        return object_response(system_json(Urls.of(request)))

    @api.get("/bodies", response_class=JSONResponse)
    async def bodies(request: Request) -> JSONResponse:
        """One Body per commune or CPAS that has meeting configurations."""
        urls = Urls.of(request)
        data = [body_json(urls, body) for body in _bodies(request).values()]
        return list_response(urls.bodies, Paging(1, max(1, len(data))), Listed(data, len(data)))

    @api.get("/bodies/{body}", response_class=JSONResponse)
    async def body(request: Request, body: str) -> JSONResponse:
        return object_response(body_json(Urls.of(request), _body(request, body)))


ListRenderer = Callable[[AsyncConnection, Urls, Body, Paging], Awaitable[Listed]]


def _list_routes(api: APIRouter) -> None:
    def route(kind: str, summary: str) -> Callable[[ListRenderer], ListRenderer]:
        def register(render: ListRenderer) -> ListRenderer:
            async def listing(
                request: Request,
                body: str,
                page: PageQuery = 1,
                limit: LimitQuery = DEFAULT_PAGE_SIZE,
                created_since: MomentQuery = None,
                created_until: MomentQuery = None,
                modified_since: MomentQuery = None,
                modified_until: MomentQuery = None,
                after: AfterQuery = None,
            ) -> Response:
                found = _body(request, body)
                paging = _paging(
                    page, limit, created_since, created_until, modified_since, modified_until
                )
                paging = replace(paging, after=after or None)
                urls = Urls.of(request)
                cache = _page_cache(request)
                engine = request.app.state.db_engine
                generation = cache.known_generation(found.code, time.monotonic())
                if generation is None:
                    async with engine.connect() as connection:
                        generation = await publication_generation(connection, found.code)
                    cache.keep_generation(found.code, generation, time.monotonic())
                url = urls.listing(found.code, kind)
                key = page_key(urls, found.code, kind, generation, request.url.query)
                rendered = cache.get(key)
                if rendered is None:
                    if not paging.filtered:  # filters are the public's: sizes not kept
                        size = cache.list_size(found.code, kind, generation)
                        paging = replace(paging, total=size)
                    async with engine.connect() as connection:
                        listed = await render(connection, urls, found, paging)
                    if not paging.filtered:
                        cache.keep_list_size(found.code, kind, generation, listed.total)
                    answer = list_response(url, paging, listed)
                    rendered = cache.put(key, bytes(answer.body))
                return page_response(request, rendered)

            api.add_api_route(
                f"/bodies/{{body}}/{kind}",
                listing,
                methods=["GET"],
                response_class=JSONResponse,
                summary=summary,
                operation_id=f"oparl_list_{kind.replace('-', '_')}",
            )
            return render

        return register

    @route("organizations", "The body's college and council (its meeting configurations)")
    async def organizations(
        _connection: AsyncConnection, urls: Urls, body: Body, paging: Paging
    ) -> Listed:
        configs = list(body.meetings.configurations.values())
        chosen = configs[paging.offset : paging.offset + paging.limit]
        return Listed([organization_json(urls, body.code, c) for c in chosen], len(configs))

    @route("people", "Persons: none are published (see docs/publication.md)")
    async def people(
        _connection: AsyncConnection, _urls: Urls, _body: Body, _paging: Paging
    ) -> Listed:
        return Listed([], 0)

    @route(
        "meetings",
        "Closed meetings with at least one published decision, in order of their first one",
    )
    async def meetings(
        connection: AsyncConnection, urls: Urls, body: Body, paging: Paging
    ) -> Listed:
        conditions = meeting_conditions(body.code, paging)
        query = select(*MEETING_COLUMNS).where(*conditions)
        count = select(func.count()).select_from(Meeting).where(*conditions)
        rows, total, after = await page_of(connection, query, count, paging, MEETING_ORDER)
        decisions = await decisions_of_meetings(connection, body.code, [row.id for row in rows])
        data = [meeting_json(urls, body, row, decisions[row.id]) for row in rows]
        return Listed(data, total, after)

    async def decisions_page(
        connection: AsyncConnection, body: Body, paging: Paging
    ) -> tuple[Sequence[Any], int, str | None]:
        conditions = published_conditions(PublishedDecision, body.code, paging)
        query = select(*DECISION_COLUMNS).where(*conditions)
        count = select(func.count()).select_from(PublishedDecision).where(*conditions)
        return await page_of(connection, query, count, paging, DECISION_ORDER)

    @route("agenda-items", "Published decisions as agenda items, in order of publication")
    async def agenda_items(
        connection: AsyncConnection, urls: Urls, body: Body, paging: Paging
    ) -> Listed:
        rows, total, after = await decisions_page(connection, body, paging)
        return Listed([agenda_item_json(urls, body.code, row) for row in rows], total, after)

    @route("papers", "Published decisions as papers, in order of publication")
    async def papers(connection: AsyncConnection, urls: Urls, body: Body, paging: Paging) -> Listed:
        rows, total, after = await decisions_page(connection, body, paging)
        return Listed([paper_json(urls, body, row) for row in rows], total, after)

    @route("files", "Annexes of published decisions, in order of publication")
    async def files(connection: AsyncConnection, urls: Urls, body: Body, paging: Paging) -> Listed:
        conditions = published_conditions(PublishedFile, body.code, paging)
        query = select(*FILE_COLUMNS).where(*conditions)
        count = select(func.count()).select_from(PublishedFile).where(*conditions)
        rows, total, after = await page_of(connection, query, count, paging, FILE_ORDER)
        return Listed([published_file_json(urls, body.code, row) for row in rows], total, after)


async def _decision(connection: AsyncConnection, tenant: str, item_id: str, what: str) -> Any:
    row = (
        await connection.execute(
            select(*DECISION_COLUMNS).where(
                PublishedDecision.tenant == tenant, PublishedDecision.item_id == item_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(what, item_id)
    return row


def _object_routes(api: APIRouter) -> None:
    @api.get("/bodies/{body}/organizations/{config_id}", response_class=JSONResponse)
    async def organization(request: Request, body: str, config_id: str) -> JSONResponse:
        found = _body(request, body)
        config = found.config(config_id)
        if config is None:
            raise NotFound("organization", config_id)
        return object_response(organization_json(Urls.of(request), found.code, config))

    @api.get("/bodies/{body}/meetings/{meeting_id}", response_class=JSONResponse)
    async def meeting(request: Request, body: str, meeting_id: str) -> JSONResponse:
        found = _body(request, body)
        async with request.app.state.db_engine.connect() as connection:
            conditions = meeting_conditions(found.code, Paging(1, 1))
            row = (
                await connection.execute(
                    select(*MEETING_COLUMNS).where(*conditions, Meeting.id == meeting_id)
                )
            ).first()
            if row is None:
                raise NotFound("meeting", meeting_id)
            decisions = await decisions_of_meetings(connection, found.code, [meeting_id])
        return object_response(meeting_json(Urls.of(request), found, row, decisions[meeting_id]))

    @api.get("/bodies/{body}/agenda-items/{item_id}", response_class=JSONResponse)
    async def agenda_item(request: Request, body: str, item_id: str) -> JSONResponse:
        found = _body(request, body)
        async with request.app.state.db_engine.connect() as connection:
            row = await _decision(connection, found.code, item_id, "agenda item")
        return object_response(agenda_item_json(Urls.of(request), found.code, row))

    @api.get("/bodies/{body}/papers/{item_id}", response_class=JSONResponse)
    async def paper(request: Request, body: str, item_id: str) -> JSONResponse:
        found = _body(request, body)
        async with request.app.state.db_engine.connect() as connection:
            row = await _decision(connection, found.code, item_id, "paper")
        return object_response(paper_json(Urls.of(request), found, row))


async def _published_file(connection: AsyncConnection, tenant: str, annex_id: str) -> Any:
    row = (
        await connection.execute(
            select(*FILE_COLUMNS).where(
                PublishedFile.tenant == tenant, PublishedFile.annex_id == annex_id
            )
        )
    ).first()
    if row is None:
        raise NotFound("file", annex_id)
    return row


#: The media types a published file is shown as (``accessUrl``); any other is downloaded.
SHOWN_INLINE = frozenset(
    {"application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "text/plain"}
)


def _file_routes(api: APIRouter) -> None:
    @api.get("/bodies/{body}/files/{annex_id}", response_class=JSONResponse)
    async def file(request: Request, body: str, annex_id: str) -> JSONResponse:
        found = _body(request, body)
        async with request.app.state.db_engine.connect() as connection:
            row = await _published_file(connection, found.code, annex_id)
        return object_response(published_file_json(Urls.of(request), found.code, row))

    async def content(request: Request, body: str, annex_id: str, disposition: str) -> Response:
        found = _body(request, body)
        async with request.app.state.db_engine.connect() as connection:
            row = await _published_file(connection, found.code, annex_id)
            data = await connection.scalar(
                select(Annex.content).where(Annex.id == annex_id, Annex.tenant == found.code)
            )
        filename = quote(row.file_name)
        media_type = row.mime_type.split(";")[0].strip().lower()
        if media_type not in SHOWN_INLINE:
            disposition = "attachment"
        headers = {
            **CORS,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{filename}",
            # The media type is the uploader's word: never sniffed, never run. An annex
            # declared text/html or image/svg+xml ran its script on meeting's public
            # origin, for anyone who opened the published link.
            "X-Content-Type-Options": "nosniff",
        }
        if media_type != "application/pdf":  # a sandbox keeps Chromium's PDF viewer out
            headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        return Response(data or b"", media_type=row.mime_type, headers=headers)

    file_bytes: dict[int | str, dict[str, Any]] = {
        200: {"description": "The file's bytes", "content": {"*/*": {}}}
    }

    @api.get(
        "/bodies/{body}/files/{annex_id}/content", response_class=Response, responses=file_bytes
    )
    async def access(request: Request, body: str, annex_id: str) -> Response:
        """The file, to show (OParl ``accessUrl``)."""
        return await content(request, body, annex_id, "inline")

    @api.get(
        "/bodies/{body}/files/{annex_id}/download", response_class=Response, responses=file_bytes
    )
    async def download(request: Request, body: str, annex_id: str) -> Response:
        """The file, to save (OParl ``downloadUrl``)."""
        return await content(request, body, annex_id, "attachment")
