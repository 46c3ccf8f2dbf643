"""``hub invoice validate``: findings per file, JSON lines, exit codes, XSD and Schematron."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hub.cli import app
from services.factures import validation
from services.factures.rules.engine import Element, Finding
from services.factures.schemas import (
    SCHEMATRON_VARIABLE,
    XSD_DIR_VARIABLE,
    SchemaUnavailable,
    xsd_findings,
)
from services.factures.ubl import parse_document

MINIMAL_INVOICE = b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>'
CII_INVOICE = (
    b'<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:'
    b'CrossIndustryInvoice:100"/>'
)
BILLION_LAUGHS = (
    b'<!DOCTYPE Invoice [<!ENTITY a "aaaaaaaaaa">'
    + b"".join(f'<!ENTITY {chr(98 + n)} "{f"&{chr(97 + n)};" * 10}">'.encode() for n in range(8))
    + b']><Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&i;</Invoice>'
)
BR_CO_15 = Finding("BR-CO-15", "fatal", "Total with VAT must be ...", "/Invoice")
PEPPOL_WARNING = Finding("PEPPOL-EN16931-R002", "warning", "No more than one note", "/Invoice")


@pytest.fixture(autouse=True)
def no_optional_artefacts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test configures XSD and Schematron itself, whatever the developer's shell says."""
    monkeypatch.delenv(XSD_DIR_VARIABLE, raising=False)
    monkeypatch.delenv(SCHEMATRON_VARIABLE, raising=False)


def rules_finding(monkeypatch: pytest.MonkeyPatch, *findings: Finding) -> None:
    """Replace the business rules (written elsewhere) by ones that find exactly ``findings``."""

    def fake_rules(root: Element) -> list[Finding]:
        return list(findings)

    monkeypatch.setattr(validation, "validate", fake_rules)


def run(*arguments: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(app, ["invoice", "validate", "--json", *arguments])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()]


def write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_a_valid_file_gives_a_valid_json_line_and_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch)
    exit_code, lines = run(write(tmp_path, "ok.xml", MINIMAL_INVOICE))
    assert exit_code == 0
    assert lines == [{"file": str(tmp_path / "ok.xml"), "valid": True, "findings": []}]


def test_warnings_alone_leave_a_file_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules_finding(monkeypatch, PEPPOL_WARNING)
    exit_code, lines = run(write(tmp_path, "ok.xml", MINIMAL_INVOICE))
    assert exit_code == 0
    assert lines[0]["valid"] is True
    assert lines[0]["findings"] == [PEPPOL_WARNING.as_json()]


def test_a_fatal_rule_finding_makes_the_file_invalid_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch, BR_CO_15)
    ok = write(tmp_path, "first.xml", MINIMAL_INVOICE)
    exit_code, lines = run(ok, ok)
    assert exit_code == 1
    assert [line["file"] for line in lines] == [ok, ok]
    assert lines[0] == {
        "file": ok,
        "valid": False,
        "findings": [
            {
                "rule": "BR-CO-15",
                "flag": "fatal",
                "message": "Total with VAT must be ...",
                "location": "/Invoice",
            }
        ],
    }


def test_a_cii_invoice_is_invalid_as_unsupported_syntax(tmp_path: Path) -> None:
    exit_code, [line] = run(write(tmp_path, "cii.xml", CII_INVOICE))
    assert exit_code == 1
    assert line["valid"] is False
    [finding] = line["findings"]
    assert finding["rule"] == "unsupported-syntax"
    assert finding["flag"] == "fatal"
    assert finding["location"] == "/"
    assert "send UBL" in finding["message"]


def test_an_entity_bomb_is_invalid_as_entity_forbidden(tmp_path: Path) -> None:
    exit_code, [line] = run(write(tmp_path, "bomb.xml", BILLION_LAUGHS))
    assert exit_code == 1
    assert [finding["rule"] for finding in line["findings"]] == ["entity-forbidden"]


def test_a_missing_file_exits_2_and_the_others_are_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch, BR_CO_15)
    invalid = write(tmp_path, "invalid.xml", MINIMAL_INVOICE)
    missing = str(tmp_path / "missing.xml")
    exit_code, lines = run(missing, invalid)
    assert exit_code == 2
    assert lines[0]["file"] == missing
    assert lines[0]["valid"] is False
    assert [finding["rule"] for finding in lines[0]["findings"]] == ["unreadable"]
    assert lines[1]["file"] == invalid


def test_an_unreadable_file_exits_2(tmp_path: Path) -> None:
    exit_code, [line] = run(str(tmp_path))  # a directory cannot be read as a file
    assert exit_code == 2
    assert line["valid"] is False


def test_the_human_form_shows_each_finding_or_says_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch)
    # Short relative names: Rich wraps lines at 80 columns when stdout is no terminal,
    # and a long temporary path would split the line the test looks for.
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "valid.xml", MINIMAL_INVOICE)
    write(tmp_path, "cii.xml", CII_INVOICE)
    valid, cii = "valid.xml", "cii.xml"
    result = CliRunner().invoke(app, ["invoice", "validate", valid, cii], terminal_width=200)
    assert result.exit_code == 1
    assert f"{valid}: valid" in result.stdout
    assert f"{cii}: invalid" in result.stdout
    assert "unsupported-syntax" in result.stdout
    assert "This is a UN/CEFACT CII invoice" in result.stdout


# The UBL 2.1 XSD (from the corpus) -------------------------------------------------------


