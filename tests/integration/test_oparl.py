"""The public OParl 1.1 API over real HTTP, on SQLite and PostgreSQL.

Decisions are made through the REST API; the test then walks OParl from
``/oparl/v1/system`` by its links alone, as a portal would, and validates every
object against the OParl 1.1 JSON schemas of the reference corpus (their
``"schema": "File.json"`` references become ``$ref`` in memory).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from kernel.database import utcnow
from kernel.days import BRUSSELS
from kernel.settings import HubSettings
from tests.conftest import REQUIRE_CORPUS, corpus_or_skip
from tests.integration.test_meeting_api import (
    LIEGE,
    PDF,
    SAMBREVILLE,
    MeetingService,
    running,
    settings_for,
)

pytestmark = pytest.mark.integration

SCHEMA_BASE = "https://schema.oparl.org/1.1/schema/"
NISS_WRITTEN = "85.07.30-033.28"
PRIVATE_TEXT = (
    "Le collège octroie à Monsieur Jean Dupont (numéro national 85.07.30-033.28), domicilié "
    "rue des Alliés 7, 5060 Sambreville, le permis d'urbanisme. M. Dupont en est informé. "
    "Le Bourgmestre, Monsieur Martin, signe."
)


# -- the corpus's schemas ----------------------------------------------------------------------


def _with_refs(node: Any) -> Any:
    """OParl's schemas name embedded objects with ``"schema": "File.json"``: make it a ``$ref``."""
    if isinstance(node, dict):
        converted = {key: _with_refs(value) for key, value in node.items() if key != "schema"}
        if isinstance(node.get("schema"), str):
            target = node["schema"]
            converted["$ref"] = target if target.endswith(".json") else f"{target}.json"
        return converted
    if isinstance(node, list):
        return [_with_refs(value) for value in node]
    return node


def is_url(value: object) -> bool:
    parsed = urlparse(str(value))
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def is_date_time(value: object) -> bool:
    return datetime.fromisoformat(str(value)).tzinfo is not None


def is_date(value: object) -> bool:
    return bool(date.fromisoformat(str(value)))


def _format_checker() -> jsonschema.FormatChecker:
    """OParl's ``url`` format, and date checks that need no optional package."""
    checker = jsonschema.FormatChecker()
    checker.checks("url")(is_url)
    checker.checks("date-time", raises=ValueError)(is_date_time)
    checker.checks("date", raises=ValueError)(is_date)
    return checker


@dataclass
class OParlSchemas:
    validators: dict[str, jsonschema.protocols.Validator]

    def validate(self, document: dict[str, Any]) -> str:
        kind = document["type"].rsplit("/", 1)[-1]
        assert document["type"] == f"https://schema.oparl.org/1.1/{kind}", document["type"]
        errors = sorted(self.validators[kind].iter_errors(document), key=str)
        assert not errors, f"{kind} {document.get('id')}: " + "; ".join(e.message for e in errors)
        return kind


@pytest.fixture(scope="module")
def oparl_schemas(corpus: Path) -> OParlSchemas:
    folder = corpus_or_skip(corpus / "contracts" / "oparl" / "schema", REQUIRE_CORPUS)
    schemas = {
        path.stem: {
            **_with_refs(json.loads(path.read_text("utf-8"))),
            "$id": SCHEMA_BASE + path.name,
        }
        for path in sorted(folder.glob("*.json"))
    }
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in schemas.values()
    )
    checker = _format_checker()
    return OParlSchemas(
        {
            name: jsonschema.Draft202012Validator(
                copy.deepcopy(schema), registry=registry, format_checker=checker
            )
            for name, schema in schemas.items()
        }
    )


# -- walking the API ------------------------------------------------------------------------


