"""The OpenAPI documents of the hub's own REST APIs, generated from their routes.

One document per API (``APIS``: the four services and the gateway's operator
API), as each process serves it at ``/openapi.json`` (``kernel.app`` makes its
error responses say what the hub answers: RFC 9457 Problems). They are
committed under ``contracts/openapi/`` so that an API change shows up as a
diff in review, and a vendor can generate a client without running the hub; a
test fails when one is stale::

    python -m contracts.openapi_documents --write     # regenerate contracts/openapi/*.yaml
    python -m contracts.openapi_documents --check     # exit 1 when one is stale
    python -m contracts.openapi_documents [API ...]   # print the documents

The apps are built with ``GENERATION_SETTINGS``: the defaults of
``kernel.settings.HubSettings``, whatever the environment says, so that a
developer's ``HUB_*`` variables cannot change a committed document.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from contracts.asyncapi import generated_yaml
from kernel.settings import HubSettings

DOCUMENTS_DIR = Path(__file__).with_name("openapi")
WRITE_COMMAND = "python -m contracts.openapi_documents --write"

#: Each API and the module whose ``build_app(settings)`` builds its process's app.
APIS: dict[str, str] = {
    "courrier": "services.courrier.main",
    "factures": "services.factures.main",
    "urban": "services.urban.main",
    "meeting": "services.meeting.main",
    "gateway": "gateway.main",
}


class _GenerationSettings(HubSettings):
    """``HubSettings`` from what the code says only: no environment variable is read."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def document_path(api: str) -> Path:
    return DOCUMENTS_DIR / f"{api}.yaml"


def build_document(api: str) -> dict[str, Any]:
    """``api``'s OpenAPI document, as its process serves it at ``/openapi.json``."""
    build_app = importlib.import_module(APIS[api]).build_app
    # Building an app starts nothing (no database, no broker: that is its lifespan's);
    # its state directory is a fresh one all the same.
    with tempfile.TemporaryDirectory(prefix="hub-openapi-") as var_dir:
        app = build_app(_GenerationSettings(var_dir=Path(var_dir)))
        document: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    schemas = document.get("components", {}).get("schemas")
    if schemas:
        document["components"]["schemas"] = {name: schemas[name] for name in sorted(schemas)}
    return document


def render(api: str, document: dict[str, Any] | None = None) -> str:
    document = document if document is not None else build_document(api)
    return generated_yaml(document, f"the {api} routes (module {APIS[api]}) by `{WRITE_COMMAND}`")


def stale_documents() -> list[Path]:
    """The committed documents that differ from what the routes produce."""
    return [
        document_path(api)
        for api in APIS
        if not document_path(api).exists()
        or document_path(api).read_text(encoding="utf-8") != render(api)
    ]


def stray_documents() -> list[Path]:
    """The documents of ``contracts/openapi/`` that are no API's (one renamed, say)."""
    expected = {document_path(api) for api in APIS}
    found = sorted(DOCUMENTS_DIR.glob("*.yaml")) if DOCUMENTS_DIR.is_dir() else []
    return [path for path in found if path not in expected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m contracts.openapi_documents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {DOCUMENTS_DIR.name}/*.yaml")
    mode.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when a document of {DOCUMENTS_DIR.name}/ differs from the routes",
    )
    parser.add_argument(
        "apis", nargs="*", metavar="API", help=f"print these documents ({', '.join(APIS)})"
    )
    args = parser.parse_args(argv)
    if unknown := [api for api in args.apis if api not in APIS]:
        parser.error(f"no API {', '.join(unknown)} (the APIs: {', '.join(APIS)})")
    if args.write:
        DOCUMENTS_DIR.mkdir(exist_ok=True)
        for api in APIS:
            document_path(api).write_text(render(api), encoding="utf-8")
            print(f"wrote {document_path(api)}")
    elif args.check:
        stale, strays = stale_documents(), stray_documents()
        for path in stale:
            print(f"{path} is stale: run `{WRITE_COMMAND}`", file=sys.stderr)
        for path in strays:
            print(f"{path} is no API's document: remove it", file=sys.stderr)
        if stale or strays:
            return 1
        print(f"{DOCUMENTS_DIR}/*.yaml are up to date")
    else:
        sys.stdout.write("---\n".join(render(api) for api in args.apis or APIS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
