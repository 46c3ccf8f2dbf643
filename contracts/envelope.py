"""CloudEvents 1.0 in Kafka *binary content mode*.

The event's attributes travel as ``ce_*`` record headers, its data as the JSON
record value, and the record key is ``"<tenant>:<document id>"`` so that every
change of one document lands on one partition, in order. ``tenant`` is a
CloudEvents extension attribute; W3C ``traceparent`` rides along as its own
header so one document's journey is one trace.
"""

from __future__ import annotations

import builtins
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from contracts.events.base import EventData, event_class_for

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
_T = TypeVar("_T", bound=EventData)


#: The longest id, source and subject of a hub event (ids are UUIDs, subjects document
#: ids). Consumers record them in columns of these sizes: PostgreSQL refused a longer
#: one, and a record it refused was fetched and refused again, holding its partition.
MAX_ID_LENGTH = 64
MAX_SOURCE_LENGTH = 200
MAX_SUBJECT_LENGTH = 200
MAX_TYPE_LENGTH = 128
#: The tenant: a commune's or CPAS's 5-digit NIS code.
TENANT_PATTERN = "^[0-9]{5}$"
#: Control characters, which no attribute holds (PostgreSQL refuses a NUL in a text).
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_TENANT = re.compile(TENANT_PATTERN)
#: An event type's version (``v2``); its digits bounded, so that they are read as a number.
_VERSION = re.compile("v[0-9]{1,9}")


class EnvelopeError(ValueError):
    """A Kafka record that is not a hub CloudEvent (missing header, bad JSON, unknown type)."""


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Attributes:
    """An event's envelope, read and checked without its data."""

    id: str
    source: str
    type: str
    tenant: str
    subject: str
    time: datetime


@dataclass(frozen=True)
class CloudEvent(Attributes):
    """An event: its envelope's attributes and its data."""

    data: EventData

    @property
    def key(self) -> str:
        return f"{self.tenant}:{self.subject}"

    @property
    def topic(self) -> str:
        return type(self.data).TOPIC

    def data_as(self, model: builtins.type[_T]) -> _T:
        if not isinstance(self.data, model):
            raise EnvelopeError(f"event {self.id} is {self.type}, not {model.TYPE}")
        return self.data


def new_event(data: EventData, *, tenant: str, subject: str, source: str) -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()),
        source=source,
        type=data.TYPE,
        tenant=tenant,
        subject=subject,
        time=datetime.now(UTC),
        data=data,
    )


def to_record(event: CloudEvent, extra_headers: dict[str, str] | None = None) -> KafkaRecord:
    headers = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": event.id,
        "ce_source": event.source,
        "ce_type": event.type,
        "ce_subject": event.subject,
        "ce_time": event.time.isoformat(),
        "ce_tenant": event.tenant,
        "content-type": CONTENT_TYPE,
    }
    headers.update(extra_headers or {})
    return KafkaRecord(
        topic=event.topic,
        key=event.key.encode(),
        value=event.data.model_dump_json().encode(),
        headers=[(name, value.encode()) for name, value in headers.items()],
    )


def headers_as_text(
    headers: list[tuple[str, bytes | None]] | tuple[tuple[str, bytes | None], ...],
) -> dict[str, str]:
    """A record's headers as text. Kafka allows a header without a value (aiokafka gives
    ``None``): read as an empty text, the record goes the way of any other that breaks its
    envelope, where failing here stopped its consumer on it for good."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}


def from_record(headers: dict[str, str], value: bytes) -> CloudEvent:
    """Decode a record; raise EnvelopeError with the reason when it is not one of ours."""
    attributes = envelope_attributes(headers)
    model = event_class_for(attributes.type)
    if model is None:
        raise EnvelopeError(f"unknown event type {attributes.type!r}")
    try:
        data = model.model_validate(json.loads(value))
    except (ValueError, ValidationError, RecursionError) as exc:
        # RecursionError: JSON nested a thousand deep (2 kB) is past what json.loads reads.
        raise EnvelopeError(f"{attributes.type} data does not match its contract: {exc}") from exc
    return CloudEvent(**vars(attributes), data=data)


def type_stem(event_type: str) -> str | None:
    """The name an event type's versions share (``courrier.outgoing_mail.send_requested`` of
    ``courrier.outgoing_mail.send_requested.v2``); None for a name without a version. A
    breaking change is a new version of the type (``contracts.events.base``)."""
    stem, _, version = event_type.rpartition(".")
    return stem if stem and _VERSION.fullmatch(version) else None


def newer_than(event_type: str, others: Iterable[str]) -> bool:
    """Whether ``event_type`` is a later version than each of ``others``, versions of it
    (``type_stem``)."""
    return all(_version_number(event_type) > _version_number(other) for other in others)


def _version_number(event_type: str) -> int:
    return int(event_type.rpartition(".v")[2])


def usable_event_id(value: str | None) -> str | None:
    """``value`` when it is an id the envelope accepts, else None: what tells one kept record
    from another. The id of a broken record (empty, 300 characters, a NUL turned into
    U+FFFD) told different records apart no better than a blank, and all but the first
    were taken for repeats and dropped."""
    if value is None or not 0 < len(value) <= MAX_ID_LENGTH or _CONTROL.search(value):
        return None
    return value


def envelope_attributes(headers: dict[str, str]) -> Attributes:
    """The record's CloudEvents attributes; EnvelopeError when one is missing or would not
    fit where consumers record it."""
    missing = [
        name
        for name in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_tenant")
        if name not in headers
    ]
    if missing:
        raise EnvelopeError("missing CloudEvents headers: " + ", ".join(missing))
    if headers["ce_specversion"] != SPEC_VERSION:
        raise EnvelopeError(f"unsupported CloudEvents specversion {headers['ce_specversion']!r}")
    for name, longest in (
        ("ce_id", MAX_ID_LENGTH),
        ("ce_source", MAX_SOURCE_LENGTH),
        ("ce_type", MAX_TYPE_LENGTH),
        ("ce_subject", MAX_SUBJECT_LENGTH),
    ):
        value = headers[name]
        if not 0 < len(value) <= longest:
            raise EnvelopeError(f"{name} is 1 to {longest} characters, not {len(value)}")
        if _CONTROL.search(value):
            raise EnvelopeError(f"{name} holds a control character: {value!r}")
    if not _TENANT.fullmatch(headers["ce_tenant"]):
        raise EnvelopeError(
            f"ce_tenant {headers['ce_tenant'][:20]!r} is not a tenant's 5-digit NIS code"
        )
    try:
        time = datetime.fromisoformat(headers.get("ce_time", ""))
        # With its offset, and one that UTC can express (0001-01-01T00:00:00+01:00 cannot):
        # consumers record it in UTC, and a time they could not was refused again and again.
        if time.tzinfo is None:
            raise ValueError("no UTC offset")
        time.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise EnvelopeError(f"bad ce_time {headers.get('ce_time', '')[:40]!r}: {exc}") from exc
    return Attributes(
        id=headers["ce_id"],
        source=headers["ce_source"],
        type=headers["ce_type"],
        tenant=headers["ce_tenant"],
        subject=headers["ce_subject"],
        time=time,
    )


def event_json_schema(model: builtins.type[BaseModel]) -> dict[str, object]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")
