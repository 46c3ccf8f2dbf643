"""Optional checks against official artefacts, each switched on by an environment variable.

- ``FACTURES_UBL_XSD_DIR``: the OASIS UBL 2.1 XSD folder (``maindoc/``,
  ``common/``); every Invoice and CreditNote is validated against its main
  schema and each error becomes a fatal ``UBL-XSD`` finding.
- ``FACTURES_SCHEMATRON_XSLT``: compiled Schematron stylesheets (XSLT 2.0/3.0,
  as the CEN and OpenPeppol releases ship them), separated by ``os.pathsep``.
  Each runs through Saxon-HE and each SVRL ``failed-assert`` becomes a finding.

Unset, both return no findings: the Python business rules stand alone. Schemas
and stylesheets are compiled once per process.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from services.factures.rules.engine import Finding, Flag, location_of
from services.factures.ubl import DocumentKind, UblDocument

XSD_DIR_VARIABLE = "FACTURES_UBL_XSD_DIR"
SCHEMATRON_VARIABLE = "FACTURES_SCHEMATRON_XSLT"
_MAIN_SCHEMA = {
    "Invoice": Path("maindoc", "UBL-Invoice-2.1.xsd"),
    "CreditNote": Path("maindoc", "UBL-CreditNote-2.1.xsd"),
}
_SVRL = {"svrl": "http://purl.oclc.org/dsdl/svrl"}
_xsd_lock = threading.Lock()


class SchemaUnavailable(RuntimeError):
    """A configured XSD folder or Schematron stylesheet that cannot be loaded."""


def xsd_findings(document: UblDocument) -> list[Finding]:
    """The UBL 2.1 schema errors of ``document``; none when no XSD folder is configured."""
    folder = os.environ.get(XSD_DIR_VARIABLE)
    if not folder:
        return []
    schema = _main_schema(Path(folder).resolve(), document.kind)
    # A schema keeps the error log of its last validation: validations take turns.
    with _xsd_lock:
        if schema.validate(document.root):
            return []
        errors = list(schema.error_log)
    return [
        Finding("UBL-XSD", "fatal", error.message, _xsd_location(document.root, error))
        for error in errors
    ]


def schematron_findings(document: UblDocument) -> list[Finding]:
    """The failed assertions of every configured compiled Schematron on ``document``."""
    configured = os.environ.get(SCHEMATRON_VARIABLE, "")
    paths = [Path(entry).resolve() for entry in configured.split(os.pathsep) if entry]
    if not paths:
        return []
    findings: list[Finding] = []
    for path in paths:
        findings.extend(run_compiled_schematron(path, document))
    return findings


def run_compiled_schematron(path: Path, document: UblDocument | etree._Element) -> list[Finding]:
    """The failed assertions of the compiled Schematron at ``path`` on ``document`` (or a root).

    The stylesheet is compiled on first use and kept; raises ``SchemaUnavailable``
    when it cannot be loaded.
    """
    root = document.root if isinstance(document, UblDocument) else document
    source = etree.tostring(root, encoding="unicode")
    return _failed_asserts(_run_stylesheet(path.resolve(), source))


class _LocalFilesOnly(etree.Resolver):  # type: ignore[misc]  # lxml ships no type hints
    """Lets xsd:import and xsd:include read files inside the XSD folder and nothing else."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        local = system_url.removeprefix("file://")
        target = Path(local).resolve()
        if "://" in local or not target.is_relative_to(self.folder):
            raise SchemaUnavailable(f"the UBL schemas import {system_url}, outside {self.folder}")
        return self.resolve_filename(str(target), context)


@cache
def _main_schema(folder: Path, kind: DocumentKind) -> etree.XMLSchema:
    path = folder / _MAIN_SCHEMA[kind]
    if not path.is_file():
        raise SchemaUnavailable(f"{XSD_DIR_VARIABLE}={folder} has no {_MAIN_SCHEMA[kind]}")
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    parser.resolvers.add(_LocalFilesOnly(folder))
    try:
        return etree.XMLSchema(etree.parse(str(path), parser))
    except etree.XMLSchemaParseError as error:
        raise SchemaUnavailable(f"cannot load {path}: {error}") from error


def _xsd_location(root: etree._Element, error: Any) -> str:
    """The error's node in the rules' notation when its path resolves, else what libxml2 says."""
    path = error.path or ""
    namespaces = {prefix: uri for prefix, uri in root.nsmap.items() if prefix}
    try:
        nodes = root.getroottree().xpath(path, namespaces=namespaces) if path else []
    except etree.XPathError:
        nodes = []
    if nodes and isinstance(nodes[0], etree._Element):
        return location_of(nodes[0])
    return path or f"line {error.line}"


# Saxon-HE runs in one embedded JVM-like isolate per process; its processor is made
# once, and compiled stylesheets are not thread-safe, so transformations take turns.
_saxon_lock = threading.Lock()


@cache
def _saxon() -> Any:
    from saxonche import PySaxonProcessor

    return PySaxonProcessor(license=False)


@cache
def _stylesheet(path: Path) -> Any:
    from saxonche import PySaxonApiError

    if not path.is_file():
        raise SchemaUnavailable(f"{SCHEMATRON_VARIABLE} names {path}, which does not exist")
    try:
        return _saxon().new_xslt30_processor().compile_stylesheet(stylesheet_file=str(path))
    except PySaxonApiError as error:
        raise SchemaUnavailable(f"cannot compile {path}: {error}") from error


def _run_stylesheet(path: Path, source: str) -> bytes:
    with _saxon_lock:
        stylesheet = _stylesheet(path)
        node = _saxon().parse_xml(xml_text=source, encoding="UTF-8")
        result: str = stylesheet.transform_to_string(xdm_node=node)
    return result.encode("utf-8")


def _failed_asserts(svrl: bytes) -> list[Finding]:
    report = etree.fromstring(svrl, etree.XMLParser(resolve_entities=False, no_network=True))
    return [
        Finding(
            rule=failed.get("id") or "schematron",
            flag=_flag(failed.get("flag")),
            message=" ".join("".join(failed.xpath("svrl:text//text()", namespaces=_SVRL)).split()),
            location=failed.get("location") or "/",
        )
        for failed in report.iterfind(".//svrl:failed-assert", _SVRL)
    ]


def _flag(value: str | None) -> Flag:
    # Schematron leaves @flag free; the official EN 16931 and Peppol artefacts use
    # "fatal" and "warning", and an assertion without a flag is an error.
    return "warning" if value in {"warning", "information"} else "fatal"
