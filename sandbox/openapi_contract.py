"""The hub's own OpenAPI 3.1 contracts of modelled services, as JSON Schema validators.

OpenAPI 3.1 schemas are JSON Schema 2020-12, so a component is validated by
referencing it from a schema whose root carries the document's
``components``: every ``#/components/schemas/...`` reference then resolves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker


class OpenApiContract:
    def __init__(self, path: Path) -> None:
        self.document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self._components = self.document["components"]

    def validator(self, schema: str) -> Draft202012Validator:
        root = {"$ref": f"#/components/schemas/{schema}", "components": self._components}
        return Draft202012Validator(root, format_checker=FormatChecker())

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
