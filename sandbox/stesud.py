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
- writes ``out/<stem>.ack.xml`` (temporary file, then rename), valid against
  the schema (a reason is cut to the schema's 500 characters), and moves the
  file to ``done/``.

A file whose acknowledgement exists already is only moved, and counted as one
more arrival of its name: the hub wrote it twice. A name outside the schema's
``FileName`` is not part of the exchange (no acknowledgement could name it):
it is left in ``in/`` and logged once. An entry that cannot be read (a
directory named ``*.xml``, a file without read permission) is logged and left
there; the scan goes on with the next ones.

The drop directory is ``STESUD_DROP_DIR``, by default ``<HUB_VAR_DIR>/stesud``:
the gateway's ``stesud`` connector uses the same default. Each file is
recorded by the recorder (service ``stesud``, keyed by file name); clearing
what the sandbox received forgets the booked invoices too. The faults
set for ``stesud`` apply to each file at each scan, as to a request elsewhere:
``latency_ms`` and ``timeout_rate`` delay its processing, and ``error_rate``
leaves it unanswered in ``in/`` until a later scan (an unavailable Stésud).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
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
#: The schema's ``FileName``, which an acknowledgement's ``file`` attribute must match.
FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,120}\.xml")
#: The schema's ``Text``, which a reason is.
MAX_TEXT = 500
#: A reason that fits the schema whatever the file, if the real one made the acknowledgement
#: break it (characters XML cannot carry, say).
FALLBACK_REASON = "the file cannot be booked; its reason cannot be written here"


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
        # A reset of the sandbox forgets the files received: an invoice written again
        # afterwards must be booked afresh, not refused as a duplicate of itself.
        recorder.on_reset(self._booked.clear)
        # Apart from ``_booked``, which a reset clears: a reference is never given twice.
        self._numbers = itertools.count(1)
        #: Entries already logged as skipped, so a scan every 0.2 s does not log them again.
        self._skipped: set[Path] = set()

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
        self._skipped.intersection_update(files)  # gone since: logged again if they come back
        for path in files:
            if not FILE_NAME.fullmatch(path.name):
                # An acknowledgement naming this file would break the schema (its ``file``
                # is a FileName): the file is no part of the exchange, as *.tmp are not.
                self._skip(path, f"its name is not a FileName ({FILE_NAME.pattern})")
                continue
            if await self._recorder.inject_faults(SERVICE, path.name):
                continue  # Stésud "unavailable": the file waits for a later scan
            try:
                answer = await asyncio.to_thread(self.process, path)
            except OSError as exc:
                # One entry that cannot be read must not stop every later file, of every
                # administration, at every scan: it stays, and the scan goes on.
                self._skip(path, f"it cannot be processed: {exc}")
                continue
            self._skipped.discard(path)
            # Recorded here, on the event loop, not in the worker thread: the control views
            # iterate the recorder on the loop, and a thread adding to it meanwhile breaks
            # their iteration.
            first = self._recorder.first(SERVICE, path.name)
            if first is not None:
                # A second copy of a file already answered: the hub wrote it twice, which is
                # exactly what the arrivals must show.
                self._recorder.count_repeat(first)
                continue
            self._recorder.record(
                SERVICE,
                path.name,
                tenant=path.parent.parent.name,
                answer=answer,
                traceparent=None,
                summary={"file": path.name},
            )
        return len(files)

    def _skip(self, path: Path, why: str) -> None:
        if path not in self._skipped:
            self._skipped.add(path)
            log.warning("Stésud sandbox: %s is left in in/: %s", path, why)

    def process(self, path: Path) -> dict[str, str]:
        """Book the file and acknowledge it; the answer, the earlier one if answered before."""
        administration_dir = path.parent.parent
        administration = administration_dir.name
        acknowledgement = administration_dir / "out" / (path.stem + ".ack.xml")
        if acknowledgement.exists():
            # Only moved (the contract): what it answered is shown if the recorder forgot it.
            answer = _answer_of(acknowledgement.read_bytes())
        else:
            answer = self._answer(path, administration)
            content, answer = self._acknowledgement(path.name, answer)
            _write_atomically(acknowledgement, content)
        done = administration_dir / "done"
        done.mkdir(exist_ok=True)
        os.replace(path, done / path.name)
        return answer

    def _acknowledgement(
        self, file_name: str, answer: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        """The acknowledgement, valid against the schema, and the answer it carries.

        The connector retries an acknowledgement that breaks the schema until the delivery
        is dead: a refusal Stésud meant as final must not become that.
        """
        try:
            content = _acknowledgement_xml(file_name, answer)
            if self._schema.validate(etree.fromstring(content, parser=_SAFE_PARSER)):
                return content, answer
            problem = str(self._schema.error_log.last_error)
        except ValueError as exc:  # text XML cannot carry
            problem = str(exc)
        log.warning(
            "Stésud sandbox: the acknowledgement of %s broke the schema: %s", file_name, problem
        )
        answer = answer | {"reason": FALLBACK_REASON} if "reason" in answer else answer
        return _acknowledgement_xml(file_name, answer), answer

    def _answer(self, path: Path, administration: str) -> dict[str, str]:
        try:
            reference = self._book(path.read_bytes(), administration)
        except Rejected as exc:
            # Every reason, not the schema's errors only: a parser's message or an invoice
            # number of 500 characters makes it longer than the schema's Text.
            reason = exc.reason if len(exc.reason) <= MAX_TEXT else exc.reason[: MAX_TEXT - 1] + "…"
            return {"status": "REJECTED", "code": exc.code, "reason": reason}
        return {"status": "BOOKED", "booking_reference": reference}

    def _book(self, content: bytes, administration: str) -> str:
        try:
            root = etree.fromstring(content, parser=_SAFE_PARSER)
        except etree.XMLSyntaxError as exc:
            raise Rejected("INVALID_FILE", f"not well-formed XML: {exc}") from exc
        if not self._schema.validate(root):
            errors = "; ".join(f"line {e.line}: {e.message}" for e in self._schema.error_log)
            raise Rejected("INVALID_FILE", errors)
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
        reference = f"STS-{administration}-{datetime.now(UTC).year}-{next(self._numbers):05d}"
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


def _answer_of(acknowledgement: bytes) -> dict[str, str]:
    """The answer an acknowledgement written before carries (for a reception to show)."""
    try:
        root = etree.fromstring(acknowledgement, parser=_SAFE_PARSER)
    except etree.XMLSyntaxError:
        return {"status": "UNREADABLE"}
    status = root.findtext("s:Status", default="", namespaces=_NS)
    if status == "BOOKED":
        return {
            "status": status,
            "booking_reference": root.findtext("s:BookingReference", default="", namespaces=_NS),
        }
    reason = root.find("s:Reason", namespaces=_NS)
    if reason is None:
        return {"status": status}
    return {"status": status, "code": reason.get("code", ""), "reason": reason.text or ""}


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)
