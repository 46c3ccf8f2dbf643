"""A WS4PM-compatible SOAP facade at ``/ws4pm``, for clients written against IMIO's PloneMeeting.

The contract is ours (``contracts/ws4pm/ws4pm.wsdl``, served at ``/ws4pm?wsdl``
with its address set to the URL it was fetched from): WS4PM's namespace,
element and field names for the operations the hub implements. Operations
run the same use cases as the REST API, in one transaction each.

Operations (``OPERATIONS``): testConnection, checkIsLinked, getConfigInfos,
getUserInfos, meetingsAcceptingItems, createItem, getItemInfos,
getSingleItemInfos, searchItems, and getItemTemplate, which is always a Fault:

- getUserInfos describes the calling client only (a client's ``fullname`` is
  its username, its ``email`` is empty: the hub holds no other identity; its
  ``groups`` are the tenant's proposing services, for which it creates items).
  Asking for another userId is a Fault: the hub has no user directory.
- getSingleItemInfos answers getItemInfos' item infos directly in its
  response element (no ``itemInfo`` wrapper), as WS4PM does.
- searchItems applies every criterion given, ANDed, except portal_type, which is a
  Fault: the hub's items have no Plone portal type. getDecision names a decision as
  review_state names a state (``refused``, ``accepted_but_modified``…).
- getItemTemplate: WS4PM generates a document of the item from a POD
  template; the hub has no templates (items never list any), so it answers
  with a Fault saying so and pointing to getSingleItemInfos/getItemInfos
  (with showAnnexes) rather than with a made-up document.

Callers authenticate with HTTP Basic; the username names the tenant (tenant
files, ``services.meeting.ws4pm_clients``). Requests are parsed without DTDs,
entities or network access and within the body limit, then validated
against the contract's schema (an annex's base64 text by its strict decoder
instead), so a bad request is answered with a SOAP 1.1 Fault that says what
is wrong, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import hmac
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import pybase64
from fastapi import APIRouter, Request, Response
from lxml import etree
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.api import Storage, storage
from kernel.database import utcnow
from kernel.errors import SOAP_ENV, ProblemError, soap_fault
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.xml_parsing import safe_parser
from services.meeting import agenda
from services.meeting.api import create_item_once
from services.meeting.configuration import TenantMeetings
from services.meeting.domain import (
    DECIDED_STATES,
    MAX_ANNEX_FILENAME,
    MAX_ANNEX_TITLE,
    MAX_EXTERNAL_IDENTIFIER,
    MAX_ITEM_TEXT,
    MAX_ITEM_TITLE,
    MAX_PROPOSING_SERVICE,
    AnnexUpload,
    Decision,
    ItemState,
    Transition,
    check_annexes,
    check_item_fields,
    check_length,
    configuration,
)
from services.meeting.tables import Item

log = logging.getLogger(__name__)

WSDL_PATH = REPOSITORY_ROOT / "contracts" / "ws4pm" / "ws4pm.wsdl"
WS4PM_NS = "http://ws4pm.imio.be"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
XML_MEDIA_TYPE = "text/xml; charset=utf-8"
VERSION = "hub-ws4pm-1.0"
#: WS4PM's "no date": clients read it where an item has no (preferred) meeting.
NO_DATE = datetime(1950, 1, 1, tzinfo=UTC)
SEARCH_LIMIT = 200
#: PloneMeeting's names of our item states (``review_state``).
REVIEW_STATES: dict[ItemState, str] = {
    ItemState.CREATED: "itemcreated",
    ItemState.PROPOSED: "proposed",
    ItemState.VALIDATED: "validated",
    ItemState.PRESENTED: "presented",
    ItemState.ACCEPTED: "accepted",
    ItemState.ACCEPTED_WITH_AMENDMENTS: "accepted_but_modified",
    ItemState.REFUSED: "refused",
    ItemState.POSTPONED: "delayed",
}
STATES_BY_REVIEW_STATE = {name: state for state, name in REVIEW_STATES.items()}
POSITIVE_DECIDED_STATES = ("accepted", "accepted_but_modified")
#: PloneMeeting's group suffix of item creators: a client creates items for every service.
CREATORS_SUFFIX = "creators"


T = TypeVar("T")
R = TypeVar("R")

#: Requests are parsed and checked against the schema, and annexes decoded and digested,
#: on this one thread beside the event loop, in one hand-off (``read_request``): for a
#: createItem with a megabyte annex that is ~3 ms of work (measured) that lxml, and
#: hashlib, do without the GIL, and that no longer holds up the process's other
#: requests. One thread, because the contract's schema object must not validate for two
#: threads at once.
_REQUEST_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ws4pm-request")


async def _on_request_worker(function: Callable[[T], R], argument: T) -> R:
    return await asyncio.get_running_loop().run_in_executor(_REQUEST_WORKER, function, argument)


class Ws4pmFault(Exception):
    """The request is wrong: answered as a SOAP Fault (``Client``) with this message."""

    def __init__(
        self, message: str, status: int = 500, slug: str = "ws4pm-request", code: str = "Client"
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.slug, self.code = message, status, slug, code


@dataclass(frozen=True)
class Ws4pmCaller:
    tenant: str
    username: str
    meetings: TenantMeetings


# -- the contract ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _contract() -> tuple[bytes, etree.XMLSchema]:
    wsdl = WSDL_PATH.read_bytes()
    tree = etree.fromstring(wsdl, safe_parser())
    schema_element = tree.find(f".//{{{XSD_NS}}}schema")
    if schema_element is None:
        raise RuntimeError(f"{WSDL_PATH} has no xs:schema")
    return wsdl, etree.XMLSchema(copy.deepcopy(schema_element))


def served_wsdl(endpoint: str) -> bytes:
    """The WSDL with its service address set to where it is served."""
    tree = etree.fromstring(_contract()[0], safe_parser())
    for address in tree.iter(f"{{{WSDL_SOAP_NS}}}address"):
        address.set("location", endpoint)
    return bytes(etree.tostring(tree, xml_declaration=True, encoding="UTF-8"))


# -- answers --------------------------------------------------------------------------------


def _envelope(payload: etree._Element) -> etree._Element:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soapenv": SOAP_ENV})
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(payload)
    return envelope


def _xml_response(
    envelope: etree._Element, status: int, headers: dict[str, str] | None = None
) -> Response:
    content = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(content, status_code=status, media_type=XML_MEDIA_TYPE, headers=headers)


def ws4pm_fault(code: str, message: str, slug: str, status: int = 500) -> Response:
    """The kernel's SOAP 1.1 Fault, asking a client refused as unknown for Basic credentials."""
    headers = {"WWW-Authenticate": 'Basic realm="ws4pm"'} if status == 401 else None
    return soap_fault(code, message, slug, status, headers)


