"""The hub's AsyncAPI 3.0 document, generated from the event models.

``build_document()`` describes every topic of ``kernel.kafka.TOPICS`` (one
channel each, address = topic name), who sends and who receives on it, and one
message per registered event type (``contracts.events.all_event_classes()``):
its payload is the pydantic JSON Schema of the data model, its headers the
CloudEvents binary-mode ``ce_*`` headers written by ``contracts.envelope``.

The document is committed as ``contracts/asyncapi.yaml`` so that a contract
change shows up as a diff in review; a test fails when the file is stale::

    python -m contracts.asyncapi --write   # regenerate contracts/asyncapi.yaml
    python -m contracts.asyncapi --check   # exit 1 when the file is stale
    python -m contracts.asyncapi           # print the document
"""

from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from contracts.envelope import (
    CONTENT_TYPE,
    MAX_ID_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT_LENGTH,
    SPEC_VERSION,
    TENANT_PATTERN,
)
from contracts.events import EventData, all_event_classes
from contracts.events.courrier import (
    IncomingMailRegistered,
    OutgoingMailFailed,
    OutgoingMailSendRequested,
    OutgoingMailSent,
)
from contracts.events.factures import InvoiceApproved, InvoiceResponseRequested
from contracts.events.gateway import DeliveryReceipt
from contracts.events.meeting import DecisionTransmissionRequested, ItemDecided
from contracts.events.outside import NoticeNotificationReceived, OpinionReceived
from contracts.events.oversight import OversightOutcomeReceived
from contracts.events.peppol import PeppolDocumentReceived
from contracts.events.urban import (
    DecisionNeeded,
    IdentificationRequested,
    NoticeResponseRequested,
    OpinionRequested,
)
from kernel.kafka import TOPICS

DOCUMENT_PATH = Path(__file__).with_name("asyncapi.yaml")
WRITE_COMMAND = "python -m contracts.asyncapi --write"

#: Version of this API description: bump the minor version when an event type
#: is added, the major version when one is removed (a ``.vN`` type retired).
API_VERSION = "1.2.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMAS = "#/components/schemas/"

#: What each topic carries. A topic of ``TOPICS`` missing here still gets a channel.
TOPIC_DESCRIPTIONS: dict[str, str] = {
    "courrier.events": "Changes of incoming and outgoing mail in the mail registry "
    "(services/courrier), published through its transactional outbox.",
    "factures.events": "Every step of an invoice in services/factures (received, "
    "validated or rejected, approval, booked, paid) and its answers to the supplier "
    "(Peppol Invoice Response), published through its transactional outbox.",
    "urban.events": "Urban-planning files and permits (services/urban), among them "
    "the requests for a college or council decision.",
    "meeting.events": "Council and college meetings and their decisions (services/meeting).",
    "gateway.receipts": "Final outcome of each delivery the gateway made on a route "
    "(delivered, failed or dead), published through the gateway's outbox.",
    "gateway.inbound": "Documents the gateway's inbound adapters fetched from outside "
    "(business documents from the Peppol access point, the regional oversight's outcomes), "
    "for the service that owns them.",
}


