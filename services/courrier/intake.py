"""Scanner intake: IMIO's scanning metadata (JSON Schema 1.3), checked before anything is stored.

Scanners that feed iA.Docs post a document's metadata (``external_id``,
``type``, ``filesize``, ``filemd5``, ``scan_date``…) with the scanned file.
The schema is IMIO's own, read at run time from the reference corpus
(``HUB_CORPUS_DIR``/contracts/imio/dms_metadata/1.3-in.json).
"""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema.validators import validator_for

from kernel.api import EARLIEST_DAY, MEDIA_TYPE_PATTERN, text_problem
from kernel.errors import Conflict, ProblemError
from services.courrier.tables import Mail

METADATA_SCHEMA = Path("contracts/imio/dms_metadata/1.3-in.json")


class ScanSchemaUnavailable(ProblemError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            503,
            "scan-schema-unavailable",
            "Scanner intake is unavailable",
            f"The scanning metadata schema {path} cannot be read ({reason}); "
            "an operator must set HUB_CORPUS_DIR.",
        )


class MalformedScanMetadata(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__(400, "malformed-scan-metadata", "Malformed scan metadata", detail)


class InvalidScanMetadata(ProblemError):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors[:5])
        super().__init__(
            422,
            "invalid-scan-metadata",
            "The scan metadata does not match IMIO's schema 1.3",
            summary,
            errors=errors,
        )


class DuplicateScan(Conflict):
    def __init__(self, external_id: str, registration_number: str) -> None:
        super().__init__(
            "duplicate-external-id",
            f"external_id {external_id} is already registered as {registration_number} "
            "with another file; a new document needs a new external_id.",
            registration_number=registration_number,
        )


@dataclass(frozen=True)
class ScanMetadata:
    external_id: str
    client_id: str
    scan_type: str | None
    received_on: date
    filename: str
    filesize: int
    filemd5: str
    treating_group: str | None


@lru_cache(maxsize=4)
def _validator(path: Path) -> Any:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScanSchemaUnavailable(path, str(exc)) from exc
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def read_scan_metadata(raw: str, corpus_dir: Path) -> ScanMetadata:
    validator = _validator(corpus_dir / METADATA_SCHEMA)
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise MalformedScanMetadata(f"the metadata part is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # "[[[[…" nested a hundred thousand times
        raise MalformedScanMetadata("the metadata part is nested too deeply") from exc
    if not isinstance(document, dict):
        raise MalformedScanMetadata("the metadata part must be a JSON object")
    errors = [
        {
            "field": "metadata." + ".".join(str(part) for part in error.absolute_path)
            if error.absolute_path
            else "metadata",
            "message": error.message,
        }
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    errors.extend(_hub_problems(document))
    if errors:
        raise InvalidScanMetadata(errors)
    try:
        received_on = date.fromisoformat(document["scan_date"])
    except ValueError as exc:
        raise InvalidScanMetadata(
            [{"field": "metadata.scan_date", "message": f"not a calendar date: {exc}"}]
        ) from exc
    if received_on < EARLIEST_DAY:  # a scanner's clock reset, not a day mail came
        raise InvalidScanMetadata(
            [
                {
                    "field": "metadata.scan_date",
                    "message": f"{received_on.isoformat()} is before {EARLIEST_DAY.isoformat()},"
                    " the earliest day the registry takes",
                }
            ]
        )
    return ScanMetadata(
        external_id=document["external_id"],
        client_id=document["client_id"],
        scan_type=document.get("type"),
        received_on=received_on,
        filename=document["filename"],
        filesize=document["filesize"],
        filemd5=document["filemd5"],
        treating_group=document.get("treating_group") or None,
    )


#: The schema's external_id, matched whole and in ASCII digits: its pattern, run as JSON
#: Schema runs it (``re.search``), let "12A000000000001\n" and Arabic-Indic digits by,
#: and the same scan with a line feed after its id was registered twice.
_EXTERNAL_ID = re.compile(r"[0-9]{2}[0-9a-zA-Z][0-9]{12}", re.ASCII)
#: What the registry keeps of the metadata, and how long it may be (its columns).
_KEPT_TEXTS = {"filename": 255, "treating_group": 200}


def _hub_problems(document: dict[str, Any]) -> list[dict[str, str]]:
    """What the hub checks beyond the schema: the id's exact form, and the texts it keeps."""
    problems = []
    external_id = document.get("external_id")
    if isinstance(external_id, str) and not _EXTERNAL_ID.fullmatch(external_id):
        problems.append(
            {
                "field": "metadata.external_id",
                "message": "must be 2 digits, a digit or letter, then 12 digits (ASCII), nothing"
                " else",
            }
        )
    for name, longest in _KEPT_TEXTS.items():
        value = document.get(name)
        if not isinstance(value, str):
            continue
        if problem := text_problem(value):
            problems.append({"field": f"metadata.{name}", "message": problem})
        elif len(value) > longest:
            problems.append(
                {"field": f"metadata.{name}", "message": f"is longer than {longest} characters"}
            )
    return problems


def media_type_of(filename: str, declared: str | None) -> str:
    """The scan's media type: as its part declared it (without parameters), else guessed
    from its name. A declared type that is no media type is not kept (stored as said,
    one with a line break made the scan's download fail for good)."""
    kind = (declared or "").split(";")[0].strip().lower()
    if kind and kind != "application/octet-stream" and re.match(MEDIA_TYPE_PATTERN, kind):
        return kind
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def replayed_scan(existing: Mail, md5: str, metadata: ScanMetadata) -> Mail:
    """A scanner retrying the same document gets its registration back; another file is refused."""
    if any(file.md5 == md5 for file in existing.files):
        return existing
    raise DuplicateScan(metadata.external_id, existing.registration_number)