@dataclass
class Walk:
    """Every object met, by id, and every response body read (to search for personal data)."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    bodies: list[str] = field(default_factory=list)
    lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


async def get_json(http: httpx.AsyncClient, url: str, walk: Walk) -> Any:
    response = await http.get(url)  # no token: OParl is public
    assert response.status_code == 200, (url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["access-control-allow-origin"] == "*"
    walk.bodies.append(response.text)
    return response.json()


def embedded(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Objects embedded in an object (agenda items in a meeting, files in a paper…)."""
    found: list[dict[str, Any]] = []
    for value in document.values():
        values = value if isinstance(value, list) else [value]
        for child in values:
            if isinstance(child, dict) and "type" in child:
                found.append(child)
                found.extend(embedded(child))
    return found


async def read_list(
    http: httpx.AsyncClient, url: str, schemas: OParlSchemas, walk: Walk
) -> list[dict[str, Any]]:
    """Every object of an external list, page by page through ``links.next``."""
    objects: list[dict[str, Any]] = []
    page_url: str | None = url
    pages = 0
    while page_url is not None:
        page = await get_json(http, page_url, walk)
        pages += 1
        assert set(page) == {"data", "pagination", "links"}, page.keys()
        pagination = page["pagination"]
        assert set(pagination) == {
            "totalElements",
            "elementsPerPage",
            "currentPage",
            "totalPages",
        }
        assert all(isinstance(value, int) for value in pagination.values())
        assert pagination["currentPage"] == pages
        assert len(page["data"]) <= pagination["elementsPerPage"]
        for document in page["data"]:
            for child in [document, *embedded(document)]:
                walk.kinds[child["id"]] = schemas.validate(child)
            objects.append(document)
        page_url = page["links"].get("next")
    assert len(objects) == pagination["totalElements"]
    assert pages == pagination["totalPages"] or (pages == 1 and not objects)
    walk.lists[url] = objects
    return objects


async def walk_oparl(service: MeetingService, schemas: OParlSchemas) -> Walk:
    walk = Walk()
    http = service.http
    system = await get_json(http, f"{service.base_url}/oparl/v1/system", walk)
    schemas.validate(system)
    bodies = await read_list(http, system["body"], schemas, walk)
    for body in bodies:
        assert body["system"] == system["id"]
        assert await get_json(http, body["id"], walk) == body
        for key in ("organization", "person", "meeting", "paper", "agendaItem", "file"):
            for document in await read_list(http, body[key], schemas, walk):
                walk.objects[document["id"]] = document
    for object_id, document in walk.objects.items():
        alone = await get_json(http, object_id, walk)
        schemas.validate(alone)
        assert alone == document, object_id
    return walk


# -- the scenario ---------------------------------------------------------------------------


@dataclass
class Published:
    private: str
    others: list[str]
    unpublished: str
    closed_without_publication: str
    liege: str


async def decide(service: MeetingService, item_id: str, text: str, tenant: str) -> None:
    body = {"decision": "accepted", "decision_text": text}
    response = await service.post(f"/v1/items/{item_id}/decide", body, tenant)
    assert response.status_code == 200, response.text


async def publish(service: MeetingService, item_id: str, tenant: str = SAMBREVILLE) -> None:
    response = await service.post(f"/v1/items/{item_id}/publish", tenant=tenant)
    assert response.status_code == 200, response.text


async def make_decisions(service: MeetingService) -> Published:
    meeting = await service.meeting(attendees=[{"name": "Jean Martin", "role": "bourgmestre"}])
    person = {"kind": "person", "identifier": NISS_WRITTEN, "name": "Jean Dupont"}
    private = await service.presented_item(
        meeting, external_identifier="URB/1", concerned_party=person
    )
    company = {"kind": "enterprise", "identifier": "0123.456.749", "name": "Bâtiments Lambda SA"}
    others = [
        await service.presented_item(
            meeting,
            external_identifier=f"URB/{n}",
            title=f"Réfection de la rue Haute, lot {n}",
            concerned_party=company,
            annexes=[],
        )
        for n in (2, 3)
    ]
    unpublished = await service.presented_item(meeting, external_identifier="URB/4")
    await decide(service, private, PRIVATE_TEXT, SAMBREVILLE)
    for item_id in others:
        await decide(service, item_id, "Marché attribué à Bâtiments Lambda SA.", SAMBREVILLE)
    await decide(service, unpublished, "Décision secrète: ne pas publier.", SAMBREVILLE)
    assert (await service.post(f"/v1/meetings/{meeting}/close")).status_code == 200
    for item_id in (private, *others):
        await publish(service, item_id)

    quiet = await service.meeting()
    kept = await service.presented_item(quiet, external_identifier="URB/5")
    await decide(service, kept, "Décision non publiée.", SAMBREVILLE)
    assert (await service.post(f"/v1/meetings/{quiet}/close")).status_code == 200

    liege_meeting = await service.meeting(tenant=LIEGE)
    liege = await service.presented_item(liege_meeting, LIEGE, external_identifier="LG/1")
    await decide(service, liege, "Le collège de Liège décide.", LIEGE)
    assert (await service.post(f"/v1/meetings/{liege_meeting}/close", tenant=LIEGE)).is_success
    await publish(service, liege, LIEGE)
    return Published(private, others, unpublished, quiet, liege)


