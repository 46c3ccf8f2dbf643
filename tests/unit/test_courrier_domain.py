"""The mail registry's rules, with an in-memory counter store and no I/O."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import UTC, date, datetime

import pytest

from contracts.events.gateway import DeliveryReceipt
from kernel.days import commune_day
from kernel.errors import ProblemError
from services.courrier.domain import (
    MAX_LETTER_BYTES,
    Delivered,
    Direction,
    MailState,
    NotDelivered,
    allocate_registration_number,
    check_letter,
    check_received_on,
    check_scan,
    format_registration_number,
    normalise_recipient_identifier,
    outcome_of,
    request_send,
    scan_type_of,
    state_after,
)

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


class FakeCounters:
    def __init__(self) -> None:
        self.last: dict[tuple[str, int, Direction], int] = defaultdict(int)

    async def next_sequence(self, tenant: str, year: int, direction: Direction) -> int:
        self.last[tenant, year, direction] += 1
        return self.last[tenant, year, direction]


def problem_of(error: pytest.ExceptionInfo[ProblemError]) -> tuple[int, str]:
    return error.value.status, error.value.slug


# -- registration numbers -------------------------------------------------------------


def test_registration_numbers_name_direction_year_and_six_digit_sequence() -> None:
    assert format_registration_number(Direction.INCOMING, 2026, 1) == "E2026/000001"
    assert format_registration_number(Direction.OUTGOING, 2026, 123456) == "S2026/123456"
    assert format_registration_number(Direction.INCOMING, 2026, 1234567) == "E2026/1234567"
    with pytest.raises(ValueError):
        format_registration_number(Direction.INCOMING, 2026, 0)


def test_the_registry_year_is_brussels_calendar_year() -> None:
    # 23:30 UTC on New Year's Eve is already 00:30 on 1 January in Brussels.
    assert commune_day(datetime(2025, 12, 31, 23, 30, tzinfo=UTC)) == date(2026, 1, 1)
    assert commune_day(datetime(2025, 12, 31, 22, 30, tzinfo=UTC)) == date(2025, 12, 31)


async def test_numbers_are_consecutive_per_tenant_year_and_direction() -> None:
    counters = FakeCounters()
    new_year = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    numbers = [
        await allocate_registration_number(counters, "92137", Direction.INCOMING, NOON),
        await allocate_registration_number(counters, "92137", Direction.INCOMING, NOON),
        await allocate_registration_number(counters, "92137", Direction.OUTGOING, NOON),
        await allocate_registration_number(counters, "62063", Direction.INCOMING, NOON),
        await allocate_registration_number(counters, "92137", Direction.INCOMING, new_year),
    ]
    assert numbers == [
        "E2026/000001",
        "E2026/000002",
        "S2026/000001",
        "E2026/000001",
        "E2027/000001",
    ]


def test_mail_cannot_be_received_after_today() -> None:
    check_received_on(date(2026, 3, 14), NOON)
    with pytest.raises(ProblemError) as error:
        check_received_on(date(2026, 3, 15), NOON)
    assert problem_of(error) == (422, "received-on-in-the-future")


# -- outgoing mail state machine ------------------------------------------------------


def test_only_a_draft_can_be_sent() -> None:
    assert request_send(MailState.DRAFT, "S2026/000001") is MailState.SENDING
    for state in (MailState.SENDING, MailState.SENT, MailState.FAILED):
        with pytest.raises(ProblemError) as error:
            request_send(state, "S2026/000001")
        assert problem_of(error) == (409, "send-already-requested")
        assert state in error.value.detail


@pytest.mark.parametrize(
    ("state", "outcome", "expected"),
    [
        (MailState.SENDING, Delivered("ebox-1"), MailState.SENT),
        (MailState.SENDING, NotDelivered("no e-Box"), MailState.FAILED),
        # an operator replayed a dead delivery and it went through
        (MailState.FAILED, Delivered("ebox-1"), MailState.SENT),
        (MailState.SENT, Delivered("ebox-1"), None),  # duplicate receipt
        (MailState.SENT, NotDelivered("late"), None),  # delivered is final
        (MailState.FAILED, NotDelivered("again"), None),
        (MailState.DRAFT, Delivered("ebox-1"), None),  # never sent: nothing to confirm
    ],
)
def test_receipts_move_an_outgoing_mail(
    state: MailState, outcome: Delivered | NotDelivered, expected: MailState | None
) -> None:
    assert state_after(state, outcome) == expected


def receipt(outcome: str, **fields: object) -> DeliveryReceipt:
    return DeliveryReceipt.model_validate(
        {
            "source_event_id": "e1",
            "source_event_type": "t",
            "route": "r",
            "connector": "c",
            "idempotency_key": "e1:r",
            "outcome": outcome,
            "attempts": 3,
            **fields,
        }
    )


def test_receipt_outcomes_carry_the_ebox_id_or_the_reason() -> None:
    assert outcome_of(receipt("delivered", external_reference="m-1")) == Delivered("m-1")
    assert outcome_of(receipt("failed", reason="no e-Box")) == NotDelivered("no e-Box")
    dead = outcome_of(receipt("dead", reason="timeout"))
    assert dead == NotDelivered("gave up after 3 attempts: timeout")


# -- recipients and letters -----------------------------------------------------------


def test_recipient_identifiers_are_normalised() -> None:
    assert normalise_recipient_identifier("person", "85.07.30-033.28") == "85073003328"
    assert normalise_recipient_identifier("enterprise", "BE 0403.170.701") == "0403170701"


@pytest.mark.parametrize(
    ("kind", "identifier", "message"),
    [
        ("person", "85073003329", "modulo-97"),
        ("person", "850730", "11 digits"),
        ("person", "0403.170.701", "use recipient.kind 'enterprise'"),
        ("enterprise", "0403170702", "modulo-97"),
        ("enterprise", "85073003328", "10 digits"),
    ],
)
def test_invalid_recipient_identifiers_say_why_without_echoing_them(
    kind: str, identifier: str, message: str
) -> None:
    with pytest.raises(ProblemError) as error:
        normalise_recipient_identifier(kind, identifier)  # type: ignore[arg-type]
    assert problem_of(error) == (422, "invalid-recipient-identifier")
    assert message in error.value.detail
    assert identifier not in error.value.detail


def test_a_letter_is_a_pdf_of_at_most_4_mib() -> None:
    check_letter(b"%PDF-1.7\n" + b"x" * (MAX_LETTER_BYTES - 9))
    with pytest.raises(ProblemError) as error:
        check_letter(b"%PDF-1.7\n" + b"x" * (MAX_LETTER_BYTES - 8))
    assert problem_of(error) == (413, "letter-too-large")
    with pytest.raises(ProblemError) as error:
        check_letter(b"<html>not a letter</html>")
    assert problem_of(error) == (422, "not-a-pdf")


# -- scans ----------------------------------------------------------------------------


def test_a_scan_matches_its_declared_size_and_md5() -> None:
    content = b"%PDF-1.4 scanned"
    md5 = hashlib.md5(content).hexdigest()
    assert check_scan(content, len(content), md5.upper()) == md5
    with pytest.raises(ProblemError) as error:
        check_scan(content, len(content) + 1, md5)
    assert problem_of(error) == (422, "scan-size-mismatch")
    assert error.value.extensions == {"declared_size": len(content) + 1, "received_size": 16}
    with pytest.raises(ProblemError) as error:
        check_scan(content, len(content), "0" * 32)
    assert problem_of(error) == (422, "scan-checksum-mismatch")
    assert error.value.extensions["computed_md5"] == md5


def test_incoming_scan_types_are_registered_and_outgoing_scans_refused() -> None:
    assert scan_type_of(None) == "COUR_E"
    assert [scan_type_of(kind) for kind in ("COUR_E", "EMAIL", "FACT")] == [
        "COUR_E",
        "EMAIL",
        "FACT",
    ]
    with pytest.raises(ProblemError) as error:
        scan_type_of("COUR_S")
    assert problem_of(error) == (422, "unsupported-scan-type")
