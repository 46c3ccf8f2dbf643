"""The meeting rules, the tenant file's meeting block and the WS4PM request checks, with fakes."""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.events.meeting import ConcernedParty
from kernel.tenants import Tenant, TenantConfigError
from services.meeting.configuration import MeetingConfig, load_meeting_settings
from services.meeting.domain import (
    MAX_ANNEX_BYTES,
    MAX_ANNEX_FILENAME,
    MAX_CONCERNED_PARTY_NAME,
    MAX_EXTERNAL_IDENTIFIER,
    MAX_PROPOSING_SERVICE,
    AnnexChecksumMismatch,
    AnnexTooLarge,
    AnnexUpload,
    ItemAlreadyDecided,
    ItemNotPresented,
    ItemState,
    TextTooLong,
    TooManyAnnexes,
    Transition,
    TransitionNotAllowed,
    UnknownCategory,
    UnknownMeetingConfig,
    allocate_decision_number,
    check_annexes,
    check_decidable,
    check_item_fields,
    check_length,
    configuration,
    state_after,
)
from services.meeting.tables import Annex, Item
from services.meeting.ws4pm import Ws4pmFault, read_request

COLLEGE = MeetingConfig.model_validate(
    {
        "id": "college",
        "kind": "college",
        "title": "Collège",
        "decision_prefix": "COL",
        "proposing_services": ["urbanisme"],
        "categories": [{"id": "travaux", "title": "Travaux", "oversight": True}],
    }
)


class FakeCounters:
    def __init__(self) -> None:
        self.last: dict[tuple[str, str, int], int] = defaultdict(int)

    async def next_sequence(self, tenant: str, meeting_config: str, year: int) -> int:
        self.last[tenant, meeting_config, year] += 1
        return self.last[tenant, meeting_config, year]


def tenant(raw_meeting: object, code: str = "92137") -> Tenant:
    raw = {"tenant": code, "name": "Commune", "services": {"meeting": raw_meeting}}
    return Tenant(code, "Commune", Path(f"{code}.yaml"), raw)


# -- workflow ---------------------------------------------------------------------------


def test_the_workflow_goes_created_proposed_validated_presented() -> None:
    state = ItemState.CREATED
    for transition in (Transition.PROPOSE, Transition.VALIDATE, Transition.PRESENT):
        state = state_after("i", state, transition)
    assert state is ItemState.PRESENTED
    assert state_after("i", ItemState.POSTPONED, Transition.PRESENT) is ItemState.PRESENTED
    with pytest.raises(TransitionNotAllowed):
        state_after("i", ItemState.CREATED, Transition.PRESENT)
    with pytest.raises(ItemAlreadyDecided):
        state_after("i", ItemState.ACCEPTED, Transition.PRESENT)


def test_only_a_presented_undecided_item_can_be_decided() -> None:
    check_decidable("i", ItemState.PRESENTED)
    with pytest.raises(ItemNotPresented):
        check_decidable("i", ItemState.VALIDATED)
    for decided in (ItemState.REFUSED, ItemState.POSTPONED):
        with pytest.raises(ItemAlreadyDecided):
            check_decidable("i", decided)


async def test_decision_numbers_count_per_configuration_and_year_of_the_meeting() -> None:
    counters = FakeCounters()
    # 23:30 UTC on 31 December is already 1 January in Brussels.
    new_year = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    december = datetime(2025, 12, 31, 10, 0, tzinfo=UTC)
    assert await allocate_decision_number(counters, "92137", COLLEGE, december) == "COL/2025/0001"
    assert await allocate_decision_number(counters, "92137", COLLEGE, december) == "COL/2025/0002"
    assert await allocate_decision_number(counters, "92137", COLLEGE, new_year) == "COL/2026/0001"
    assert await allocate_decision_number(counters, "62063", COLLEGE, december) == "COL/2025/0001"