@pytest.fixture
async def service(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> AsyncIterator[MeetingService]:
    async with running(settings_for(hub_settings, tmp_path), database) as served:
        yield served


def ids_of(walk: Walk, tenant: str, kind: str) -> set[str]:
    prefix = f"/oparl/v1/bodies/{tenant}/{kind}/"
    return {
        urlparse(object_id).path.removeprefix(prefix)
        for object_id in walk.objects
        if urlparse(object_id).path.startswith(prefix)
    }


# -- tests ------------------------------------------------------------------------------------


async def test_walking_oparl_finds_only_published_decisions_each_valid_in_its_own_body(
    service: MeetingService, oparl_schemas: OParlSchemas
) -> None:
    made = await make_decisions(service)
    walk = await walk_oparl(service, oparl_schemas)

    published = {made.private, *made.others}
    assert ids_of(walk, SAMBREVILLE, "agenda-items") == published
    assert ids_of(walk, SAMBREVILLE, "papers") == published
    assert ids_of(walk, LIEGE, "agenda-items") == ids_of(walk, LIEGE, "papers") == {made.liege}
    assert ids_of(walk, SAMBREVILLE, "organizations") == {"college", "council"}
    assert len(ids_of(walk, SAMBREVILLE, "meetings")) == 1  # not the one with nothing published
    everything = "\n".join(walk.bodies)
    assert made.unpublished not in everything and "secrète" not in everything
    assert made.closed_without_publication not in everything
    assert "Le collège de Liège" not in "".join(
        json.dumps(document)
        for document in walk.objects.values()
        if f"/{SAMBREVILLE}/" in document["id"]
    )
    assert {"Body", "Organization", "Meeting", "AgendaItem", "Paper", "File"} <= set(
        walk.kinds.values()
    )

    meeting = next(d for i, d in walk.objects.items() if "/meetings/" in i and SAMBREVILLE in i)
    assert [item["id"].rsplit("/", 1)[-1] for item in meeting["agendaItem"]] == [
        made.private,
        *made.others,
    ]
    assert [item["order"] for item in meeting["agendaItem"]] == [0, 1, 2]
    assert meeting["agendaItem"][0]["result"] == "Approuvé"

    # Files: the annex of the private decision, served with its real size, type and bytes.
    files = [d for i, d in walk.objects.items() if "/files/" in i and SAMBREVILLE in i]
    assert len(files) == 1
    annex = files[0]
    assert (annex["size"], annex["mimeType"], annex["fileName"]) == (
        len(PDF),
        "application/pdf",
        "annexe-1.pdf",
    )
    assert annex["sha1Checksum"] == hashlib.sha1(PDF).hexdigest()
    for url in (annex["accessUrl"], annex["downloadUrl"]):
        content = await service.http.get(url)
        assert (content.status_code, content.content) == (200, PDF)
        assert content.headers["content-type"] == "application/pdf"


async def test_personal_data_is_pseudonymised_and_companies_and_officials_are_kept(
    service: MeetingService, oparl_schemas: OParlSchemas
) -> None:
    made = await make_decisions(service)
    walk = await walk_oparl(service, oparl_schemas)
    everything = "\n".join(walk.bodies)
    for personal in ("85073003328", NISS_WRITTEN, "Dupont", "rue des Alliés", "rue Haute 12"):
        assert personal not in everything, personal

    item = walk.objects[
        f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/agenda-items/{made.private}"
    ]
    assert item["resolutionText"] == (
        "Le collège octroie à Monsieur [personne 1] (numéro national [numéro national]), "
        "domicilié [adresse 2], le permis d'urbanisme. M. [personne 1] en est informé. "
        "Le Bourgmestre, Monsieur Martin, signe."
    )
    assert item["name"] == "Permis d'urbanisme: extension d'une habitation, [adresse 1]"
    company = walk.objects[
        f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/agenda-items/{made.others[0]}"
    ]
    assert company["resolutionText"] == "Marché attribué à Bâtiments Lambda SA."
    assert company["name"] == "Réfection de la rue Haute, lot 2"  # a street without a number

    # The meeting service's own (authenticated) API still has the text as decided.
    own = await service.http.get(f"/v1/items/{made.private}", headers=service.auth())
    assert own.json()["decision_text"] == PRIVATE_TEXT


async def test_lists_page_with_links_counts_and_date_filters(service: MeetingService) -> None:
    await make_decisions(service)
    base = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/papers"

    first = (await service.http.get(base, params={"limit": 2})).json()
    assert first["pagination"] == {
        "totalElements": 3,
        "elementsPerPage": 2,
        "currentPage": 1,
        "totalPages": 2,
    }
    assert len(first["data"]) == 2
    assert "prev" not in first["links"]
    assert first["links"]["first"] == f"{base}?limit=2&page=1"
    assert first["links"]["last"] == f"{base}?limit=2&page=2"
    # "next" seeks past the page's last object; "last" (and any page) counts an offset: same page.
    assert first["links"]["next"].startswith(f"{base}?limit=2&page=2&after=")
    second = (await service.http.get(first["links"]["next"])).json()
    assert (await service.http.get(first["links"]["last"])).json() == second
    assert len(second["data"]) == 1 and "next" not in second["links"]
    assert second["links"]["prev"] == first["links"]["first"]
    assert second["pagination"]["currentPage"] == 2
    references = [paper["reference"] for paper in first["data"] + second["data"]]
    assert len(set(references)) == 3

    later = (utcnow() + timedelta(minutes=5)).isoformat()
    earlier = (utcnow() - timedelta(hours=1)).isoformat()
    assert (await service.http.get(base, params={"modified_since": later})).json()["data"] == []
    since = (await service.http.get(base, params={"created_since": earlier, "limit": 2})).json()
    assert since["pagination"]["totalElements"] == 3
    assert "created_since=" in since["links"]["next"]
    meetings = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/meetings"
    assert (await service.http.get(meetings, params={"modified_since": later})).json()["data"] == []
    assert (
        len((await service.http.get(meetings, params={"modified_since": earlier})).json()["data"])
        == 1
    )

    bad = await service.http.get(base, params={"created_since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/invalid-filter")
    lost = await service.http.get(base, params={"page": 2, "after": "not-a-cursor"})
    assert lost.status_code == 400 and lost.json()["type"].endswith("/invalid-cursor")


async def test_a_cursor_on_the_first_page_leaves_the_lists_size_as_it_is(
    service: MeetingService,
) -> None:
    await make_decisions(service)
    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}"
    past_the_end = "2199-12-31T00:00:00+00:00,z"
    for kind, cursor in (
        ("agenda-items", past_the_end),
        ("papers", past_the_end),
        ("files", past_the_end + ",0"),
        ("meetings", past_the_end),
    ):
        honest = (await service.http.get(f"{root}/{kind}")).json()["pagination"]
        # Anyone may ask for page 1 after a cursor past the list's end: an empty tail.
        tail = await service.http.get(f"{root}/{kind}", params={"after": cursor})
        assert tail.status_code == 200, tail.text
        assert tail.json()["pagination"]["totalElements"] == honest["totalElements"], kind
    # A page not kept yet, of the same generation, still counts the whole list.
    first = (await service.http.get(f"{root}/agenda-items", params={"limit": 2})).json()
    assert first["pagination"]["totalElements"] == 3
    assert first["pagination"]["totalPages"] == 2
    assert "next" in first["links"]


async def test_dates_and_cursors_out_of_the_databases_range_are_bad_requests(
    service: MeetingService,
) -> None:
    await make_decisions(service)
    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}"
    for kind in ("agenda-items", "meetings"):
        for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
            for name in ("created_since", "modified_until"):
                answer = await service.http.get(f"{root}/{kind}", params={name: moment})
                assert answer.status_code == 400, (kind, name, moment, answer.text)
                assert answer.json()["type"].endswith("/invalid-filter")
                assert "out of the calendar" in answer.json()["detail"]
    for kind, cursor in (
        ("files", "2026-01-01T00:00:00+00:00,x,99999999999999999999"),
        ("files", "2026-01-01T00:00:00+00:00,x,-1"),
        ("agenda-items", "0001-01-01T00:00:00+14:00,x"),
        ("meetings", "9999-12-31T23:59:59-14:00,x"),
    ):
        answer = await service.http.get(f"{root}/{kind}", params={"page": 2, "after": cursor})
        assert answer.status_code == 400, (kind, cursor, answer.text)
        assert answer.json()["type"].endswith("/invalid-cursor")
    # The calendar's own ends are still asked for.
    ends = {"created_since": "1900-01-01T00:00:00+00:00", "created_until": "2199-12-31T00:00:00Z"}
    answer = await service.http.get(f"{root}/agenda-items", params=ends)
    assert answer.status_code == 200 and answer.json()["pagination"]["totalElements"] == 3