@pytest.fixture
def ubl_xsd(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = corpus / "einvoice" / "ubl-2.1-xsd"
    monkeypatch.setenv(XSD_DIR_VARIABLE, str(folder))
    return folder


def test_corpus_examples_are_xsd_valid(ubl_xsd: Path, corpus: Path) -> None:
    examples = sorted((corpus / "einvoice" / "peppol-examples").glob("*.xml"))
    assert any("creditnote" in path.name for path in examples)
    for path in examples:
        assert xsd_findings(parse_document(path.read_bytes())) == [], path.name


def test_a_corrupted_example_gives_fatal_ubl_xsd_findings_where_it_is_wrong(
    ubl_xsd: Path, corpus: Path
) -> None:
    example = (corpus / "einvoice" / "peppol-examples" / "base-example.xml").read_bytes()
    corrupted = example.replace(b"<cbc:IssueDate>2017-11-13<", b"<cbc:IssueDate>13/11/2017<", 1)
    assert corrupted != example
    findings = xsd_findings(parse_document(corrupted))
    assert [(f.rule, f.flag, f.location) for f in findings] == [
        ("UBL-XSD", "fatal", "/Invoice/cbc:IssueDate")
    ]
    assert "13/11/2017" in findings[0].message


def test_the_cli_reports_xsd_findings_when_configured(
    ubl_xsd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch)
    exit_code, [line] = run(write(tmp_path, "bare.xml", MINIMAL_INVOICE))
    assert exit_code == 1
    assert {finding["rule"] for finding in line["findings"]} == {"UBL-XSD"}


def test_a_misconfigured_xsd_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(XSD_DIR_VARIABLE, str(tmp_path))
    result = CliRunner().invoke(
        app, ["invoice", "validate", write(tmp_path, "a.xml", MINIMAL_INVOICE)]
    )
    assert result.exit_code == 2
    assert "UBL-Invoice-2.1.xsd" in result.stderr


def test_xsd_imports_outside_the_xsd_folder_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere.xsd"
    outside.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:x"/>'
    )
    maindoc = tmp_path / "xsd" / "maindoc"
    maindoc.mkdir(parents=True)
    (maindoc / "UBL-Invoice-2.1.xsd").write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"'
        ' targetNamespace="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'
        f'<xs:import namespace="urn:x" schemaLocation="{outside.as_uri()}"/></xs:schema>'
    )
    monkeypatch.setenv(XSD_DIR_VARIABLE, str(tmp_path / "xsd"))
    with pytest.raises(SchemaUnavailable, match=r"elsewhere\.xsd"):
        xsd_findings(parse_document(MINIMAL_INVOICE))


# Compiled Schematron through Saxon -------------------------------------------------------

# A stand-in for a compiled Schematron: XSLT 3.0 that reports, in SVRL, a missing
# buyer reference (fatal) and a missing note (warning).
COMPILED_SCHEMATRON = """<xsl:stylesheet version="3.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:svrl="http://purl.oclc.org/dsdl/svrl"
    xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <xsl:template match="/">
    <svrl:schematron-output>
      <svrl:fired-rule context="/*"/>
      <xsl:if test="not(*/cbc:BuyerReference)">
        <svrl:failed-assert id="TEST-R003" flag="fatal" location="/{local-name(*)}">
          <svrl:text>A buyer reference
            MUST be provided.</svrl:text>
        </svrl:failed-assert>
      </xsl:if>
      <xsl:if test="not(*/cbc:Note)">
        <svrl:failed-assert id="TEST-R008" flag="warning" location="/{local-name(*)}">
          <svrl:text>A note is recommended.</svrl:text>
        </svrl:failed-assert>
      </xsl:if>
    </svrl:schematron-output>
  </xsl:template>
</xsl:stylesheet>
"""


def test_compiled_schematron_failed_asserts_become_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules_finding(monkeypatch)
    stylesheet = tmp_path / "buyer-reference.xsl"
    stylesheet.write_text(COMPILED_SCHEMATRON)
    monkeypatch.setenv(SCHEMATRON_VARIABLE, str(stylesheet))
    without_reference = write(tmp_path, "bare.xml", MINIMAL_INVOICE)
    with_reference = write(
        tmp_path,
        "referenced.xml",
        MINIMAL_INVOICE.replace(
            b"/>",
            b'><cbc:BuyerReference xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:'
            b'CommonBasicComponents-2">4025:123</cbc:BuyerReference></Invoice>',
        ),
    )
    exit_code, lines = run(without_reference, with_reference)
    assert exit_code == 1
    assert lines[0]["findings"] == [
        {
            "rule": "TEST-R003",
            "flag": "fatal",
            "message": "A buyer reference MUST be provided.",
            "location": "/Invoice",
        },
        {
            "rule": "TEST-R008",
            "flag": "warning",
            "message": "A note is recommended.",
            "location": "/Invoice",
        },
    ]
    assert lines[1]["valid"] is True
    assert [finding["rule"] for finding in lines[1]["findings"]] == ["TEST-R008"]


def test_a_wrong_setting_is_one_line_naming_its_variable_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUB_KAFKA_FETCH_WAIT_MS", "abc")
    result = CliRunner().invoke(app, ["token", "--tenant", "92137", "--scope", "courrier:write"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("hub: HUB_KAFKA_FETCH_WAIT_MS: Input should be")
    assert "Traceback" not in result.output


def test_hub_token_refuses_when_an_oidc_provider_issues_the_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUB_JWKS_URL", "https://idp.example/jwks")
    without_issuer = CliRunner().invoke(app, ["token", "--tenant", "92137", "--scope", "x:y"])
    assert without_issuer.exit_code == 2
    assert "HUB_JWT_ISSUER must name that provider's issuer" in without_issuer.output

    monkeypatch.setenv("HUB_JWT_ISSUER", "https://idp.example/realms/hub")
    refused = CliRunner().invoke(app, ["token", "--tenant", "92137", "--scope", "x:y"])
    assert refused.exit_code == 2
    assert "accepts only your OIDC provider's tokens" in refused.output
