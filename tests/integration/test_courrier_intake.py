"""Scanner intake against IMIO's real metadata schema (read from the corpus), over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import from_record
from contracts.events.courrier import AttachedFile, IncomingMailRegistered
from kernel.database import utcnow
from kernel.days import commune_day
from kernel.settings import HubSettings
from tests.integration.test_courrier_api import Courrier, problem, running, settings_for

pytestmark = pytest.mark.integration

SCAN = b"%PDF-1.5\n% a scanned letter from the SPW\n%%EOF\n"


def metadata(content: bytes = SCAN, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "external_id": "01Z" + str(uuid.uuid4().int)[:12],
        "type": "COUR_E",
        "client_id": "0192137",
        "scan_date": commune_day(utcnow()).isoformat(),
        "scan_hour": "09:41:07",
        "user": "accueil",
        "pc": "PC-ACCUEIL-1",
        "creator": "scanner",
        "pages_number": 2,
        "filesize": len(content),
        "filename": "IMIO_20260314_0001.pdf",
        "filemd5": hashlib.md5(content).hexdigest(),
        "treating_group": "urbanisme",
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not None}


async def post_scan(
    courrier: Courrier, document: dict[str, Any] | str, content: bytes | None = SCAN
) -> httpx.Response:
    raw = document if isinstance(document, str) else json.dumps(document)
    files: dict[str, Any] = {"metadata": (None, raw, "application/json")}
    if content is not None:
        files["file"] = ("scan.pdf", content, "application/pdf")
    return await courrier.http.post("/v1/intake/scans", files=files, headers=courrier.auth())


@pytest.fixture
async def courrier(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None], corpus: Path
) -> AsyncIterator[Courrier]:
    settings = settings_for(hub_settings, tmp_path, corpus_dir=corpus)
    async with running(settings, database) as served:
        yield served


@pytest.mark.parametrize(
    ("declared", "registered"),
    [("COUR_E", "COUR_E"), (None, "COUR_E"), ("EMAIL", "EMAIL"), ("FACT", "FACT")],
)
async def test_a_scan_is_registered_with_its_file_and_its_event_lists_the_file(
    courrier: Courrier, declared: str | None, registered: str
) -> None:
    document = metadata(type=declared)
    response = await post_scan(courrier, document)
    assert response.status_code == 201, response.text
    mail = response.json()
    assert mail["registration_number"].startswith("E")
    assert (mail["scan_type"], mail["external_id"]) == (registered, document["external_id"])
    assert (mail["received_on"], mail["assigned_service"]) == (document["scan_date"], "urbanisme")
    [file] = mail["files"]
    assert (file["size"], file["md5"]) == (len(SCAN), hashlib.md5(SCAN).hexdigest())
    assert file["filename"] == document["filename"]

    [row] = await courrier.outbox()
    event = from_record(row.headers, row.value).data_as(IncomingMailRegistered)
    assert event.scan_type == registered
    assert event.files == [AttachedFile.model_validate(file)]

    download = await courrier.http.get(
        f"/v1/mails/{mail['id']}/files/{file['file_id']}", headers=courrier.auth()
    )
    assert download.status_code == 200
    assert download.content == SCAN
    assert download.headers["content-type"] == "application/pdf"


async def test_a_retried_scan_returns_its_registration_and_another_file_conflicts(
    courrier: Courrier,
) -> None:
    document = metadata()
    first = await post_scan(courrier, document)
    retried = await post_scan(courrier, document)
    assert (first.status_code, retried.status_code) == (201, 200)
    assert retried.json() == first.json()

    other = SCAN + b"another page"
    clash = await post_scan(
        courrier,
        {**document, "filesize": len(other), "filemd5": hashlib.md5(other).hexdigest()},
        other,
    )
    body = problem(clash, 409, "duplicate-external-id")
    assert body["registration_number"] == first.json()["registration_number"]
    assert await courrier.stored() == (1, 1)
    assert len(await courrier.outbox()) == 1


async def test_concurrent_posts_of_one_scan_register_it_once(courrier: Courrier) -> None:
    document = metadata()
    answers = await asyncio.gather(*(post_scan(courrier, document) for _ in range(5)))
    assert sorted(answer.status_code for answer in answers) == [200] * 4 + [201]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert await courrier.stored() == (1, 1)
    assert len(await courrier.outbox()) == 1
    # the losers' numbers were rolled back: the next registration follows without a gap
    following = await post_scan(courrier, metadata())
    assert following.json()["registration_number"].endswith("/000002")


BAD_SCANS = [
    pytest.param(metadata(filemd5="0" * 32), SCAN, 422, "scan-checksum-mismatch", id="md5"),
    pytest.param(metadata(filesize=len(SCAN) + 1), SCAN, 422, "scan-size-mismatch", id="size"),
    pytest.param(metadata(filemd5=None), SCAN, 422, "invalid-scan-metadata", id="missing-md5"),
    pytest.param(metadata(colour="blue"), SCAN, 422, "invalid-scan-metadata", id="unknown-field"),
    pytest.param(metadata(external_id="ABC"), SCAN, 422, "invalid-scan-metadata", id="bad-id"),
    pytest.param(metadata(filesize="42"), SCAN, 422, "invalid-scan-metadata", id="wrong-type"),
    pytest.param(
        metadata(scan_date="2026-02-30"), SCAN, 422, "invalid-scan-metadata", id="impossible-date"
    ),
    pytest.param(  # a scanner whose clock was reset
        metadata(scan_date="0001-01-01"), SCAN, 422, "invalid-scan-metadata", id="year-one"
    ),
    pytest.param(metadata(type="COUR_S"), SCAN, 422, "unsupported-scan-type", id="outgoing-scan"),
    pytest.param('{"external_id": ', SCAN, 400, "malformed-scan-metadata", id="not-json"),
    pytest.param("[]", SCAN, 400, "malformed-scan-metadata", id="not-an-object"),
    pytest.param(metadata(), None, 422, "invalid-request", id="no-file"),
    pytest.param(
        "[" * 100_000 + "]" * 100_000, SCAN, 400, "malformed-scan-metadata", id="nested-deep"
    ),
    pytest.param(
        metadata(external_id="12A000000000001\n"), SCAN, 422, "invalid-scan-metadata", id="id-nl"
    ),
    pytest.param(
        metadata(external_id="12A\u0661\u0662\u0663456789012"),
        SCAN,
        422,
        "invalid-scan-metadata",
        id="id-arabic-digits",
    ),
    pytest.param(
        metadata(filename="a" * 252 + ".pdf"), SCAN, 422, "invalid-scan-metadata", id="long-name"
    ),
    pytest.param(
        metadata(treating_group="urba\u0000nisme"),
        SCAN,
        422,
        "invalid-scan-metadata",
        id="nul-in-group",
    ),
]


@pytest.mark.parametrize(("document", "content", "status", "slug"), BAD_SCANS)
async def test_a_bad_scan_gets_a_specific_problem_and_nothing_is_stored(
    courrier: Courrier,
    document: dict[str, Any] | str,
    content: bytes | None,
    status: int,
    slug: str,
) -> None:
    problem(await post_scan(courrier, document, content), status, slug)
    assert await courrier.stored() == (0, 0)
    assert await courrier.outbox() == []


async def test_a_declared_type_that_is_no_media_type_is_not_kept(courrier: Courrier) -> None:
    document = metadata()
    files = {
        "metadata": (None, json.dumps(document), "application/json"),
        "file": ("scan.pdf", SCAN, "application/pdf\x00x"),
    }
    response = await courrier.http.post("/v1/intake/scans", files=files, headers=courrier.auth())
    assert response.status_code == 201, response.text
    [scan] = response.json()["files"]
    assert scan["media_type"] == "application/pdf"  # from the file's name

    url = f"/v1/mails/{response.json()['id']}/files/{scan['file_id']}"
    download = await courrier.http.get(url, headers=courrier.auth())
    assert download.status_code == 200 and download.content == SCAN
    assert download.headers["content-type"] == "application/pdf"
    assert download.headers["x-content-type-options"] == "nosniff"


async def test_schema_errors_name_the_metadata_fields(courrier: Courrier) -> None:
    response = await post_scan(courrier, metadata(filemd5=None, pages_number=0))
    errors = problem(response, 422, "invalid-scan-metadata")["errors"]
    assert {"field": "metadata", "message": "'filemd5' is a required property"} in errors
    assert [error["field"] for error in errors] == ["metadata", "metadata.pages_number"]


async def test_intake_without_the_schema_is_unavailable_not_lenient(
    hub_settings: HubSettings, tmp_path: Path, database: tuple[str, str | None]
) -> None:
    settings = settings_for(hub_settings, tmp_path, corpus_dir=tmp_path / "no-corpus")
    async with running(settings, database) as courrier:
        problem(await post_scan(courrier, metadata()), 503, "scan-schema-unavailable")
        assert await courrier.stored() == (0, 0)
