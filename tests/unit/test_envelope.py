from __future__ import annotations

import base64
import hashlib

import pytest

from contracts.envelope import EnvelopeError, from_record, headers_as_text, new_event, to_record
from contracts.events.courrier import OutgoingMailSendRequested, Recipient


def sample() -> OutgoingMailSendRequested:
    pdf = b"%PDF-1.7"
    return OutgoingMailSendRequested(
        mail_id="m1",
        registration_number="S2026/000001",
        recipient=Recipient(kind="enterprise", identifier="0403170701"),
        subject="Taxe",
        body_pdf_base64=base64.b64encode(pdf).decode(),
        body_pdf_md5=hashlib.md5(pdf).hexdigest(),
    )


def test_binary_mode_round_trip_with_tenant_key() -> None:
    event = new_event(sample(), tenant="92137", subject="m1", source="urn:hub:courrier")
    record = to_record(
        event, extra_headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    )
    headers = headers_as_text(record.headers)
    assert record.topic == "courrier.events"
    assert record.key == b"92137:m1"
    assert headers["ce_type"] == "courrier.outgoing_mail.send_requested.v1"
    assert headers["ce_specversion"] == "1.0" and headers["content-type"] == "application/json"
    assert "traceparent" in headers
    decoded = from_record(headers, record.value)
    assert decoded == event


def test_records_that_are_not_ours_are_refused_with_the_reason() -> None:
    record = to_record(new_event(sample(), tenant="92137", subject="m1", source="s"))
    headers = headers_as_text(record.headers)
    with pytest.raises(EnvelopeError, match="missing CloudEvents headers: ce_id"):
        from_record({k: v for k, v in headers.items() if k != "ce_id"}, record.value)
    with pytest.raises(EnvelopeError, match="unknown event type"):
        from_record({**headers, "ce_type": "courrier.unknown.v1"}, record.value)
    with pytest.raises(EnvelopeError, match="does not match its contract"):
        from_record(headers, b'{"mail_id": "m1"}')
    with pytest.raises(EnvelopeError, match="does not match its contract"):
        from_record(headers, b"not json")


def test_a_header_without_a_value_and_data_nested_too_deep_are_refused_as_not_ours() -> None:
    record = to_record(new_event(sample(), tenant="92137", subject="m1", source="s"))
    # Kafka allows a header without a value; aiokafka gives None: read as empty, not a crash.
    headers = headers_as_text([*record.headers, ("traceparent", None)])
    assert headers["traceparent"] == ""
    with pytest.raises(EnvelopeError, match="ce_id is 1 to 64 characters, not 0"):
        from_record(
            headers_as_text([(n, None if n == "ce_id" else v) for n, v in record.headers]), b"{}"
        )
    # 2 kB of brackets is past what json.loads reads: a RecursionError, not the record's own.
    with pytest.raises(EnvelopeError, match="does not match its contract"):
        from_record(headers, b"[" * 5_000 + b"]" * 5_000)


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("ce_id", "", "ce_id is 1 to 64 characters, not 0"),
        ("ce_id", "i" * 65, "ce_id is 1 to 64 characters, not 65"),
        ("ce_subject", "s" * 201, "ce_subject is 1 to 200 characters"),
        ("ce_source", "urn:hub:\x00", "ce_source holds a control character"),
        ("ce_subject", "mail-1\n", "ce_subject holds a control character"),
        ("ce_tenant", "9213", "not a tenant's 5-digit NIS code"),
        ("ce_tenant", "92137 ", "not a tenant's 5-digit NIS code"),
        ("ce_tenant", "92137\n", "not a tenant's 5-digit NIS code"),
        ("ce_time", "2026-12-07T10:00:00", "no UTC offset"),
        ("ce_time", "0001-01-01T00:00:00+01:00", "bad ce_time"),
    ],
)
def test_attributes_a_consumer_could_not_record_are_refused(
    attribute: str, value: str, reason: str
) -> None:
    record = to_record(new_event(sample(), tenant="92137", subject="m1", source="s"))
    headers = headers_as_text(record.headers)
    assert from_record(headers, record.value)  # as produced: taken
    with pytest.raises(EnvelopeError, match=reason):
        from_record({**headers, attribute: value}, record.value)