def test_items_must_use_the_configurations_categories_and_services() -> None:
    assert check_item_fields(COLLEGE, "travaux", "urbanisme") is not None
    assert check_item_fields(COLLEGE, None, "urbanisme") is None
    with pytest.raises(UnknownCategory):
        check_item_fields(COLLEGE, "sport", "urbanisme")
    with pytest.raises(UnknownMeetingConfig) as unknown:
        configuration({"college": COLLEGE}, "council")
    assert "configured: college" in unknown.value.detail


def test_annexes_are_limited_in_size_and_number_and_checked_against_their_md5() -> None:
    pdf = AnnexUpload("Plan", "plan.pdf", "application/pdf", b"%PDF-1.4")
    check_annexes((pdf,))
    check_annexes((AnnexUpload("Plan", "plan.pdf", "application/pdf", b"%PDF-1.4", pdf.md5),))
    with pytest.raises(AnnexTooLarge):
        check_annexes(
            (AnnexUpload("Big", "b.pdf", "application/pdf", b"0" * (MAX_ANNEX_BYTES + 1)),)
        )
    with pytest.raises(TooManyAnnexes):
        check_annexes((pdf,) * 11)
    with pytest.raises(AnnexChecksumMismatch):
        check_annexes((AnnexUpload("Plan", "p.pdf", "application/pdf", b"x", "0" * 32),))


def test_the_text_limits_are_the_columns_lengths() -> None:
    # A limit above its column let PostgreSQL refuse the insert: a 500.
    items, annexes = Item.__table__.columns, Annex.__table__.columns
    assert items["external_identifier"].type.length == MAX_EXTERNAL_IDENTIFIER
    assert items["proposing_service"].type.length == MAX_PROPOSING_SERVICE
    assert items["concerned_party_name"].type.length == MAX_CONCERNED_PARTY_NAME
    assert annexes["filename"].type.length == MAX_ANNEX_FILENAME
    with pytest.raises(TextTooLong, match="has 201 characters; it takes at most 200"):
        check_length("externalIdentifier", "x" * 201, MAX_EXTERNAL_IDENTIFIER)
    check_length("externalIdentifier", "x" * 200, MAX_EXTERNAL_IDENTIFIER)


def test_a_concerned_party_is_normalised_and_checked() -> None:
    person = ConcernedParty.model_validate({"kind": "person", "identifier": "85.07.30-033.28"})
    assert person.identifier == "85073003328"
    company = ConcernedParty.model_validate({"kind": "enterprise", "identifier": "BE 0403.170.701"})
    assert company.identifier == "0403170701"
    with pytest.raises(ValidationError):
        ConcernedParty.model_validate({"kind": "person", "identifier": "0403170701"})


# -- the tenant file -------------------------------------------------------------------------


def test_the_meeting_block_expands_secrets_and_refuses_shared_usernames() -> None:
    block = {
        "configurations": [COLLEGE.model_dump()],
        "ws4pm_clients": [{"username": "urban", "password": "${WS4PM_SECRET:-default-secret}"}],
    }
    settings = load_meeting_settings({"92137": tenant(block)}, environ={})
    assert settings["92137"].ws4pm_clients[0].password == "default-secret"
    from_env = load_meeting_settings({"92137": tenant(block)}, environ={"WS4PM_SECRET": "s3cret!!"})
    assert from_env["92137"].ws4pm_clients[0].password == "s3cret!!"
    with pytest.raises(TenantConfigError, match="also used by tenant 92137"):
        load_meeting_settings({"92137": tenant(block), "62063": tenant(block, "62063")}, environ={})
    with pytest.raises(TenantConfigError, match="decision_prefix"):
        load_meeting_settings(
            {
                "92137": tenant(
                    {"configurations": [{**COLLEGE.model_dump(), "decision_prefix": "x/"}]}
                )
            },
            environ={},
        )
    assert load_meeting_settings({"92137": tenant(None)}, environ={})["92137"].configurations == {}


