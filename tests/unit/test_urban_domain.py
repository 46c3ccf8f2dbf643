"""The rules of permit files (services/urban/domain.py) and the tenant file's urban block."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from contracts.events.urban import (
    DECISION_PARTY_NAME_LENGTH,
    DECISION_TEXT_LENGTH,
    Applicant,
    DecisionConcernedParty,
    DecisionNeeded,
)
from gateway.connectors.notice import NoticeSettings
from kernel.settings import REPOSITORY_ROOT
from kernel.tenants import Tenant, TenantConfigError, load_tenants
from services.meeting import domain as meeting
from services.urban.configuration import load_urban_settings
from services.urban.domain import (
    REFERENCE_PATTERN,
    IdentityStatus,
    InvalidCapakey,
    InvalidIdentifier,
    UnknownFileType,
    check_applicant,
    check_capakey,
    check_file_type,
    comparable,
    format_reference,
    identity_status,
    split_declared_name,
)

NISS = "85073003328"


@pytest.mark.parametrize(
    "capakey", ["25015A0123/00B000", "92137C0456/02_012", " 25015a0123/00b000"]
)
def test_a_capakey_reads_division_section_radical_bis_exposant_puissance(capakey: str) -> None:
    assert check_capakey(capakey) == capakey.strip().upper()


@pytest.mark.parametrize(
    "capakey",
    [
        "25015A0123/00B00",
        "2501A0123/00B000",
        "25015A0123-00B000",
        "250151012300B000",
        "25015A0123/0BB000",
        "",
    ],
)
def test_a_malformed_capakey_is_refused_with_its_anatomy(capakey: str) -> None:
    with pytest.raises(InvalidCapakey) as caught:
        check_capakey(capakey)
    assert caught.value.slug == "invalid-capakey"
    assert "division (5 digits)" in caught.value.detail


def test_applicants_identifiers_are_checked_modulo_97_and_reduced_to_digits() -> None:
    person = Applicant(kind="person", identifier="85.07.30-033.28", name="Dupont, Marie")
    assert check_applicant(person).identifier == NISS
    company = Applicant(kind="enterprise", identifier="BE 0403.170.701", name="SA Construct")
    assert check_applicant(company).identifier == "0403170701"
    with pytest.raises(InvalidIdentifier) as caught:
        check_applicant(person.model_copy(update={"identifier": "85073003329"}))
    assert caught.value.slug == "invalid-national-number"
    with pytest.raises(InvalidIdentifier) as caught:
        check_applicant(company.model_copy(update={"identifier": "0403170702"}))
    assert caught.value.slug == "invalid-enterprise-number"


def test_an_unknown_file_type_is_refused_by_name() -> None:
    assert check_file_type("permis_unique") == "permis_unique"
    with pytest.raises(UnknownFileType) as caught:
        check_file_type("permis_de_bâtir")
    assert "permis_de_bâtir" in caught.value.detail


def test_references_read_prefix_year_sequence() -> None:
    assert format_reference("permis_urbanisme", 2026, 12) == "PU/2026/0012"
    assert REFERENCE_PATTERN.match(format_reference("declaration_classe_3", 2026, 12345))
    assert not REFERENCE_PATTERN.match("COL/2026/0012")


# -- identities ---------------------------------------------------------------------------


def test_a_declared_name_splits_at_its_comma() -> None:
    assert split_declared_name("Dupont, Marie") == ("Dupont", "Marie")
    assert split_declared_name("Dupont") == ("Dupont", None)


def test_names_compare_without_case_accents_or_hyphens() -> None:
    assert comparable("Lefèvre-Dû") == comparable("LEFEVRE DU")
    assert comparable("D'Hondt") == comparable("d hondt")


@pytest.mark.parametrize(
    ("declared", "answer", "status"),
    [
        (("Lefèvre", "Hélène"), {"last_name": "LEFEVRE", "first_names": "Helene Marie"}, "matched"),
        (("Lefèvre", None), {"last_name": "Lefevre", "first_names": "Hélène"}, "matched"),
        (("Lefèvre", "Marie"), {"last_name": "Lefèvre", "first_names": "Hélène Marie"}, "mismatch"),
        (("Dupont", "Hélène"), {"last_name": "Lefèvre", "first_names": "Hélène"}, "mismatch"),
        (("Dupont", "Jean"), {"status": "not_found", "last_name": None}, "not_found"),
    ],
)
def test_a_declared_identity_is_compared_with_the_registers(
    declared: tuple[str, str | None], answer: dict[str, str | None], status: str
) -> None:
    assert identity_status(declared[0], declared[1], answer) == IdentityStatus(status)


# -- the tenant file's urban block ------------------------------------------------------------


def test_the_committed_tenants_have_distinct_notice_instances() -> None:
    settings = load_urban_settings(load_tenants(REPOSITORY_ROOT / "config" / "tenants"), {})
    instances = [tenant.notice_instance for tenant in settings.values()]
    assert all(instances) and len(set(instances)) == len(instances)


def _tenant(code: str, urban: object) -> Tenant:
    return Tenant(code, code, Path(f"{code}.yaml"), {"services": {"urban": urban}})


def test_two_tenants_cannot_share_a_notice_instance(tmp_path: Path) -> None:
    for code in ("92137", "62063"):
        (tmp_path / f"{code}.yaml").write_text(
            f'tenant: "{code}"\nname: Commune {code}\nnotice: {{instance: X}}\n'
        )
    with pytest.raises(TenantConfigError, match="NOTICe instance 'X'"):
        load_tenants(tmp_path)


@pytest.mark.parametrize("instance", ["NOTICE 92137", "NOTICE/92137", "N" * 41, ""])
def test_a_notice_instance_the_contract_refuses_is_refused_at_start(
    tmp_path: Path, instance: str
) -> None:
    # A segment of NOTICe's listing path: refused there at every poll, seen only in a log.
    (tmp_path / "92137.yaml").write_text(
        f'tenant: "92137"\nname: Sambreville\nnotice: {{instance: "{instance}"}}\n'
    )
    with pytest.raises(TenantConfigError, match="1 to 40 letters, digits or hyphens"):
        load_tenants(tmp_path)


def test_polled_instances_the_contract_refuses_are_refused_at_start() -> None:
    settings = {"type": "notice", "base_url": "http://notice.test", "api_key": "k"}
    assert NoticeSettings(**settings, poll_instances=["NOTICE-62063"]).poll_instances
    with pytest.raises(ValidationError, match=r"poll_instances\.0"):
        NoticeSettings(**settings, poll_instances=["NOTICE 62063"])


def test_a_wrong_urban_block_names_its_field() -> None:
    with pytest.raises(TenantConfigError, match="warning_days"):
        load_urban_settings({"92137": _tenant("92137", {"warning_days": -1})}, {})
    defaults = load_urban_settings({"92137": _tenant("92137", None)}, {})["92137"]
    assert (defaults.notice_instance, defaults.warning_days) == (None, 5)
    assert defaults.decision.meeting_config == "college"


def _longest(model: type[BaseModel], field: str) -> int | None:
    limits = [getattr(m, "max_length", None) for m in model.model_fields[field].metadata]
    return next((limit for limit in limits if limit is not None), None)


def test_a_decision_request_takes_no_longer_texts_than_meetings_item() -> None:
    # Longer than the item takes, meeting parks the request, unplaced: the file waits for ever.
    assert (DECISION_PARTY_NAME_LENGTH, DECISION_TEXT_LENGTH) == (
        meeting.MAX_CONCERNED_PARTY_NAME,
        meeting.MAX_ITEM_TEXT,
    )
    assert _longest(DecisionConcernedParty, "name") == meeting.MAX_CONCERNED_PARTY_NAME
    assert {
        field: _longest(DecisionNeeded, field)
        for field in ("title", "proposing_service", "external_identifier", "description")
    } == {
        "title": meeting.MAX_ITEM_TITLE,
        "proposing_service": meeting.MAX_PROPOSING_SERVICE,
        "external_identifier": meeting.MAX_EXTERNAL_IDENTIFIER,
        "description": meeting.MAX_ITEM_TEXT,
    }
    assert _longest(DecisionNeeded, "motivation") == meeting.MAX_ITEM_TEXT