async def test_a_publication_comes_after_the_last_even_when_the_clock_is_behind(
    service: MeetingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_decisions(service)
    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/agenda-items"
    first = (await service.http.get(root, params={"limit": 2})).json()
    # A replica whose clock is an hour behind publishes next: placed before the crawler's
    # cursor, it was never seen by the walk.
    behind = utcnow() - timedelta(hours=1)
    monkeypatch.setattr("services.meeting.publication.utcnow", lambda: behind)
    await publish_one_more(service, SAMBREVILLE, "URB/9")
    second = (await service.http.get(first["links"]["next"])).json()
    walked = [item["id"] for item in first["data"] + second["data"]]
    assert len(walked) == len(set(walked)) == second["pagination"]["totalElements"] == 4
    times = [datetime.fromisoformat(item["modified"]) for item in first["data"] + second["data"]]
    assert times == sorted(times) and len(set(times)) == 4


async def test_a_meeting_published_late_comes_after_the_cursors_handed_out(
    service: MeetingService,
) -> None:
    async def closed_meeting(days_ahead: int, reference: str) -> str:
        sits = (utcnow() + timedelta(days=days_ahead)).isoformat()
        meeting = await service.meeting(date=sits)
        item_id = await service.presented_item(meeting, external_identifier=reference)
        await decide(service, item_id, "Le collège décide.", SAMBREVILLE)
        assert (await service.post(f"/v1/meetings/{meeting}/close")).is_success
        return item_id

    sat_first = await closed_meeting(1, "URB/1")  # its decision published last
    for days, reference in ((2, "URB/2"), (3, "URB/3")):
        await publish(service, await closed_meeting(days, reference))
    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/meetings"
    walked = (await service.http.get(root, params={"limit": 1})).json()
    seen = [meeting["id"] for meeting in walked["data"]]
    await publish(service, sat_first)
    while "next" in walked["links"]:
        walked = (await service.http.get(walked["links"]["next"])).json()
        seen += [meeting["id"] for meeting in walked["data"]]
    assert len(seen) == len(set(seen)) == walked["pagination"]["totalElements"] == 3


async def test_a_lists_moments_round_trip_through_its_filters_and_cursors(
    service: MeetingService,
) -> None:
    await make_decisions(service)
    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/agenda-items"
    items = (await service.http.get(root)).json()["data"]
    # An object's own shown times bound a window that holds it.
    last = items[-1]
    for name, value in (("modified_until", last["modified"]), ("created_until", last["created"])):
        within = (await service.http.get(root, params={name: value})).json()["data"]
        assert last["id"] in [item["id"] for item in within], name
    # A moment without an offset is Brussels' (as shown), not UTC's: one hour or two apart.
    shown = datetime.fromisoformat(last["modified"])
    local = shown.replace(tzinfo=None)
    # In the hour repeated when summer time ends, a time without an offset is read as
    # its first pass (fold 0), one hour before a second-pass moment: nothing to compare.
    if local.replace(tzinfo=BRUSSELS).utcoffset() == shown.utcoffset():
        params = {"modified_since": local.isoformat()}
        since = (await service.http.get(root, params=params)).json()["data"]
        assert [item["id"] for item in since] == [last["id"]]
    # A cursor with another offset, the same instant: the same page.
    first = (await service.http.get(root, params={"limit": 1})).json()
    cursor = first["links"]["next"].partition("after=")[2]
    moment, _, item_id = urllib.parse.unquote(cursor).partition(",")
    elsewhere = datetime.fromisoformat(moment).astimezone(timezone(timedelta(hours=2)))
    again = await service.http.get(
        root, params={"limit": 1, "page": 2, "after": f"{elsewhere.isoformat()},{item_id}"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["data"] == (await service.http.get(first["links"]["next"])).json()["data"]


async def publish_one_more(service: MeetingService, tenant: str, reference: str) -> None:
    meeting = await service.meeting(tenant=tenant)
    item_id = await service.presented_item(meeting, tenant, external_identifier=reference)
    await decide(service, item_id, "Le collège décide.", tenant)
    assert (await service.post(f"/v1/meetings/{meeting}/close", tenant=tenant)).is_success
    await publish(service, item_id, tenant)


async def test_a_list_page_holds_until_its_tenant_publishes_again(service: MeetingService) -> None:
    await make_decisions(service)
    papers = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}/papers"
    first = await service.http.get(papers)
    assert first.status_code == 200 and first.json()["pagination"]["totalElements"] == 3
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["access-control-allow-origin"] == "*"

    # The client holds the page: 304, no body. Another tenant publishing changes nothing here.
    await publish_one_more(service, LIEGE, "LG/2")
    held = await service.http.get(papers, headers={"If-None-Match": f'W/"x", {etag}'})
    assert held.status_code == 304 and held.content == b"" and held.headers["etag"] == etag
    assert (await service.http.get(papers)).content == first.content

    # The tenant publishes: the page is rendered again, with a new ETag.
    await publish_one_more(service, SAMBREVILLE, "URB/9")
    after = await service.http.get(papers, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.json()["pagination"]["totalElements"] == 4
    assert after.headers["etag"] != etag


def annex(
    title: str, publishable: bool | None = None, content: bytes = PDF, **fields: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": title,
        "filename": f"{title.lower()}.pdf",
        "content_base64": base64.b64encode(content).decode(),
        **fields,
    }
    if publishable is not None:
        body["publishable"] = publishable
    return body


async def test_a_published_file_of_a_type_that_could_run_script_is_only_downloaded(
    service: MeetingService,
) -> None:
    page = b"<html><script>document.cookie</script></html>"
    meeting = await service.meeting()
    item_id = await service.presented_item(
        meeting,
        external_identifier="URB/21",
        annexes=[
            annex("Page", publishable=True, content=page, media_type="text/html"),
            annex("Plan", publishable=True, content=b"<svg/>", media_type="image/svg+xml"),
        ],
    )
    view = (await service.http.get(f"/v1/items/{item_id}", headers=service.auth())).json()
    await decide(service, item_id, "Le collège octroie le permis.", SAMBREVILLE)
    assert (await service.post(f"/v1/meetings/{meeting}/close")).status_code == 200
    await publish(service, item_id)

    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}"
    for published in view["annexes"]:
        answer = await service.http.get(f"{root}/files/{published['annex_id']}/content")
        assert answer.status_code == 200
        assert answer.headers["content-disposition"].startswith("attachment;")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"].startswith("sandbox")


async def test_only_annexes_marked_publishable_are_published(service: MeetingService) -> None:
    meeting = await service.meeting()
    item_id = await service.presented_item(
        meeting,
        external_identifier="URB/20",
        annexes=[annex("Plan", publishable=True), annex("Courrier"), annex("Photos")],
    )
    view = (await service.http.get(f"/v1/items/{item_id}", headers=service.auth())).json()
    plan, letter, photos = (a["annex_id"] for a in view["annexes"])
    assert [a["publishable"] for a in view["annexes"]] == [True, False, False]  # default: no

    # A clerk changes their minds before publication.
    for annex_id, publishable in ((plan, False), (photos, True)):
        response = await service.http.patch(
            f"/v1/items/{item_id}/annexes/{annex_id}",
            json={"publishable": publishable},
            headers=service.auth(),
        )
        assert response.status_code == 200, response.text
        assert response.json()["publishable"] is publishable
    await decide(service, item_id, "Le collège octroie le permis.", SAMBREVILLE)
    assert (await service.post(f"/v1/meetings/{meeting}/close")).status_code == 200
    await publish(service, item_id)

    root = f"{service.base_url}/oparl/v1/bodies/{SAMBREVILLE}"
    paper = (await service.http.get(f"{root}/papers/{item_id}")).json()
    published = [urlparse(file["id"]).path.rsplit("/", 1)[1] for file in paper["auxiliaryFile"]]
    assert published == [photos]
    for hidden in (plan, letter):
        assert (await service.http.get(f"{root}/files/{hidden}/content")).status_code == 404
    shown = await service.http.get(f"{root}/files/{photos}/content")
    assert shown.content == PDF and shown.headers["content-disposition"].startswith("inline;")
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in shown.headers  # no PDF viewer in a sandbox

    # Published: what was published stays as it is.
    late = await service.http.patch(
        f"/v1/items/{item_id}/annexes/{letter}", json={"publishable": True}, headers=service.auth()
    )
    assert late.status_code == 409 and late.json()["type"].endswith("/annex-publication-fixed")
    unknown = await service.http.patch(
        f"/v1/items/{item_id}/annexes/no-such-annex",
        json={"publishable": True},
        headers=service.auth(),
    )
    assert unknown.status_code == 404
    wrong_type = await service.http.patch(
        f"/v1/items/{item_id}/annexes/{letter}",
        json={"publishable": "maybe"},
        headers=service.auth(),
    )
    assert wrong_type.status_code == 422


async def test_unpublished_and_other_tenants_objects_are_not_found(service: MeetingService) -> None:
    made = await make_decisions(service)
    root = f"{service.base_url}/oparl/v1/bodies"
    for url in (
        f"{root}/{SAMBREVILLE}/agenda-items/{made.unpublished}",
        f"{root}/{SAMBREVILLE}/papers/{made.unpublished}",
        f"{root}/{SAMBREVILLE}/meetings/{made.closed_without_publication}",
        f"{root}/{LIEGE}/agenda-items/{made.private}",
        f"{root}/{LIEGE}/papers/{made.private}",
        f"{root}/{SAMBREVILLE}/papers/{made.liege}",
        f"{root}/99999",
        f"{root}/99999/papers",
    ):
        response = await service.http.get(url)
        assert response.status_code == 404, url
        assert response.headers["content-type"] == "application/problem+json"
    unpublished = await service.http.get(f"/v1/items/{made.unpublished}", headers=service.auth())
    annexes = unpublished.json()["annexes"]
    hidden = await service.http.get(f"{root}/{SAMBREVILLE}/files/{annexes[0]['annex_id']}/content")
    assert hidden.status_code == 404


async def test_object_ids_use_the_public_base_url_when_configured(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> None:
    settings = settings_for(hub_settings, tmp_path).model_copy(
        update={"public_base_url": "https://deliberations.example.be/"}
    )
    async with running(settings, database) as service:
        system = (await service.http.get("/oparl/v1/system")).json()
        assert system["id"] == "https://deliberations.example.be/oparl/v1/system"
        assert system["body"] == "https://deliberations.example.be/oparl/v1/bodies"