def test_two_configurations_of_a_tenant_may_not_share_a_decision_prefix() -> None:
    council = {**COLLEGE.model_dump(), "id": "council", "kind": "council", "title": "Conseil"}
    shared = tenant({"configurations": [COLLEGE.model_dump(), council]})
    with pytest.raises(TenantConfigError) as refused:
        load_meeting_settings({"92137": shared}, environ={})
    assert "configurations 'college' and 'council' both have decision_prefix 'COL'" in str(
        refused.value
    )
    assert "92137.yaml: services.meeting" in str(refused.value)
    # Another tenant's configuration may use the prefix: numbers are unique per tenant.
    own = tenant({"configurations": [council]}, "62063")
    other = tenant({"configurations": [COLLEGE.model_dump()]})
    assert load_meeting_settings({"92137": other, "62063": own}, environ={})


def test_the_repositorys_tenant_files_have_valid_meeting_blocks() -> None:
    from kernel.settings import HubSettings
    from kernel.tenants import load_tenants

    settings = load_meeting_settings(load_tenants(HubSettings().tenants_dir), environ={})
    for tenant_meetings in settings.values():
        assert {"college", "council"} <= set(tenant_meetings.configurations)


# -- WS4PM requests -------------------------------------------------------------------------


def soap(body: str, namespace: str = "http://ws4pm.imio.be") -> bytes:
    return (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:pm="{namespace}"><s:Body>{body}</s:Body></s:Envelope>'
    ).encode()


def create_item_request(encoded_annex: str) -> bytes:
    return soap(
        "<pm:createItemRequest><meetingConfigId>college</meetingConfigId>"
        "<proposingGroupId>urbanisme</proposingGroupId><creationData><title>T</title>"
        "<annexes><title>Plans</title><filename>plans.pdf</filename>"
        f"<file>{encoded_annex}</file></annexes></creationData></pm:createItemRequest>"
    )


def test_a_valid_ws4pm_request_yields_its_operation_element_and_its_annexes() -> None:
    read = read_request(create_item_request(base64.b64encode(b"%PDF").decode()))
    assert read.operation.findtext("creationData/title") == "T"
    assert [annex.content for annex in read.annexes] == [b"%PDF"]


def test_ws4pm_annexes_are_decoded_on_one_line_or_wrapped_and_refused_when_not_base64() -> None:
    content = bytes(range(256)) * 300
    one_line = base64.b64encode(content).decode()
    wrapped = base64.encodebytes(content).decode()  # 76 characters a line, as MIME wraps it
    for encoded in (one_line, wrapped):
        (annex,) = read_request(create_item_request(encoded)).annexes
        assert (annex.filename, annex.media_type, annex.content) == (
            "plans.pdf",
            "application/pdf",
            content,
        )
        assert annex.md5 == hashlib.md5(content).hexdigest()
    # The schema does not see the annexes' text (see read_request): the decoder refuses it.
    for broken in (one_line[:-2], one_line[:100] + "*" + one_line[101:], "é" + one_line):
        with pytest.raises(Ws4pmFault) as fault:
            read_request(create_item_request(broken))
        assert "annex 'plans.pdf': file is not valid base64" in fault.value.message


def test_a_ws4pm_annex_file_with_elements_inside_is_refused_by_the_schema() -> None:
    with pytest.raises(Ws4pmFault) as fault:
        read_request(create_item_request("<b>JVBERg==</b>"))
    assert "does not match the WS4PM contract" in fault.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (soap("<pm:testConnectionRequest/>", "http://other.example"), "WS4PM operations are in"),
        (soap("<pm:deleteItemRequest/>"), "unknown or unsupported operation"),
        (soap("<pm:checkIsLinkedRequest/>"), "externalIdentifier"),
        (
            soap(
                "<pm:createItemRequest><meetingConfigId>c</meetingConfigId></pm:createItemRequest>"
            ),
            "proposingGroupId",
        ),
        (b'<!DOCTYPE d [<!ENTITY a "aaaa">]>' + soap("<pm:testConnectionRequest/>"), "DOCTYPE"),
        (b"<Envelope/>", "expected a SOAP 1.1 Envelope"),
        (b"<<<", "not well-formed"),
        (soap(""), "exactly one operation"),
    ],
)
def test_bad_ws4pm_requests_are_refused_with_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(Ws4pmFault) as fault:
        read_request(body)
    assert message in fault.value.message
