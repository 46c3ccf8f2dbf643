"""Simulated Stésud accounting: watches the drop directory, books files, writes acknowledgements.

It follows the modelled contract ``contracts/vendors/stesud-file-exchange.md``
(and ``.xsd``). A background task of the sandbox scans
``<drop>/<administration>/in/*.xml`` and, for each file:

- checks it is well-formed and valid against the schema, and that its
  ``administration`` is its directory's (else ``INVALID_FILE`` or
  ``WRONG_ADMINISTRATION``);
- refuses suppliers absent from the supplier file
  (``sandbox/fixtures/accounting_suppliers.yaml``: ``UNKNOWN_SUPPLIER``) and
  an invoice number of a supplier already booked (``DUPLICATE_INVOICE``);
- otherwise books it under ``STS-<administration>-<year>-<n>``;
- writes ``out/<stem>.ack.xml`` (temporary file, then rename) and moves the
  file to ``done/``.

The drop directory is ``STESUD_DROP_DIR``, by default ``<HUB_VAR_DIR>/stesud``:
the gateway's ``stesud`` connector uses the same default. Each file is
recorded by the recorder (service ``stesud``, keyed by file name). The faults
set for ``stesud`` apply to each file at each scan, as to a request elsewhere:
``latency_ms`` and ``timeout_rate`` delay its processing, and ``error_rate``
leaves it unanswered in ``in/`` until a later scan (an unavailable Stésud).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernel.settings import REPOSITORY_ROOT, HubSettings
from sandbox.inforius import load_unknown_suppliers
from sandbox.recorder import Recorder

log = logging.getLogger(__name__)
SERVICE = "stesud"
NAMESPACE = "urn:hub:vendors:stesud:exchange:1"
SCHEMA_PATH = REPOSITORY_ROOT / "contracts" / "vendors" / "stesud-file-exchange.xsd"
_NS = {"s": NAMESPACE}
_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class StesudSandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")
    drop_dir: Path | None = Field(default=None, validation_alias="STESUD_DROP_DIR")
    poll_seconds: float = 0.2

    @field_validator("drop_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value


class Rejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class StesudSandbox:
    def __init__(self, drop_dir: Path, recorder: Recorder) -> None:
        self.drop_dir = drop_dir
        self._recorder = recorder
        self._schema = etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))
        self._unknown_suppliers = load_unknown_suppliers()
        #: (administration, supplier VAT, invoice number) → booking reference
        self._booked: dict[tuple[str, str, str], str] = {}

    @classmethod
    def from_settings(cls, settings: HubSettings, recorder: Recorder) -> StesudSandbox:
        drop_dir = StesudSandboxSettings().drop_dir or settings.var_dir / "stesud"
        return cls(drop_dir, recorder)

    async def run(self, poll_seconds: float | None = None) -> None:
        pause = poll_seconds if poll_seconds is not None else StesudSandboxSettings().poll_seconds
        while True:
            try:
                await self.process_pending()
            except Exception:
                log.exception("the Stésud sandbox failed a scan; scanning again")
            await asyncio.sleep(pause)

    async def process_pending(self) -> int:
        files = await asyncio.to_thread(lambda: sorted(self.drop_dir.glob("*/in/*.xml")))
        for path in files:
            if await self._recorder.inject_faults(SERVICE, path.name):
                continue  # Stésud "unavailable": the file waits for a later scan
            answer = await asyncio.to_thread(self.process, path)
            if answer is not None:
                # Recorded here, on the event loop, not in the worker thread: the control
                # views iterate the recorder on the loop, and a thread adding to it
                # meanwhile breaks their iteration.
                self._recorder.record(
                    SERVICE,
                    path.name,
                    tenant=path.parent.parent.name,
                    answer=answer,
                    traceparent=None,
                    summary={"file": path.name},
                )
        return len(files)

    def process(self, path: Path) -> dict[str, str] | None:
        """Book the file and acknowledge it; the answer, or None if it was answered before."""
        administration_dir = path.parent.parent
        administration = administration_dir.name
        acknowledgement = administration_dir / "out" / (path.stem + ".ack.xml")
        answer = None
        if not acknowledgement.exists():
            answer = self._answer(path, administration)
            _write_atomically(acknowledgement, _acknowledgement_xml(path.name, answer))
        done = administration_dir / "done"
        done.mkdir(exist_ok=True)
        os.replace(path, done / path.name)
        return answer

    def _answer(self, path: Path, administration: str) -> dict[str, str]:
        try:
            reference = self._book(path.read_bytes(), administration)
        except Rejected as exc:
            return {"status": "REJECTED", "code": exc.code, "reason": exc.reason}
        return {"status": "BOOKED", "booking_reference": reference}

    def _book(self, content: bytes, administration: str) -> str:
        try:
            root = etree.fromstring(content, parser=_SAFE_PARSER)
        except etree.XMLSyntaxError as exc:
            raise Rejected("INVALID_FILE", f"not well-formed XML: {exc}") from exc
        if not self._schema.validate(root):
            errors = "; ".join(f"line {e.line}: {e.message}" for e in self._schema.error_log)
            raise Rejected("INVALID_FILE", errors[:480])
        if root.get("administration") != administration:
            raise Rejected(
                "WRONG_ADMINISTRATION",
                f"the file books in {root.get('administration')}, but lies in {administration}'s"
                " directory",
            )
        vat = str(root.findtext("s:Supplier/s:VatNumber", namespaces=_NS))
        number = str(root.findtext("s:Number", namespaces=_NS))
        if vat in self._unknown_suppliers:
            raise Rejected(
                "UNKNOWN_SUPPLIER",
                f"the supplier with VAT number {vat} is not in the supplier file of"
                f" administration {administration}",
            )
        invoice = (administration, vat, number)
        if invoice in self._booked:
            raise Rejected(
                "DUPLICATE_INVOICE",
                f"invoice {number} of supplier {vat} is already booked as {self._booked[invoice]}",
            )
        reference = f"STS-{administration}-{datetime.now(UTC).year}-{len(self._booked) + 1:05d}"
        self._booked[invoice] = reference
        return reference


def _acknowledgement_xml(file_name: str, answer: dict[str, str]) -> bytes:
    root = etree.Element(
        f"{{{NAMESPACE}}}Acknowledgement", {"file": file_name}, nsmap={None: NAMESPACE}
    )
    etree.SubElement(root, f"{{{NAMESPACE}}}Status").text = answer["status"]
    if answer["status"] == "BOOKED":
        etree.SubElement(root, f"{{{NAMESPACE}}}BookingReference").text = answer[
            "booking_reference"
        ]
    else:
        reason = etree.SubElement(root, f"{{{NAMESPACE}}}Reason", {"code": answer["code"]})
        reason.text = answer["reason"]
    etree.SubElement(root, f"{{{NAMESPACE}}}ProcessedAt").text = datetime.now(UTC).isoformat(
        timespec="seconds"
    )
    content: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return content


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
