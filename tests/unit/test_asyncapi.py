"""The AsyncAPI document: committed, valid AsyncAPI 3.0.0, and true to the event models."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from contracts import asyncapi
from contracts.envelope import CloudEvent, new_event, to_record
from contracts.events import all_event_classes
from contracts.events.courrier import OutgoingMailSendRequested, Recipient
from contracts.events.gateway import DeliveryReceipt
from kernel.kafka import TOPICS

STALE = f"contracts/asyncapi.yaml is stale: run `{asyncapi.WRITE_COMMAND}` and commit the result"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi.build_document()


def _format_checker() -> FormatChecker:
    """jsonschema's checker plus ``date-time`` (its own needs an extra package)."""
    checker = FormatChecker()
    checker.checks("date-time")(lambda value: not isinstance(value, str) or _RFC3339.match(value))
    return checker


def _validator_for(uri: str, contents: dict[str, Any], pointer: str = "") -> Draft7Validator:
    """A validator of ``uri#pointer`` with ``contents`` registered under ``uri``.

    The schemas are draft-07 (AsyncAPI's Schema Object is a draft-07 superset);
    their ``$ref``s resolve against ``uri`` through the registry, which holds the
    schema and every ``$id`` subresource in it (``crawl``). An explicit registry
    never fetches anything: an unknown URI fails instead of going online.
    """
    resource = Resource.from_contents(contents, default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(uri, resource).crawl()
    return Draft7Validator(
        {"$ref": f"{uri}#{pointer}"}, registry=registry, format_checker=_format_checker()
    )


def _errors(validator: Draft7Validator, instance: object) -> list[str]:
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]


def _sample_events() -> list[CloudEvent]:
    pdf = b"%PDF-1.7 sample"
    send = OutgoingMailSendRequested(
        mail_id="m-1",
        registration_number="S2026/000001",
        recipient=Recipient(kind="enterprise", identifier="0403170701", name="SPW"),
        subject="Permis d'urbanisme",
        body_pdf_base64=base64.b64encode(pdf).decode(),
        body_pdf_md5=hashlib.md5(pdf).hexdigest(),
    )
    receipt = DeliveryReceipt(
        source_event_id="e-1",
        source_event_type=send.TYPE,
        route="outgoing-mail-ebox",
        connector="ebox",
        idempotency_key="e-1:outgoing-mail-ebox",
        outcome="delivered",
        external_reference="ebox-42",
        attempts=1,
    )
    return [
        new_event(send, tenant="92137", subject="m-1", source="urn:hub:courrier"),
        new_event(receipt, tenant="92137", subject="m-1", source="urn:hub:gateway"),
    ]


TRACEPARENT = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}


# -- the committed file -------------------------------------------------------------


def test_the_committed_document_is_what_the_event_models_produce(
    document: dict[str, Any],
) -> None:
    assert asyncapi.DOCUMENT_PATH.exists(), STALE
    committed = asyncapi.DOCUMENT_PATH.read_text(encoding="utf-8")
    assert yaml.safe_load(committed) == document, STALE
    assert committed == asyncapi.render(document), STALE + " (same content, other layout)"


def test_check_fails_on_a_stale_file_and_write_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "asyncapi.yaml"
    monkeypatch.setattr(asyncapi, "DOCUMENT_PATH", target)
    target.write_text("asyncapi: 3.0.0\n", encoding="utf-8")
    assert asyncapi.main(["--check"]) == 1
    assert asyncapi.WRITE_COMMAND in capsys.readouterr().err
    assert asyncapi.main(["--write"]) == 0
    assert asyncapi.main(["--check"]) == 0
    assert target.read_text(encoding="utf-8") == asyncapi.render()


# -- AsyncAPI 3.0.0 ----------------------------------------------------------------


def test_the_document_is_valid_asyncapi_3(corpus: Path, document: dict[str, Any]) -> None:
    path = corpus / "contracts" / "asyncapi" / "asyncapi-3.0.0.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    assert _errors(_validator_for(path.as_uri(), schema), document) == []


