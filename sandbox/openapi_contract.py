"""The hub's own OpenAPI 3.1 contracts of modelled services, as JSON Schema validators.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so a component is validated by
referencing it from a schema whose root carries the document's
``components``: every ``#/components/schemas/...`` reference then resolves.
Formats are checked, ``date-time`` included (``FORMAT_CHECKER``).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker

#: RFC 3339's ``date-time``, JSON Schema's: a full date, ``T``, a time with its seconds (and
#: maybe a fraction), then ``Z`` or the UTC offset.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def is_date_time(value: object) -> bool:
    """jsonschema's own ``date-time`` check needs an optional package (rfc3339-validator),
    without which it passes anything. The form is matched first (``fromisoformat`` alone
    takes a date without time, a space, no offset…), then the calendar and clock."""
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.fullmatch(value):
        raise ValueError("not an RFC 3339 date-time, e.g. 2026-03-02T19:00:00+01:00")
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # 2026-02-30, 25:00: refused
    return True


#: jsonschema's checks (``date``, ``email``…) and ``date-time``.
FORMAT_CHECKER = FormatChecker()
FORMAT_CHECKER.checks("date-time", raises=ValueError)(is_date_time)


class OpenApiContract:
    def __init__(self, path: Path) -> None:
        self.document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self._components = self.document["components"]

    def validator(self, schema: str) -> Draft202012Validator:
        root = {"$ref": f"#/components/schemas/{schema}", "components": self._components}
        return Draft202012Validator(root, format_checker=FORMAT_CHECKER)

    def schema(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._components["schemas"][name]
        return found


def contract_errors(validator: Draft202012Validator, document: object) -> list[str]:
    """Every violation, as ``"field.path: what is wrong"``, in document order."""
    errors = sorted(validator.iter_errors(document), key=lambda error: list(map(str, error.path)))
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or 'body'}: {error.message}"
        for error in errors
    ]
