"""The AsyncAPI document: committed, valid AsyncAPI 3.0.0, and true to the event models."""

from __future__ import annotations

import base64
import hashlib
import json
import re
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


def test_who_receives_what_is_what_the_code_subscribes(document: dict[str, Any]) -> None:
    from contracts.events import event_class_for
    from gateway.main import GatewayOptions
    from gateway.routing import load_routing
    from kernel.settings import REPOSITORY_ROOT
    from kernel.tenants import load_tenants
    from services.courrier.main import TOPICS as COURRIER_RECEIVES
    from services.factures.consumers import TOPICS as FACTURES_RECEIVES
    from services.meeting.main import TOPICS as MEETING_RECEIVES
    from services.urban.consumers import TOPICS as URBAN_RECEIVES
    from tests.unit.test_routing import BUILT_IN_TYPES

    routing = load_routing(load_tenants(REPOSITORY_ROOT / "config" / "tenants"), BUILT_IN_TYPES, {})
    routed_topics = set()
    for event_type in routing.event_types():
        event_class = event_class_for(event_type)
        assert event_class is not None
        routed_topics.add(event_class.TOPIC)
    subscribed = (
        {("courrier", topic) for topic in COURRIER_RECEIVES}
        | {("factures", topic) for topic in FACTURES_RECEIVES}
        | {("meeting", topic) for topic in MEETING_RECEIVES}
        | {("urban", topic) for topic in URBAN_RECEIVES}
        | {("gateway", topic) for topic in routed_topics}
    )
    operations = document["operations"].values()
    flows = {
        (op["tags"][0]["name"], op["action"], op["channel"]["$ref"].removeprefix("#/channels/"))
        for op in operations
    }
    assert {(process, topic) for process, action, topic in flows if action == "receive"} == (
        subscribed
    )
    # Every topic someone receives has a sender, and services send on their own topic.
    senders = {(process, topic) for process, action, topic in flows if action == "send"}
    assert {topic for _, topic in subscribed} <= {t for _, t in senders}
    assert all(topic.startswith(process) for process, topic in senders)
    receive = document["operations"]["gatewayReceivesCourrierEvents"]
    assert receive["bindings"]["kafka"]["groupId"]["const"] == GatewayOptions().group_id


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
