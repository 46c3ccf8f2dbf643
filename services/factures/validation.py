"""One received document's bytes to its findings: the path shared by the CLI and the API."""

from __future__ import annotations

from services.factures.rules import validate
from services.factures.rules.engine import Finding
from services.factures.schemas import schematron_findings, xsd_findings
from services.factures.ubl import DocumentRejected, UblDocument, parse_document


def check_document(data: bytes) -> tuple[UblDocument | None, list[Finding]]:
    """The parsed document (None when refused) and every finding on it.

    A refused document has one fatal finding named after the refusal code, at
    "/"; an accepted one gets the UBL schema (if configured), the business rules
    and the compiled Schematron (if configured), in that order.
    """
    try:
        document = parse_document(data)
    except DocumentRejected as rejection:
        return None, [Finding(rejection.code, "fatal", rejection.message, "/")]
    findings = xsd_findings(document) + validate(document.root) + schematron_findings(document)
    return document, findings


def is_valid(findings: list[Finding]) -> bool:
    """Valid means no fatal finding; warnings are reported but accepted."""
    return not any(finding.flag == "fatal" for finding in findings)