def test_a_broken_document_is_refused(corpus: Path, document: dict[str, Any]) -> None:
    """The validation above really checks: it catches a wrong operation action."""
    path = corpus / "contracts" / "asyncapi" / "asyncapi-3.0.0.json"
    validator = _validator_for(path.as_uri(), json.loads(path.read_text(encoding="utf-8")))
    broken = json.loads(json.dumps(document))
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2 wording
    assert _errors(validator, broken)


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    def references(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in references(value)]
        return []

    refs = references(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


# -- true to the code ---------------------------------------------------------------


def test_every_topic_is_a_channel_and_empty_ones_say_so(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert list(channels) == list(TOPICS)
    for topic, channel in channels.items():
        assert channel["address"] == topic
        assert channel["bindings"]["kafka"]["partitions"] == TOPICS[topic]
        if not channel["messages"]:
            assert "No event type is published on this topic yet" in channel["description"]
    assert "urban.file.decision_needed.v1" in channels["urban.events"]["messages"]
    assert "gateway.notice.notification_received.v1" in channels["gateway.inbound"]["messages"]


def test_every_registered_event_type_is_a_message_on_its_topic(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    classes = all_event_classes()
    assert classes
    assert set(messages) == {cls.TYPE for cls in classes}
    for cls in classes:
        message = messages[cls.TYPE]
        assert message["name"] == cls.TYPE
        assert cls.TYPE in document["channels"][cls.TOPIC]["messages"]
        payload = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert document["components"]["schemas"][payload]["title"] == cls.__name__


def test_the_ce_type_header_is_each_message_name(document: dict[str, Any]) -> None:
    for name, message in document["components"]["messages"].items():
        headers = message["headers"]
        assert headers["properties"]["ce_type"]["const"] == name == message["name"]
        assert "ce_type" in headers["required"]


def _handled_by_process() -> dict[str, set[str]]:
    """The event types each process acts on, read from the code that the processes run.

    The services: the keys of the handler map each one gives its consumer (built as at
    start, from the committed tenants). The gateway: the types its tenants' routes route.
    """
    from types import SimpleNamespace

    from gateway.routing import load_routing
    from kernel.settings import REPOSITORY_ROOT
    from kernel.tenants import load_tenants
    from services.courrier import main as courrier
    from services.factures import main as factures
    from services.meeting import main as meeting
    from services.urban import main as urban
    from tests.unit.test_routing import BUILT_IN_TYPES

    tenants = load_tenants(REPOSITORY_ROOT / "config" / "tenants")
    handled: dict[str, set[str]] = {}
    for name, module, handlers in (
        ("courrier", courrier, courrier.handlers),
        ("factures", factures, factures.tenant_handlers),
        ("meeting", meeting, meeting.handlers),
        ("urban", urban, urban.tenant_handlers),
    ):
        app: Any = SimpleNamespace(state=SimpleNamespace(tenants=tenants))
        configure = getattr(module, "configure", None)
        if configure is not None:
            configure(app)
        handled[name] = set(handlers(app))
    handled["gateway"] = load_routing(tenants, BUILT_IN_TYPES, {}).event_types()
    return handled


def test_who_receives_what_is_what_the_code_subscribes(document: dict[str, Any]) -> None:
    from contracts.events import event_class_for
    from gateway.main import GatewayOptions
    from services.courrier.main import TOPICS as COURRIER_RECEIVES
    from services.factures.consumers import TOPICS as FACTURES_RECEIVES
    from services.meeting.main import TOPICS as MEETING_RECEIVES
    from services.urban.consumers import TOPICS as URBAN_RECEIVES

    handled = _handled_by_process()
    topic_of: dict[str, str] = {}
    for event_type in set().union(*handled.values()):
        event_class = event_class_for(event_type)
        assert event_class is not None, event_type
        topic_of[event_type] = event_class.TOPIC
    subscribed = (
        {("courrier", topic) for topic in COURRIER_RECEIVES}
        | {("factures", topic) for topic in FACTURES_RECEIVES}
        | {("meeting", topic) for topic in MEETING_RECEIVES}
        | {("urban", topic) for topic in URBAN_RECEIVES}
        | {("gateway", topic_of[event_type]) for event_type in handled["gateway"]}
    )
    # A service handles only what is on the topics it subscribes to, and each one has a handler.
    assert {(process, topic_of[t]) for process, types in handled.items() for t in types} == (
        subscribed
    )
    operations = document["operations"].values()
    flows = {
        (op["tags"][0]["name"], op["action"], op["channel"]["$ref"].removeprefix("#/channels/"))
        for op in operations
    }
    assert {(process, topic) for process, action, topic in flows if action == "receive"} == (
        subscribed
    )
    # Each receive operation lists exactly the types its process acts on from that channel.
    for op_id, op in document["operations"].items():
        process, topic = op["tags"][0]["name"], op["channel"]["$ref"].removeprefix("#/channels/")
        listed = [
            ref["$ref"].removeprefix(f"#/channels/{topic}/messages/") for ref in op["messages"]
        ]
        if op["action"] == "receive":
            expected = {t for t in handled[process] if topic_of[t] == topic}
            assert sorted(listed) == sorted(expected), op_id
        else:
            assert listed == list(document["channels"][topic]["messages"]), op_id
    # Every topic someone receives has a sender, and services send on their own topic.
    senders = {(process, topic) for process, action, topic in flows if action == "send"}
    assert {topic for _, topic in subscribed} <= {t for _, t in senders}
    assert all(topic.startswith(process) for process, topic in senders)
    receive = document["operations"]["gatewayReceivesCourrierEvents"]
    assert receive["bindings"]["kafka"]["groupId"]["const"] == GatewayOptions().group_id
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in receive["messages"]] == [
        "courrier.outgoing_mail.send_requested.v1"
    ]


def test_a_receive_operation_names_only_messages_of_its_channel() -> None:
    from dataclasses import replace

    from contracts.events.factures import InvoicePaid

    operation = next(op for op in asyncapi.OPERATIONS if op.id == "meetingReceivesUrbanEvents")
    by_topic: dict[str, list[type[Any]]] = {topic: [] for topic in TOPICS}
    by_topic[InvoicePaid.TOPIC] = [InvoicePaid]
    with pytest.raises(ValueError, match=r"not on urban\.events"):
        asyncapi._operation(replace(operation, messages=(InvoicePaid,)), by_topic)
    with pytest.raises(ValueError, match="names the types it handles"):
        asyncapi._operation(replace(operation, messages=()), by_topic)


# -- real records against the document ---------------------------------------------


@pytest.mark.parametrize("event", _sample_events(), ids=lambda event: event.type)
def test_a_record_matches_its_message(document: dict[str, Any], event: CloudEvent) -> None:
    record = to_record(event, extra_headers=TRACEPARENT)
    uri = asyncapi.DOCUMENT_PATH.as_uri()
    message = f"/components/messages/{event.type}"
    headers = {name: value.decode() for name, value in record.headers}
    assert _errors(_validator_for(uri, document, message + "/headers"), headers) == []
    payload = json.loads(record.value)
    assert _errors(_validator_for(uri, document, message + "/payload"), payload) == []
    key = _validator_for(uri, document, message + "/bindings/kafka/key")
    assert _errors(key, record.key.decode()) == []
    assert (
        record.topic in document["channels"]
        and event.type in document["channels"][record.topic]["messages"]
    )

    wrong = {**headers, "ce_type": "courrier.something_else.v1"}
    assert _errors(_validator_for(uri, document, message + "/headers"), wrong)


# -- CloudEvents -----------------------------------------------------------------


def as_cloudevent_attributes(headers: dict[str, str]) -> dict[str, str]:
    """Kafka binary mode → CloudEvents attributes (Kafka protocol binding, section 3.2)."""
    attributes = {
        name.removeprefix("ce_"): value for name, value in headers.items() if name.startswith("ce_")
    }
    if "content-type" in headers:
        attributes["datacontenttype"] = headers["content-type"]
    return attributes


@pytest.mark.parametrize("event", _sample_events(), ids=lambda event: event.type)
def test_record_headers_are_valid_cloudevents_attributes(corpus: Path, event: CloudEvent) -> None:
    path = corpus / "contracts" / "cloudevents" / "cloudevents.json"
    validator = _validator_for(path.as_uri(), json.loads(path.read_text(encoding="utf-8")))
    record = to_record(event, extra_headers=TRACEPARENT)
    attributes = as_cloudevent_attributes({name: value.decode() for name, value in record.headers})
    # Attribute names, including the `tenant` extension: lower-case letters and digits, ≤ 20.
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in attributes), attributes
    assert attributes["tenant"] == event.tenant
    structured = {**attributes, "data": json.loads(record.value)}
    assert _errors(validator, structured) == []

    without_id = {name: value for name, value in structured.items() if name != "id"}
    assert _errors(validator, without_id)
    assert _errors(validator, {**structured, "time": "yesterday"})


# -- payload schemas as strict as the runtime ---------------------------------------


def _payload_validator(document: dict[str, Any], event_type: str) -> Draft7Validator:
    return _validator_for(
        asyncapi.DOCUMENT_PATH.as_uri(), document, f"/components/messages/{event_type}/payload"
    )


def test_decimals_are_documented_as_the_strings_they_are_sent_as(
    document: dict[str, Any],
) -> None:
    """Money, quantities and rates: JSON strings on the wire, and so in the document; a
    number is still accepted on receipt, and the wire form is unchanged."""
    from contracts.events.factures import (
        AccountingDocument,
        AccountingLine,
        InvoiceApproved,
        InvoicePaid,
        InvoiceReceived,
        Supplier,
        VatBreakdown,
    )

    schemas = document["components"]["schemas"]
    for name, field in (
        ("InvoicePaid", "amount"),
        ("AccountingDocument", "payable_amount"),
        ("AccountingLine", "quantity"),
    ):
        described = schemas[name]["properties"][field]
        assert described["type"] == "string" and "anyOf" not in described, (name, field)
    assert {"type": "null"} in schemas["InvoiceReceived"]["properties"]["payable_amount"]["anyOf"]

    document_data = AccountingDocument(
        kind="Invoice",
        number="F-1",
        issue_date="2026-01-02",
        currency="EUR",
        supplier=Supplier(name="SA Travaux"),
        tax_exclusive_amount=Decimal("1000.00"),
        tax_amount=210,  # a JSON number is still accepted on receipt, as before
        payable_amount="1210.00",
        vat_breakdown=[
            VatBreakdown(category="S", rate=21.0, taxable_amount="1000", tax_amount="210")
        ],
        lines=[
            AccountingLine(
                line_id="1",
                description="Tiny",
                quantity=Decimal("0.0000001"),  # sent as "1E-7"
                net_amount=Decimal("0.00000000"),  # sent as "0E-8"
                vat_category="S",
                vat_rate=Decimal("-12.50"),
            )
        ],
        ubl_base64="PA==",
    )
    events = [
        InvoiceApproved(invoice_id="i-1", approved_by="finances", document=document_data),
        InvoicePaid(invoice_id="i-1", number="F-1", paid_on="2026-01-03", amount="12.50"),
        InvoiceReceived(invoice_id="i-1", channel="upload", kind="Invoice", payable_amount=None),
        InvoiceReceived(invoice_id="i-2", channel="upload", kind="Invoice", payable_amount=7),
    ]
    for event in events:
        wire = json.loads(event.model_dump_json())
        assert _errors(_payload_validator(document, event.TYPE), wire) == [], event.TYPE
        assert type(event).model_validate(wire) == event  # round trip, exact
    assert json.loads(events[1].model_dump_json())["amount"] == "12.50"
    assert events[1].model_dump()["amount"] == Decimal("12.50")
    approved = json.loads(events[0].model_dump_json())["document"]
    assert (approved["tax_amount"], approved["lines"][0]["quantity"]) == ("210", "1E-7")

    paid = _payload_validator(document, InvoicePaid.TYPE)
    base = {"invoice_id": "i-1", "number": "F-1", "paid_on": "2026-01-03"}
    for wrong in (12.5, "12,50", "12.", "abc", "NaN"):
        assert _errors(paid, {**base, "amount": wrong}), wrong
    assert InvoicePaid.model_validate({**base, "amount": 12.5}).amount == Decimal("12.5")


def test_a_concerned_partys_identifier_is_documented_with_its_check(
    document: dict[str, Any],
) -> None:
    from pydantic import ValidationError

    from contracts.events.urban import DecisionNeeded

    validator = _payload_validator(document, DecisionNeeded.TYPE)
    base = {
        "file_id": "f-1",
        "title": "Permis",
        "proposing_service": "urbanisme",
        "meeting_config": "college",
        "external_identifier": "PU/2026/1",
    }

    def party(kind: str, identifier: str) -> dict[str, Any]:
        return {**base, "concerned_party": {"kind": kind, "identifier": identifier}}

    for kind, identifier in (
        ("person", "85073003328"),
        ("person", "85.07.30-033.28"),
        ("enterprise", "0403170701"),
        ("enterprise", "BE 0403.170.701"),
        ("enterprise", "403170701"),
    ):
        assert _errors(validator, party(kind, identifier)) == [], identifier
        sent = json.loads(DecisionNeeded.model_validate(party(kind, identifier)).model_dump_json())
        assert _errors(validator, sent) == [], sent
    for kind, identifier in (("enterprise", "abc"), ("person", "1234"), ("person", "")):
        assert _errors(validator, party(kind, identifier)), identifier
        with pytest.raises(ValidationError):
            DecisionNeeded.model_validate(party(kind, identifier))
    described = next(
        schema["properties"]["identifier"]
        for name, schema in document["components"]["schemas"].items()
        if name.startswith("ConcernedParty")
    )
    assert "modulo-97" in described["description"]


def test_a_transmission_request_is_held_to_the_oversight_contract(
    document: dict[str, Any],
) -> None:
    """The limits of tutelle.xsd's TransmitDecisionRequest, declared in the event, which the
    meeting service stays within (at most MAX_ANNEXES annexes, digests it computes itself,
    only numbered decisions transmitted)."""
    from lxml import etree
    from pydantic import ValidationError

    from contracts.events.meeting import (
        MAX_TRANSMITTED_ANNEXES,
        TRANSMITTED_DECISIONS,
        DecisionTransmissionRequested,
    )
    from services.meeting.domain import MAX_ANNEXES, Decision

    xsd = etree.parse(str(Path(asyncapi.__file__).with_name("oversight") / "tutelle.xsd"))
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    kinds = xsd.xpath("//xs:simpleType[@name='DecisionKind']//xs:enumeration/@value", namespaces=ns)
    annex = xsd.xpath(
        "//xs:element[@name='TransmitDecisionRequest']//xs:element[@name='Annex']", namespaces=ns
    )[0]
    md5 = xsd.xpath(
        "//xs:complexType[@name='AnnexReference']//xs:element[@name='Md5']//xs:pattern/@value",
        namespaces=ns,
    )[0]
    assert list(TRANSMITTED_DECISIONS) == kinds
    assert int(annex.get("maxOccurs")) == MAX_TRANSMITTED_ANNEXES
    assert MAX_ANNEXES <= MAX_TRANSMITTED_ANNEXES
    assert [d.value for d in Decision if d.is_numbered] == kinds

    schemas = document["components"]["schemas"]
    payload = schemas["DecisionTransmissionRequested"]["properties"]
    assert payload["decision"]["enum"] == kinds
    assert payload["annexes"]["maxItems"] == MAX_TRANSMITTED_ANNEXES
    assert schemas["AnnexReference"]["properties"]["md5"]["pattern"] == f"^{md5}$"

    validator = _payload_validator(document, DecisionTransmissionRequested.TYPE)
    one_annex = {
        "annex_id": "a-1",
        "title": "Plan",
        "filename": "plan.pdf",
        "media_type": "application/pdf",
        "md5": hashlib.md5(b"plan").hexdigest(),
    }
    good = {
        "item_id": "i-1",
        "meeting_id": "m-1",
        "meeting_config": "council",
        "meeting_kind": "council",
        "meeting_date": "2026-03-02T19:00:00+01:00",
        "decision": "accepted",
        "decision_number": "CC/2026/0007",
        "category": "finances",
        "title": "Budget",
        "decision_text": "Approuvé.",
        "annexes": [one_annex] * MAX_TRANSMITTED_ANNEXES,
    }
    assert _errors(validator, good) == []
    sent = DecisionTransmissionRequested.model_validate(good)
    assert _errors(validator, json.loads(sent.model_dump_json())) == []
    for wrong in (
        {"decision": "postponed"},
        {"annexes": [one_annex] * (MAX_TRANSMITTED_ANNEXES + 1)},
        {"annexes": [{**one_annex, "md5": one_annex["md5"].upper()}]},
        {"annexes": [{**one_annex, "md5": "not-a-digest"}]},
    ):
        assert _errors(validator, {**good, **wrong}), wrong
        with pytest.raises(ValidationError):
            DecisionTransmissionRequested.model_validate({**good, **wrong})
