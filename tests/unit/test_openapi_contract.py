"""The sandboxes' OpenAPI validators check formats, ``date-time`` included.

jsonschema checks ``date-time`` only with an optional package (rfc3339-validator) that
the hub does not install: without ``sandbox.openapi_contract``'s own check, a receipt's
``receivedAt`` of "yesterday" passed every contract check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import inforius, notice, opinions, peppol_ap
from sandbox.openapi_contract import OpenApiContract

#: The modelled contracts whose validators the sandbox's endpoints use.
CONTRACTS = [notice.CONTRACT, opinions.CONTRACT, peppol_ap.CONTRACT, inforius.CONTRACT]

MALFORMED = [
    "yesterday",
    "2026-03-02",  # a date alone
    "2026-03-02 19:00:00+01:00",  # a space for the T
    "2026-03-02T19:00:00",  # no offset
    "2026-03-02T19:00+01:00",  # no seconds
    "2026-02-30T19:00:00Z",  # no such day
    "2026-03-02T25:00:00Z",  # no such hour
    "2026-03-02T19:00:00+0100",  # an offset without its colon
    "2026-W10-1T19:00:00Z",  # a week date
]
WELL_FORMED = [
    "2026-03-02T19:00:00+01:00",
    "2026-03-02T18:00:00Z",
    "2026-03-02t18:00:00.123456z",
    "2026-03-02T18:00:00.5-05:30",
]


def _date_time_properties() -> Iterator[tuple[Path, str, str]]:
    for path in CONTRACTS:
        schemas: dict[str, Any] = OpenApiContract(path).document["components"]["schemas"]
        for name, schema in schemas.items():
            for field, described in schema.get("properties", {}).items():
                if described.get("format") == "date-time":
                    yield path, name, field


DATE_TIMES = list(_date_time_properties())


def test_the_contracts_hold_date_times() -> None:
    """All in what the services answer (receipts, inbox entries, bookings)."""
    assert {(path, name, field) for path, name, field in DATE_TIMES} == {
        (notice.CONTRACT, "ResponseReceipt", "receivedAt"),
        (opinions.CONTRACT, "RequestReceipt", "receivedAt"),
        (peppol_ap.CONTRACT, "InboxFields", "receivedAt"),
        (inforius.CONTRACT, "Booking", "bookedAt"),
    }


def _format_errors(path: Path, schema: str, field: str, value: str) -> list[str]:
    validator = OpenApiContract(path).validator(schema)
    return [
        error.message
        for error in validator.iter_errors({field: value})
        if list(error.absolute_path) == [field] and error.validator == "format"
    ]


@pytest.mark.parametrize(
    ("path", "schema", "field"),
    DATE_TIMES,
    ids=[f"{path.parent.name}-{schema}.{field}" for path, schema, field in DATE_TIMES],
)
def test_a_malformed_date_time_is_refused(path: Path, schema: str, field: str) -> None:
    for value in MALFORMED:
        assert _format_errors(path, schema, field, value), value
    for value in WELL_FORMED:
        assert _format_errors(path, schema, field, value) == [], value


def test_dates_are_still_checked() -> None:
    validator = OpenApiContract(opinions.CONTRACT).validator("OpinionRequest")
    errors = [error for error in validator.iter_errors({"dueOn": "2026-02-30"})]
    assert any(error.validator == "format" for error in errors)