def _answer(operation: str) -> etree._Element:
    return etree.Element(f"{{{WS4PM_NS}}}{operation}Response", nsmap={"ns1": WS4PM_NS})


def _add(parent: etree._Element, name: str, value: object) -> etree._Element:
    """An unqualified child, as WS4PM's schema wants (no elementFormDefault)."""
    child = etree.SubElement(parent, name)
    if isinstance(value, bool):
        child.text = "true" if value else "false"
    elif isinstance(value, datetime):
        child.text = value.astimezone(UTC).isoformat()
    elif value is not None:
        child.text = str(value)
    return child


# -- reading the request ------------------------------------------------------------------


async def read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Ws4pmFault(f"the message is larger than {limit} bytes", slug="body-too-large")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Ws4pmRequest:
    """A request as read: its operation element, and createItem's annexes, decoded."""

    operation: etree._Element
    annexes: tuple[AnnexUpload, ...] = ()


def read_request(body: bytes) -> Ws4pmRequest:
    """The operation element of a SOAP 1.1 envelope, checked against the contract's schema,
    with the annexes of a createItem decoded and digested."""
    if not body.strip():
        raise Ws4pmFault("the request has no body: send a SOAP 1.1 envelope")
    try:
        root = etree.fromstring(body, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise Ws4pmFault(
            f"the request is not well-formed XML: {exc}", slug="malformed-xml"
        ) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise Ws4pmFault(
            "DOCTYPE declarations are refused (they enable entity expansion attacks)",
            slug="malformed-xml",
        )
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise Ws4pmFault(f"expected a SOAP 1.1 Envelope ({SOAP_ENV}), got {root.tag}")
    if len(root.findall(f"{{{SOAP_ENV}}}Body")) > 1:
        raise Ws4pmFault("a SOAP Envelope has one Body")
    # SOAP 1.1 (4.2.3): a header entry the receiver must understand, and does not, is a
    # MustUnderstand fault. This service reads no header (callers authenticate over HTTP).
    for entry in root.iterfind(f"{{{SOAP_ENV}}}Header/*"):
        if entry.get(f"{{{SOAP_ENV}}}mustUnderstand") in ("1", "true"):
            raise Ws4pmFault(
                f"this service does not understand the header {etree.QName(entry).localname!r},"
                " marked mustUnderstand",
                code="MustUnderstand",
                slug="must-understand",
            )
    body_element = root.find(f"{{{SOAP_ENV}}}Body")
    children = [] if body_element is None else [c for c in body_element if isinstance(c.tag, str)]
    if len(children) != 1:
        raise Ws4pmFault("the SOAP Body must hold exactly one operation element")
    operation = children[0]
    namespace = etree.QName(operation).namespace
    if namespace != WS4PM_NS:
        raise Ws4pmFault(
            f"the operation element {etree.QName(operation).localname!r} is in namespace "
            f"{namespace!r}; WS4PM operations are in {WS4PM_NS!r}",
            slug="wrong-namespace",
        )
    name = etree.QName(operation).localname.removesuffix("Request")
    if name not in OPERATIONS:
        raise Ws4pmFault(
            f"unknown or unsupported operation {etree.QName(operation).localname!r}; "
            f"this service implements {', '.join(sorted(OPERATIONS))}",
            slug="unknown-operation",
        )
    # The schema's check of an annex's base64 text costs ~1.6 ms a megabyte, and the
    # decoder checks the same, with a message that names the annex: the texts are taken
    # out of the tree first (putting one back would cost more than the check).
    annex_files = _take_annex_files(operation) if name == "createItem" else []
    schema = _contract()[1]
    if not schema.validate(operation):
        error = schema.error_log.last_error
        raise Ws4pmFault(
            f"{name}: the request does not match the WS4PM contract: {error.message}",
            slug="invalid-request",
        )
    data = operation.find("creationData")
    annexes = _decode_annexes(data, annex_files) if data is not None else ()
    return Ws4pmRequest(operation, annexes)


def _take_annex_files(operation: etree._Element) -> list[str]:
    """The base64 text of each annex of createItem's ``creationData``, in order, each taken
    out of the tree (an annex without a ``file`` has an empty one)."""
    files = []
    for annex in operation.iterfind("creationData/annexes"):
        file = annex.find("file")
        files.append((file.text or "") if file is not None else "")
        if file is not None:
            file.text = None
    return files


def _text(element: etree._Element, name: str) -> str | None:
    value = element.findtext(name)
    return value if value else None


def _flag(element: etree._Element, name: str, default: bool) -> bool:
    value = element.findtext(name)
    return default if value is None else value.strip() in ("true", "1")


def authenticate(request: Request, settings: dict[str, TenantMeetings]) -> Ws4pmCaller:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Ws4pmFault("send HTTP Basic credentials of a WS4PM client", 401, "unauthorized")
    try:
        username, _, password = (
            pybase64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except ValueError as exc:  # not base64, not ASCII, or not UTF-8 once decoded
        raise Ws4pmFault("the Basic credentials are not valid base64", 401, "unauthorized") from exc
    for tenant, meetings in settings.items():
        for client in meetings.ws4pm_clients:
            if client.username == username and hmac.compare_digest(
                client.password.encode(), password.encode()
            ):
                return Ws4pmCaller(tenant, username, meetings)
    log.warning("WS4PM: refused credentials for user %r", username)
    raise Ws4pmFault("unknown WS4PM user or wrong password", 401, "unauthorized")


# -- operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    caller: Ws4pmCaller
    store: Storage
    base_url: str
    #: createItem's annexes, decoded as the request was read.
    annexes: tuple[AnnexUpload, ...] = ()


Operation = Callable[[Context, etree._Element], Awaitable[etree._Element]]


async def test_connection(context: Context, request: etree._Element) -> etree._Element:
    answer = _answer("testConnection")
    _add(answer, "connectionState", True)
    _add(answer, "version", VERSION)
    return answer


async def check_is_linked(context: Context, request: etree._Element) -> etree._Element:
    external = request.findtext("externalIdentifier") or ""
    config = _text(request, "meetingConfigId")
    async with context.store.sessions() as session:
        item = await agenda.find_linked_item(session, context.caller.tenant, external, config)
    answer = _answer("checkIsLinked")
    _add(answer, "isLinked", item is not None)
    return answer


async def get_config_infos(context: Context, request: etree._Element) -> etree._Element:
    show_categories = _flag(request, "showCategories", False)
    answer = _answer("getConfigInfos")
    for config in context.caller.meetings.configurations.values():
        info = _add(answer, "configInfo", None)
        for name, value in (("UID", config.id), ("id", config.id), ("title", config.title)):
            _add(info, name, value)
        _add(info, "description", config.description)
        for state in POSITIVE_DECIDED_STATES:
            _add(info, "itemPositiveDecidedStates", state)
        if show_categories:
            for category in config.categories:
                basic = _add(info, "categories", None)
                for name in ("UID", "id"):
                    _add(basic, name, category.id)
                _add(basic, "title", category.title)
                _add(basic, "description", "")
    for service in _proposing_services(context.caller):
        _add_group(answer, "groupInfo", service)
    return answer


def _proposing_services(caller: Ws4pmCaller) -> list[str]:
    """The tenant's proposing services, each once, in the order of its configurations."""
    services: dict[str, None] = {}
    for config in caller.meetings.configurations.values():
        services.update(dict.fromkeys(config.proposing_services))
    return list(services)


def _add_group(parent: etree._Element, name: str, service: str) -> None:
    """A proposing service as WS4PM's GroupInfo/BasicInfo (UID, id, title, description)."""
    group = _add(parent, name, None)
    for field in ("UID", "id", "title"):
        _add(group, field, service)
    _add(group, "description", "")


async def get_user_infos(context: Context, request: etree._Element) -> etree._Element:
    """The calling client's own infos; the hub has no directory of other users."""
    caller = context.caller
    user_id = request.findtext("userId") or ""
    if user_id != caller.username:
        raise Ws4pmFault(
            f"getUserInfos: this client is {caller.username!r} and can only read its own "
            f"infos, not {user_id!r}: the hub has no user directory (its WS4PM users are the "
            "client credentials of each tenant)",
            slug="forbidden",
        )
    show_groups = _flag(request, "showGroups", False)
    suffix = _text(request, "suffix")
    if show_groups and suffix not in (None, CREATORS_SUFFIX):
        raise Ws4pmFault(
            f"getUserInfos: the hub has no per-service roles, so it cannot answer for suffix "
            f"{suffix!r}; a client creates items for every proposing service of its tenant: "
            f"omit suffix or ask for {CREATORS_SUFFIX!r}",
            slug="not-supported",
        )
    answer = _answer("getUserInfos")
    _add(answer, "fullname", caller.username)  # the only name the hub knows a client by
    _add(answer, "email", "")  # required by WS4PM; the hub holds no address for clients
    if show_groups:
        for service in _proposing_services(caller):
            _add_group(answer, "groups", service)
    return answer


async def meetings_accepting_items(context: Context, request: etree._Element) -> etree._Element:
    config = configuration(
        context.caller.meetings.configurations, request.findtext("meetingConfigId") or ""
    )
    async with context.store.sessions() as session:
        meetings = await agenda.meetings_accepting_items(
            session, context.caller.tenant, config.id, utcnow()
        )
    answer = _answer("meetingsAcceptingItems")
    for meeting in meetings:
        info = _add(answer, "meetingInfo", None)
        _add(info, "UID", meeting.id)
        _add(info, "date", meeting.date)
    return answer


def _decode_annexes(data: etree._Element, files: list[str]) -> tuple[AnnexUpload, ...]:
    """``creationData``'s annexes with ``files``, their base64 texts, decoded."""
    annexes = []
    for number, (annex, encoded) in enumerate(
        zip(data.findall("annexes"), files, strict=True), start=1
    ):
        title = annex.findtext("title") or f"annex {number}"
        filename = annex.findtext("filename") or f"annex-{number}.pdf"
        try:
            try:  # most clients send it on one line: no copy without whitespace needed
                content = pybase64.b64decode(encoded, validate=True)
            except binascii.Error:
                content = pybase64.b64decode("".join(encoded.split()), validate=True)
        except ValueError as exc:  # binascii.Error, or text that is not ASCII
            raise Ws4pmFault(f"annex {filename!r}: file is not valid base64: {exc}") from exc
        annexes.append(AnnexUpload(title, filename, _media_type_of(filename), content))
    return tuple(annexes)


def _media_type_of(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return {
        ".pdf": "application/pdf",
        ".odt": "application/vnd.oasis.opendocument.text",
        ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
    }.get(suffix, "application/octet-stream")


async def create_item(context: Context, request: etree._Element) -> etree._Element:
    caller = context.caller
    config = configuration(
        caller.meetings.configurations, request.findtext("meetingConfigId") or ""
    )
    proposing_service = request.findtext("proposingGroupId") or ""
    data = request.find("creationData")
    if data is None:  # the schema requires it; kept for the type checker
        raise Ws4pmFault("createItem needs creationData")
    category = _text(data, "category")
    check_item_fields(config, category, proposing_service)
    annexes = context.annexes
    check_annexes(annexes)
    _check_lengths(proposing_service, data, annexes)
    description = "\n\n".join(
        text for text in (_text(data, "description"), _text(data, "detailedDescription")) if text
    )
    transitions, warnings = _transitions(request, _text(data, "preferredMeeting"))
    new = agenda.NewItem(
        title=data.findtext("title") or "",
        proposing_service=proposing_service,
        category=category,
        description=description or None,
        motivation=_text(data, "motivation"),
        decision_text=_text(data, "decision"),
        external_identifier=_text(data, "externalIdentifier"),
        preferred_meeting_id=_text(data, "preferredMeeting"),
        annexes=annexes,
    )
    if not transitions:
        item = await create_item_once(
            context.store, caller.tenant, config, new, "ws4pm", caller.username
        )
    else:
        item = await _create_and_move(context, config.id, new, transitions)
    answer = _answer("createItem")
    _add(answer, "UID", item.id)
    for warning in warnings:
        _add(answer, "warnings", warning)
    return answer


def _check_lengths(
    proposing_service: str, data: etree._Element, annexes: tuple[AnnexUpload, ...]
) -> None:
    """createItem's texts fit where they are stored, named as the client sent them (the
    contract's schema bounds none of them): a Client Fault rather than the database's
    refusal, a Server Fault that said nothing of the cause."""
    check_length("proposingGroupId", proposing_service, MAX_PROPOSING_SERVICE)
    check_length(
        "creationData/externalIdentifier",
        _text(data, "externalIdentifier"),
        MAX_EXTERNAL_IDENTIFIER,
    )
    for element in ("description", "detailedDescription", "motivation", "decision"):
        check_length(f"creationData/{element}", _text(data, element), MAX_ITEM_TEXT)
    check_length("creationData/title", _text(data, "title"), MAX_ITEM_TITLE)
    for number, annex in enumerate(annexes, start=1):
        check_length(f"creationData/annexes[{number}]/filename", annex.filename, MAX_ANNEX_FILENAME)
        check_length(f"creationData/annexes[{number}]/title", annex.title, MAX_ANNEX_TITLE)


def _transitions(
    request: etree._Element, preferred_meeting: str | None
) -> tuple[list[Transition], list[str]]:
    transitions, warnings = [], []
    for name in (t.text or "" for t in request.findall("wfTransitions")):
        try:
            transition = Transition(name)
        except ValueError:
            warnings.append(f"transition {name!r} is not supported here and was not applied")
            continue
        if transition is Transition.PRESENT and preferred_meeting is None:
            warnings.append("transition 'present' needs a preferredMeeting; not applied")
            continue
        transitions.append(transition)
    return transitions, warnings


async def _create_and_move(
    context: Context, config_id: str, new: agenda.NewItem, transitions: list[Transition]
) -> Item:
    """Create the item and apply its transitions in one transaction: all of it or nothing."""
    caller = context.caller
    config = caller.meetings.configurations[config_id]
    try:
        async with context.store.unit_of_work() as session:
            now = utcnow()
            item = await agenda.create_item(
                session,
                tenant=caller.tenant,
                config=config,
                new=new,
                origin="ws4pm",
                creator=caller.username,
                now=now,
            )
            await session.flush()
            for transition in transitions:
                meeting = None
                if transition is Transition.PRESENT and new.preferred_meeting_id:
                    meeting = await agenda.find_meeting(
                        session, caller.tenant, new.preferred_meeting_id
                    )
                await agenda.apply_transition(session, item, transition, now, meeting)
    except IntegrityError:
        # A concurrent twin linked the same external identifier after create_item looked:
        # the same Client Fault as a duplicate sent alone (create_item_once), not a Server one.
        async with context.store.sessions() as session:
            await agenda.refuse_linked(session, caller.tenant, new.external_identifier, config.id)
        raise
    return item


async def get_item_infos(context: Context, request: etree._Element) -> etree._Element:
    answer = _answer("getItemInfos")
    await _requested_item_info(context, request, _add(answer, "itemInfo", None))
    return answer


async def get_single_item_infos(context: Context, request: etree._Element) -> etree._Element:
    """getItemInfos' infos of the item, directly in the answer (WS4PM: no itemInfo wrapper)."""
    answer = _answer("getSingleItemInfos")
    await _requested_item_info(context, request, answer)
    return answer


async def _requested_item_info(
    context: Context, request: etree._Element, info: etree._Element
) -> None:
    """Fill ``info`` with the infos of the item the request names by UID."""
    uid = request.findtext("UID") or ""
    show_annexes = _flag(request, "showAnnexes", False)
    with_binary = _flag(request, "include_annex_binary", True)
    async with context.store.sessions() as session:
        item = await _visible_item(session, context, uid)
        await _fill_item_info(session, context, info, item, show_annexes, with_binary)


async def _visible_item(session: AsyncSession, context: Context, uid: str) -> Item:
    """The caller's tenant's item; any other UID (unknown, another tenant's) is a Fault."""
    try:
        return await agenda.find_item(session, context.caller.tenant, uid)
    except ProblemError as exc:
        raise Ws4pmFault(
            f"no item with UID {uid!r} is visible to this client", slug="not-found"
        ) from exc


async def get_item_template(context: Context, request: etree._Element) -> etree._Element:
    """Always a Fault: the hub generates no documents from POD templates."""
    uid = request.findtext("itemUID") or ""
    template = request.findtext("templateId") or ""
    async with context.store.sessions() as session:
        await _visible_item(session, context, uid)
    raise Ws4pmFault(
        f"getItemTemplate: the hub generates no documents from POD templates, so it has no "
        f"template {template!r} (items list no templates). Read the item with "
        "getSingleItemInfos or getItemInfos, and its documents with showAnnexes=true",
        slug="not-supported",
    )


async def search_items(context: Context, request: etree._Element) -> etree._Element:
    """The items matching every criterion given (the contract's promise)."""
    portal_type = _text(request, "portal_type")
    if portal_type is not None:
        raise Ws4pmFault(
            f"searchItems: the hub cannot search by portal_type ({portal_type!r}): its items "
            "have no Plone portal type. Omit portal_type; meetingConfigId selects the items "
            "of one meeting configuration",
            slug="not-supported",
        )
    answer = _answer("searchItems")
    where = _search_criteria(request)
    if where is None:
        return answer
    async with context.store.sessions() as session:
        items, _ = await agenda.list_items(
            session, context.caller.tenant, where, limit=SEARCH_LIMIT, offset=0
        )
        for item in items:
            info = _add(answer, "itemInfo", None)
            await _fill_item_info(
                session, context, info, item, show_annexes=False, with_binary=False
            )
    return answer


def _search_criteria(request: etree._Element) -> agenda.ItemFilter | None:
    """searchItems' criteria as one filter, all of them ANDed; None when no item can match:
    a review state this service does not have (PloneMeeting has more), or a getDecision
    that names no decision."""
    review_state = _text(request, "review_state")
    state = STATES_BY_REVIEW_STATE.get(review_state) if review_state else None
    decision_name = _text(request, "getDecision")
    decided = STATES_BY_REVIEW_STATE.get(decision_name) if decision_name else None
    if (review_state and state is None) or (decision_name and decided not in DECIDED_STATES):
        return None
    return agenda.ItemFilter(
        meeting_config=_text(request, "meetingConfigId"),
        state=state,
        category=_text(request, "getCategory"),
        proposing_service=_text(request, "getProposingGroup"),
        meeting_id=_text(request, "meeting_uid"),
        external_identifier=_text(request, "externalIdentifier"),
        text=_text(request, "SearchableText"),
        item_id=_text(request, "UID"),
        title=_text(request, "Title"),
        description=_text(request, "Description"),
        creator=_text(request, "Creator"),
        decision=Decision(decided.value) if decided else None,
    )


async def _fill_item_info(
    session: AsyncSession,
    context: Context,
    info: etree._Element,
    item: Item,
    show_annexes: bool,
    with_binary: bool,
) -> None:
    """WS4PM's ItemInfo fields of ``item``, in the contract's order, as children of ``info``."""
    dates = await agenda.meeting_dates(
        session, item.tenant, {m for m in (item.meeting_id, item.preferred_meeting_id) if m}
    )
    _add(info, "UID", item.id)
    _add(info, "id", item.id)
    _add(info, "title", item.title)
    _add(info, "creator", item.creator)
    _add(info, "creation_date", item.created_at)
    _add(info, "modification_date", item.updated_at)
    if item.category:
        _add(info, "category", item.category)
    _add(info, "description", item.description or "")
    if item.decision_text:
        _add(info, "decision", item.decision_text)
    if item.preferred_meeting_id:
        _add(info, "preferredMeeting", item.preferred_meeting_id)
    _add(info, "preferred_meeting_date", dates.get(item.preferred_meeting_id or "", NO_DATE))
    _add(info, "review_state", REVIEW_STATES[ItemState(item.state)])
    if item.meeting_id:
        _add(info, "meeting", item.meeting_id)
    _add(info, "meeting_date", dates.get(item.meeting_id or "", NO_DATE))
    _add(info, "absolute_url", f"{context.base_url}/v1/items/{item.id}")
    if item.external_identifier:
        _add(info, "externalIdentifier", item.external_identifier)
    if show_annexes:
        contents = await agenda.annex_contents(session, item) if with_binary else {}
        for annex in item.annexes:
            element = _add(info, "annexes", None)
            _add(element, "id", annex.id)
            _add(element, "title", annex.title)
            _add(element, "filename", annex.filename)
            if with_binary:
                _add(element, "file", pybase64.b64encode(contents[annex.id]).decode("ascii"))


OPERATIONS: dict[str, Operation] = {
    "testConnection": test_connection,
    "checkIsLinked": check_is_linked,
    "getConfigInfos": get_config_infos,
    "getUserInfos": get_user_infos,
    "meetingsAcceptingItems": meetings_accepting_items,
    "createItem": create_item,
    "getItemInfos": get_item_infos,
    "getSingleItemInfos": get_single_item_infos,
    "getItemTemplate": get_item_template,
    "searchItems": search_items,
}


# -- the endpoint ------------------------------------------------------------------------


def ws4pm_router(settings: HubSettings) -> APIRouter:
    soap = APIRouter(prefix="/ws4pm", tags=["WS4PM (SOAP)"])

    @soap.get("", include_in_schema=False)
    async def contract(request: Request, wsdl: str | None = None) -> Response:
        if wsdl is None:
            return Response("Ask for ?wsdl", status_code=404, media_type="text/plain")
        endpoint = str(request.url.remove_query_params(["wsdl"]))
        return Response(served_wsdl(endpoint), media_type=XML_MEDIA_TYPE)

    @soap.post("", include_in_schema=False)
    async def endpoint(request: Request) -> Response:
        try:
            caller = authenticate(request, request.app.state.meeting_settings)
            body = await read_limited(request, request.app.state.max_body_bytes)
            read = await _on_request_worker(read_request, body)
            name = etree.QName(read.operation).localname.removesuffix("Request")
            context = Context(
                caller,
                await storage(request),
                str(request.base_url).rstrip("/"),
                read.annexes,
            )
            answer = await OPERATIONS[name](context, read.operation)
        except Ws4pmFault as exc:
            return ws4pm_fault(exc.code, exc.message, exc.slug, exc.status)
        except ProblemError as exc:
            code = "Client" if exc.status < 500 else "Server"
            return ws4pm_fault(code, f"{exc.title}: {exc.detail}", exc.slug)
        except Exception:  # answered in SOAP too: a WS4PM client cannot read Problem JSON
            log.exception("WS4PM request failed")
            return ws4pm_fault(
                "Server",
                "The hub could not complete this request; nothing was stored.",
                "internal-error",
            )
        return _xml_response(_envelope(answer), 200)

    return soap
