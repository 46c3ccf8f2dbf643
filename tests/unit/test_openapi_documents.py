"""The OpenAPI documents of the hub's REST APIs: committed, and honest about errors.

``kernel.app`` documents each error as the RFC 9457 Problem the hub answers
(never FastAPI's ``HTTPValidationError``); ``contracts/openapi/`` holds each
API's document (``contracts.openapi_documents``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contracts import openapi_documents
from kernel.errors import PROBLEM_CONTENT_TYPE

APIS = list(openapi_documents.APIS)
METHODS = {"get", "put", "post", "delete", "patch"}


def stale(api: str) -> str:
    return (
        f"contracts/openapi/{api}.yaml is stale: run `{openapi_documents.WRITE_COMMAND}`"
        " and commit the result"
    )


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    return {api: openapi_documents.build_document(api) for api in APIS}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def validator(document: dict[str, Any], pointer: str) -> Draft202012Validator:
    """A validator of ``document#pointer`` (OpenAPI 3.1's schemas are JSON Schema 2020-12);
    its ``$ref``s resolve in the document, never online."""
    uri = "urn:hub:openapi"
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(uri, resource)
    return Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=registry)


def problem_schema_of(document: dict[str, Any], method: str, path: str, status: int) -> str:
    """The JSON pointer of the schema of ``status``'s Problem in an operation."""
    response = document["paths"][path][method]["responses"][str(status)]
    assert list(response["content"]) == [PROBLEM_CONTENT_TYPE]
    reference: str = response["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"]
    return reference.removeprefix("#")


# -- the committed files --------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_the_committed_document_is_what_the_routes_produce(
    api: str, documents: dict[str, dict[str, Any]]
) -> None:
    path = openapi_documents.document_path(api)
    assert path.exists(), stale(api)
    committed = path.read_text(encoding="utf-8")
    assert yaml.safe_load(committed) == documents[api], stale(api)
    assert committed == openapi_documents.render(api, documents[api]), (
        stale(api) + " (same content, other layout)"
    )


def test_no_other_document_lies_in_contracts_openapi() -> None:
    assert openapi_documents.stray_documents() == []


def test_check_fails_on_a_stale_file_and_write_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(openapi_documents, "DOCUMENTS_DIR", tmp_path)
    monkeypatch.setattr(openapi_documents, "APIS", {"gateway": "gateway.main"})
    target = tmp_path / "gateway.yaml"
    assert openapi_documents.main(["--check"]) == 1  # missing
    target.write_text("openapi: 3.1.0\n", encoding="utf-8")
    assert openapi_documents.main(["--check"]) == 1
    assert openapi_documents.WRITE_COMMAND in capsys.readouterr().err
    assert openapi_documents.main(["--write"]) == 0
    assert openapi_documents.main(["--check"]) == 0
    assert target.read_text(encoding="utf-8") == openapi_documents.render("gateway")
    (tmp_path / "renamed.yaml").write_text("openapi: 3.1.0\n", encoding="utf-8")
    assert openapi_documents.main(["--check"]) == 1
    assert "renamed.yaml is no API's document" in capsys.readouterr().err


def test_the_environment_does_not_change_a_document(
    monkeypatch: pytest.MonkeyPatch, documents: dict[str, dict[str, Any]]
) -> None:
    """The documents are generated with the code's settings, not a developer's."""
    monkeypatch.setenv("HUB_MAX_BODY_BYTES", "70000")
    monkeypatch.setenv("HUB_JWKS_URL", "https://idp.example/jwks")
    monkeypatch.setenv("HUB_TENANTS_DIR", "/nowhere")
    assert openapi_documents.build_document("gateway") == documents["gateway"]


# -- honest about errors --------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_no_operation_documents_fastapis_validation_error(
    api: str, documents: dict[str, dict[str, Any]]
) -> None:
    document = documents[api]
    assert "HTTPValidationError" not in str(document)
    schemas = document["components"]["schemas"]
    assert "ValidationError" not in schemas
    assert {"Problem", "ValidationProblem"} <= set(schemas)
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], (method, path, status)
        if "422" in operation["responses"]:
            pointer = problem_schema_of(document, method, path, 422)
            assert pointer == "/components/schemas/ValidationProblem", (method, path)


@pytest.mark.parametrize("api", APIS)
def test_every_operation_declares_the_problems_it_may_answer(
    api: str, documents: dict[str, dict[str, Any]]
) -> None:
    document = documents[api]
    schemes = document["components"]["securitySchemes"]
    for method, path, operation in operations(document):
        responses = set(operation["responses"])
        assert {"400", "500"} <= responses, (method, path)
        if not path.startswith("/oparl/"):  # OParl is public: no token
            assert operation["security"], (method, path)
        for requirement in operation.get("security", []):
            assert set(requirement) <= set(schemes)
            assert {"401", "403"} <= responses, (method, path)
        body = operation.get("requestBody", {}).get("content", {})
        if body:
            assert "413" in responses, (method, path)
        if "application/json" in body:
            assert "415" in responses, (method, path)


def test_a_route_keeps_the_problems_it_declares_itself(
    documents: dict[str, dict[str, Any]],
) -> None:
    factures, courrier = documents["factures"], documents["courrier"]
    upload = factures["paths"]["/v1/invoices"]["post"]
    assert "application/xml" in upload["requestBody"]["content"]
    assert "415" in upload["responses"]  # its own: XML, not JSON
    assert upload["responses"]["422"]["description"] == (
        "The request breaks the API contract or a business rule"
    )
    scans = courrier["paths"]["/v1/intake/scans"]["post"]["responses"]
    assert scans["503"]["description"] == "A dependency of this operation is unavailable"
    send = courrier["paths"]["/v1/outgoing-mails/{mail_id}/send"]["post"]
    assert send["security"] == [{"HTTPBearer": []}]
    bearer = courrier["components"]["securitySchemes"]["HTTPBearer"]
    assert "courrier:write" in bearer["description"]


# -- real answers against the documents -----------------------------------------------


async def test_a_real_422_matches_its_documented_schema(
    documents: dict[str, dict[str, Any]], hub_settings: Any
) -> None:
    """OParl's public listing refuses a page 0 before it reads anything: no lifespan."""
    from services.meeting.main import build_app

    app = build_app(hub_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as client:
        answer = await client.get("/oparl/v1/bodies/92137/meetings", params={"page": 0})
        served = (await client.get("/openapi.json")).json()
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = answer.json()
    assert body["type"].endswith("/invalid-request") and body["errors"]
    assert served == documents["meeting"]

    path, method = "/oparl/v1/bodies/{body}/meetings", "get"
    checker = validator(served, problem_schema_of(served, method, path, 422))
    assert list(checker.iter_errors(body)) == []
    # The validation really checks: FastAPI's own answer does not match.
    fastapi_answer = {"detail": [{"loc": ["query", "page"], "msg": "too small", "type": "x"}]}
    assert list(checker.iter_errors(fastapi_answer))
    assert list(checker.iter_errors({**body, "errors": [{"loc": ["query", "page"]}]}))


async def test_a_real_401_matches_its_documented_schema(
    documents: dict[str, dict[str, Any]], hub_settings: Any
) -> None:
    from gateway.main import build_app

    app = build_app(hub_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://hub"
    ) as client:
        answer = await client.get("/v1/deliveries")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
    document = documents["gateway"]
    checker = validator(document, problem_schema_of(document, "get", "/v1/deliveries", 401))
    assert list(checker.iter_errors(answer.json())) == []