@dataclass(frozen=True)
class Operation:
    id: str
    process: str
    action: str  # "send" or "receive", from the process's point of view
    topic: str
    summary: str
    #: Consumer group of a receiving process (one group per process, named after it).
    group_id: str | None = None
    #: The event types a receiving process acts on: its consumer's handler keys (the
    #: gateway: the types its tenants' routes route). The others of the channel reach the
    #: process and are committed without effect. A sending process sends every message
    #: of its channel, so a send operation leaves this empty.
    messages: tuple[type[EventData], ...] = ()


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        id="courrierSendsCourrierEvents",
        process="courrier",
        action="send",
        topic="courrier.events",
        summary="The mail registry publishes every change of a mail (outbox relay).",
    ),
    Operation(
        id="gatewayReceivesCourrierEvents",
        process="gateway",
        action="receive",
        topic="courrier.events",
        summary="The gateway delivers each routed event type to its tenant's connectors; "
        "offsets are committed only after the outcome is recorded.",
        group_id="gateway",
        messages=(OutgoingMailSendRequested,),
    ),
    Operation(
        id="gatewaySendsReceipts",
        process="gateway",
        action="send",
        topic="gateway.receipts",
        summary="The gateway announces each delivery's final outcome (outbox relay).",
    ),
    Operation(
        id="courrierReceivesReceipts",
        process="courrier",
        action="receive",
        topic="gateway.receipts",
        summary="The mail registry records whether an outgoing mail reached its recipient.",
        group_id="courrier",
        messages=(DeliveryReceipt,),
    ),
    Operation(
        id="facturesSendsFacturesEvents",
        process="factures",
        action="send",
        topic="factures.events",
        summary="The invoice service publishes every step of an invoice and its answers "
        "to the supplier (outbox relay).",
    ),
    Operation(
        id="gatewayReceivesFacturesEvents",
        process="gateway",
        action="receive",
        topic="factures.events",
        summary="The gateway hands approved invoices to the tenant's accounting software "
        "and sends Invoice Responses to the Peppol access point.",
        group_id="gateway",
        messages=(InvoiceApproved, InvoiceResponseRequested),
    ),
    Operation(
        id="gatewaySendsInbound",
        process="gateway",
        action="send",
        topic="gateway.inbound",
        summary="The gateway publishes each document fetched from the Peppol access point "
        "once, for the tenant whose participant receives it, each outcome of the "
        "regional oversight once, for the commune it concerns, each NOTICe notification "
        "once (with its checked documents), for the tenant whose NOTICe instance it names, "
        "and each opinion of a consulted body once (outbox relay).",
    ),
    Operation(
        id="gatewayReceivesUrbanEvents",
        process="gateway",
        action="receive",
        topic="urban.events",
        summary="The gateway posts urban's responses to NOTICe, identifies applicants at the "
        "KSZ-BCSS (the registered identity comes back in the receipt's answer) and sends "
        "requests for opinions to the consulted bodies' platform.",
        group_id="gateway",
        messages=(NoticeResponseRequested, IdentificationRequested, OpinionRequested),
    ),
    Operation(
        id="facturesReceivesInbound",
        process="factures",
        action="receive",
        topic="gateway.inbound",
        summary="The invoice service receives, checks and answers Peppol invoices.",
        group_id="factures",
        messages=(PeppolDocumentReceived,),
    ),
    Operation(
        id="facturesReceivesCourrierEvents",
        process="factures",
        action="receive",
        topic="courrier.events",
        summary="Scanned paper invoices (intake type FACT) become invoices to encode.",
        group_id="factures",
        messages=(IncomingMailRegistered,),
    ),
    Operation(
        id="facturesReceivesReceipts",
        process="factures",
        action="receive",
        topic="gateway.receipts",
        summary="The accounting software's booking reference books the approved invoice.",
        group_id="factures",
        messages=(DeliveryReceipt,),
    ),
    Operation(
        id="meetingSendsMeetingEvents",
        process="meeting",
        action="send",
        topic="meeting.events",
        summary="The meeting service publishes items created and decided, meetings closed "
        "and decisions published (outbox relay).",
    ),
    Operation(
        id="meetingReceivesUrbanEvents",
        process="meeting",
        action="receive",
        topic="urban.events",
        summary="A request for a decision becomes an agenda item in the wanted configuration.",
        group_id="meeting",
        messages=(DecisionNeeded,),
    ),
    Operation(
        id="urbanSendsUrbanEvents",
        process="urban",
        action="send",
        topic="urban.events",
        summary="The urban service publishes files opened, deadline warnings, NOTICe responses, "
        "identification and opinion requests, requests for a college decision and the "
        "college's extensions of its decision deadline (outbox relay).",
    ),
    Operation(
        id="urbanReceivesInbound",
        process="urban",
        action="receive",
        topic="gateway.inbound",
        summary="NOTICe notifications open or complete permit files; consulted bodies' "
        "opinions move their procedure on. A notification that cannot be applied is kept.",
        group_id="urban",
        messages=(NoticeNotificationReceived, OpinionReceived),
    ),
    Operation(
        id="urbanReceivesReceipts",
        process="urban",
        action="receive",
        topic="gateway.receipts",
        summary="The National Register's answer to an identification request is compared with "
        "the declared identity; a delivered FINAL NOTICe response notifies the decision.",
        group_id="urban",
        messages=(DeliveryReceipt,),
    ),
    Operation(
        id="urbanReceivesMeetingEvents",
        process="urban",
        action="receive",
        topic="meeting.events",
        summary="The college's decision on a file's item (matched by external_identifier, the "
        "file reference) grants or refuses the permit; no polling of the meeting service.",
        group_id="urban",
        messages=(ItemDecided,),
    ),
    Operation(
        id="gatewayReceivesMeetingEvents",
        process="gateway",
        action="receive",
        topic="meeting.events",
        summary="The gateway transmits decisions subject to regional oversight (tutelle) "
        "to the Region, signed with the commune's certificate.",
        group_id="gateway",
        messages=(DecisionTransmissionRequested,),
    ),
    Operation(
        id="meetingReceivesReceipts",
        process="meeting",
        action="receive",
        topic="gateway.receipts",
        summary="A decision's oversight transmission is acknowledged (its number kept) "
        "or failed (its reason kept).",
        group_id="meeting",
        messages=(DeliveryReceipt,),
    ),
    Operation(
        id="meetingReceivesInbound",
        process="meeting",
        action="receive",
        topic="gateway.inbound",
        summary="The regional oversight's outcome (approved, annulled, no objection) is "
        "recorded on the decision and announced on meeting.events.",
        group_id="meeting",
        messages=(OversightOutcomeReceived,),
    ),
    Operation(
        id="courrierReceivesMeetingEvents",
        process="courrier",
        action="receive",
        topic="meeting.events",
        summary="A numbered decision that names the person or company it concerns becomes "
        "one outgoing mail (the notification letter, as a PDF) sent to their e-Box, "
        "about the item.",
        group_id="courrier",
        messages=(ItemDecided,),
    ),
    Operation(
        id="meetingReceivesCourrierEvents",
        process="meeting",
        action="receive",
        topic="courrier.events",
        summary="Outgoing mail about an item moves its decision's notification on: in "
        "progress, done (the e-Box message id kept) or failed (to be sent on paper).",
        group_id="meeting",
        messages=(OutgoingMailSendRequested, OutgoingMailSent, OutgoingMailFailed),
    ),
)


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the hub, as plain JSON-compatible data."""
    classes = all_event_classes()
    payload_refs, schemas = _payload_schemas(classes)
    by_topic: dict[str, list[type[EventData]]] = {topic: [] for topic in TOPICS}
    for cls in classes:
        if cls.TOPIC not in by_topic:
            raise ValueError(
                f"{cls.TYPE} is published on {cls.TOPIC}, which is not in "
                "kernel.kafka.TOPICS (so no process would create it)"
            )
        by_topic[cls.TOPIC].append(cls)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Wallonia interop hub: document events",
            "version": API_VERSION,
            "description": (
                "Events exchanged on Kafka by the services and the interop gateway of the hub\n"
                "that Walloon communes and CPAS share. Every event is a CloudEvent 1.0 in Kafka\n"
                "binary content mode: attributes in `ce_*` headers (plus the `tenant` extension,\n"
                "the 5-digit NIS code of the commune or CPAS), data as the JSON record value,\n"
                "record key `<tenant>:<document id>` so that one document's events stay in order\n"
                "on one partition. A breaking change is a new type ending in `.v2`; both stay\n"
                "registered while consumers move over. A receive operation lists the types its\n"
                "process acts on (its consumer's handlers; the gateway's: its tenants' routes).\n\n"
                f"Generated from `contracts/events` by `{WRITE_COMMAND}`."
            ),
            "license": {
                "name": "EUPL-1.2",
                "url": "https://interoperable-europe.ec.europa.eu/collection/eupl/eupl-text-eupl-12",
            },
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "development": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The embedded broker (Tansu) that `hub up` starts; memory only.",
            },
            "production": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "Apache Kafka (KRaft) of docker-compose.yml; topics are "
                "created by `hub topics`.",
            },
        },
        "channels": {topic: _channel(topic, by_topic[topic]) for topic in TOPICS},
        "operations": {operation.id: _operation(operation, by_topic) for operation in OPERATIONS},
        "components": {
            "schemas": schemas,
            "messages": {cls.TYPE: _message(cls, payload_refs[cls]) for cls in classes},
        },
    }


def _payload_schemas(
    classes: list[type[EventData]],
) -> tuple[dict[type[EventData], str], dict[str, Any]]:
    """Every data model's JSON Schema, and each one it uses, under components/schemas.

    One pydantic call for all models, so two nested models of the same name in
    different modules get distinct names instead of overwriting each other.
    """
    refs, definitions = models_json_schema(
        [(cls, "validation") for cls in classes], ref_template=SCHEMAS + "{model}"
    )
    schemas = definitions.get("$defs", {})
    return (
        {cls: refs[(cls, "validation")]["$ref"] for cls in classes},
        {name: schemas[name] for name in sorted(schemas)},
    )


def _channel(topic: str, classes: list[type[EventData]]) -> dict[str, Any]:
    description = TOPIC_DESCRIPTIONS.get(topic, f"Topic {topic}.")
    if not classes:
        description += (
            " No event type is published on this topic yet: the channel exists (the hub "
            "creates the topic) and its messages will be added with the service's first event."
        )
    return {
        "address": topic,
        "title": topic,
        "description": description,
        "messages": {cls.TYPE: {"$ref": f"#/components/messages/{cls.TYPE}"} for cls in classes},
        # Partitions are the unit of parallelism: at most this many members of a group consume.
        "bindings": {
            "kafka": {"partitions": TOPICS[topic], "bindingVersion": KAFKA_BINDING_VERSION}
        },
    }


def _operation(operation: Operation, by_topic: dict[str, list[type[EventData]]]) -> dict[str, Any]:
    on_channel = by_topic[operation.topic]
    if operation.action == "send":
        if operation.messages:
            raise ValueError(f"{operation.id}: a sender sends every message of its channel")
        messages = on_channel
    else:
        messages = list(operation.messages)
        if not messages:
            raise ValueError(f"{operation.id}: a receive operation names the types it handles")
        foreign = [cls.TYPE for cls in messages if cls not in on_channel]
        if foreign:
            raise ValueError(f"{operation.id}: {', '.join(foreign)} not on {operation.topic}")
    result: dict[str, Any] = {
        "action": operation.action,
        "channel": {"$ref": f"#/channels/{operation.topic}"},
        "title": f"{operation.process} {operation.action}s {operation.topic}",
        "summary": operation.summary,
        # The process that performs the operation (this document describes them all).
        "tags": [{"name": operation.process}],
        "messages": [
            {"$ref": f"#/channels/{operation.topic}/messages/{cls.TYPE}"} for cls in messages
        ],
    }
    if operation.group_id:
        result["bindings"] = {
            "kafka": {
                "groupId": {"type": "string", "const": operation.group_id},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }
    return result


def _message(cls: type[EventData], payload_ref: str) -> dict[str, Any]:
    doc = inspect.getdoc(cls) or cls.TYPE
    return {
        "name": cls.TYPE,
        "title": cls.__name__,
        "summary": doc.split("\n\n", 1)[0].replace("\n", " "),
        "description": f"{doc}\n\nTopic `{cls.TOPIC}`, version `{cls.version()}`.",
        "contentType": CONTENT_TYPE,
        "headers": cloudevents_headers_schema(cls.TYPE),
        "payload": {"$ref": payload_ref},
        "bindings": {
            "kafka": {"key": record_key_schema(), "bindingVersion": KAFKA_BINDING_VERSION}
        },
    }


def cloudevents_headers_schema(event_type: str) -> dict[str, Any]:
    """The Kafka headers of one event type (``contracts.envelope.to_record``), as text."""
    return {
        "type": "object",
        "description": "CloudEvents 1.0 Kafka binary content mode: each attribute is a "
        "`ce_<name>` header whose value is UTF-8 text.",
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_subject",
            "ce_time",
            "ce_tenant",
            "content-type",
        ],
        "properties": {
            "ce_specversion": {"type": "string", "const": SPEC_VERSION},
            "ce_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_LENGTH,
                "description": "Unique per event (a UUID); consumers deduplicate by it.",
            },
            "ce_source": {
                "type": "string",
                "format": "uri-reference",
                "minLength": 1,
                "maxLength": MAX_SOURCE_LENGTH,
                "description": "The producing process, e.g. `urn:hub:courrier`.",
            },
            "ce_type": {"type": "string", "const": event_type},
            "ce_subject": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_SUBJECT_LENGTH,
                "description": "Id of the document the event is about.",
            },
            "ce_time": {"type": "string", "format": "date-time"},
            "ce_tenant": {
                "type": "string",
                "pattern": TENANT_PATTERN,
                "description": "Extension attribute `tenant`: the 5-digit NIS code of the "
                "commune or CPAS the document belongs to.",
            },
            "content-type": {"type": "string", "const": CONTENT_TYPE},
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C trace context of the document's journey, when traced.",
            },
            "tracestate": {"type": "string", "description": "W3C trace context, vendor part."},
        },
    }


def record_key_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": "^[0-9]{5}:.+$",
        "description": "`<tenant>:<document id>` (the ce_tenant and ce_subject headers): every "
        "change of one document lands on one partition, in order.",
    }


class _Dumper(yaml.SafeDumper):
    """Readable, stable YAML: insertion order, block text for descriptions, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_text)


def generated_yaml(document: dict[str, Any], origin: str) -> str:
    """``document`` as a committed contract file: stable YAML under a "do not edit" line
    naming what it is generated from (``origin``). Shared by the AsyncAPI and the
    OpenAPI documents (``contracts.openapi_documents``)."""
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return f"# Generated from {origin}: do not edit.\n{body}"


def render(document: dict[str, Any] | None = None) -> str:
    document = document if document is not None else build_document()
    return generated_yaml(document, f"contracts/events by `{WRITE_COMMAND}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m contracts.asyncapi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {DOCUMENT_PATH.name}")
    mode.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when {DOCUMENT_PATH.name} differs from the event models",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOCUMENT_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {DOCUMENT_PATH}")
    elif args.check:
        committed = DOCUMENT_PATH.read_text(encoding="utf-8") if DOCUMENT_PATH.exists() else ""
        if committed != text:
            print(f"{DOCUMENT_PATH} is stale: run `{WRITE_COMMAND}`", file=sys.stderr)
            return 1
        print(f"{DOCUMENT_PATH} is up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
