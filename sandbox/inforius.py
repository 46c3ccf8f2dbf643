"""Simulated Inforius accounting: books purchase invoices and returns booking references.

It implements the modelled contract ``contracts/vendors/inforius-openapi.yaml``
(Inforius publishes none; the contract says how it was modelled):
``POST /inforius/api/v2/purchase-invoices`` checks

- the API key: ``X-API-Key: sandbox-inforius-<administration>`` (401), and
  that the request books in that key's administration (403);
- the body against the contract's ``PurchaseInvoice`` schema (400, every
  violation listed), the UBL being base64 of an XML document;
- what a supplier file knows: the VAT numbers of
  ``sandbox/fixtures/accounting_suppliers.yaml`` are unknown suppliers (422
  ``UNKNOWN_SUPPLIER``); an invoice number of a supplier already booked under
  another key is a duplicate (422 ``DUPLICATE_INVOICE``).

It answers 201 with a booking reference ``INF/<administration>/<year>/<n>``.
The recorder keeps each ``Idempotency-Key`` (service ``inforius``, 1 to 200
characters, else 400): a repeated key gets the first answer, the same key with
another invoice is refused (422 ``IDEMPOTENCY_KEY_REUSED``). Clearing what the
sandbox received forgets the booked invoices too. Faults set for ``inforius``
apply.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pybase64
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kernel.errors import problem_response
from kernel.settings import REPOSITORY_ROOT
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.recorder import Recorder

SERVICE = "inforius"
CONTRACT = REPOSITORY_ROOT / "contracts" / "vendors" / "inforius-openapi.yaml"
SUPPLIERS = Path(__file__).parent / "fixtures" / "accounting_suppliers.yaml"
API_KEY_PREFIX = "sandbox-inforius-"
_ADMINISTRATION = re.compile(r"[0-9]{5}")


def load_unknown_suppliers(path: Path = SUPPLIERS) -> frozenset[str]:
    fixture = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return frozenset(str(vat) for vat in fixture.get("unknown_vat_numbers", []))


def refusal(status: int, code: str, detail: str, **extensions: Any) -> JSONResponse:
    titles = {
        400: "The request breaks the contract",
        401: "Invalid API key",
        403: "Not this key's administration",
        422: "The invoice cannot be booked",
        503: "Service unavailable",
    }
    return problem_response(
        status, code.lower().replace("_", "-"), titles[status], detail, code=code, **extensions
    )


def administration_of(request: Request) -> str | None:
    key = request.headers.get("X-API-Key", "")
    administration = key.removeprefix(API_KEY_PREFIX)
    if not key.startswith(API_KEY_PREFIX) or not _ADMINISTRATION.fullmatch(administration):
        return None
    return administration if secrets.compare_digest(key, API_KEY_PREFIX + administration) else None


def idempotency_key_length(contract: OpenApiContract) -> tuple[int, int]:
    """The contract's bounds on the ``Idempotency-Key`` header."""
    parameters = contract.document["paths"]["/purchase-invoices"]["post"]["parameters"]
    [schema] = [p["schema"] for p in parameters if p["name"] == "Idempotency-Key"]
    return int(schema["minLength"]), int(schema["maxLength"])


def router(recorder: Recorder) -> APIRouter:
    contract = OpenApiContract(CONTRACT)
    validator = contract.validator("PurchaseInvoice")
    shortest_key, longest_key = idempotency_key_length(contract)
    unknown_suppliers = load_unknown_suppliers()
    #: (administration, supplier VAT, invoice number) → booking reference
    booked: dict[tuple[str, str, str], str] = {}
    # A reset of the sandbox forgets the idempotency keys: a key retried afterwards must be
    # booked afresh, not refused as a duplicate of its own earlier booking.
    recorder.on_reset(booked.clear)
    # Apart from ``booked``, which a reset clears: a reference is never given twice.
    numbers = itertools.count(1)
    api = APIRouter(prefix="/inforius/api/v2", tags=["sandbox: Inforius accounting"])

    @api.post("/purchase-invoices", status_code=201)
    async def book(request: Request) -> JSONResponse:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return refusal(503, "SERVICE_UNAVAILABLE", "The sandbox was told to fail this request.")
        administration = administration_of(request)
        if administration is None:
            return refusal(
                401,
                "INVALID_API_KEY",
                "Send the administration's key as X-API-Key"
                " (sandbox: sandbox-inforius-<administration>).",
            )
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
            return refusal(400, "INVALID_REQUEST", "The body is not JSON.")
        problems = contract_errors(validator, body)
        if not problems:
            problems = _ubl_problems(body["ubl"]["contentBase64"])
        if problems:
            return refusal(400, "INVALID_REQUEST", "; ".join(problems), errors=problems)
        if body["administration"] != administration:
            return refusal(
                403,
                "WRONG_ADMINISTRATION",
                f"This key books in administration {administration}, not {body['administration']}.",
            )
        key = request.headers.get("Idempotency-Key")
        if not key:
            return refusal(400, "INVALID_REQUEST", "The Idempotency-Key header is required.")
        if not shortest_key <= len(key) <= longest_key:
            return refusal(
                400,
                "INVALID_REQUEST",
                f"The Idempotency-Key header has {len(key)} characters: the contract allows"
                f" {shortest_key} to {longest_key}.",
            )
        vat = body["supplier"]["vatNumber"]
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        async with recorder.lock:
            first = recorder.first(SERVICE, key)
            if first is not None:
                if (first.tenant, first.summary.get("fingerprint")) != (
                    administration,
                    fingerprint,
                ):
                    recorder.count_reuse(first)  # not an arrival of the first invoice
                    return refusal(
                        422,
                        "IDEMPOTENCY_KEY_REUSED",
                        "This Idempotency-Key was already used for another invoice.",
                    )
                recorder.count_repeat(first)
                return JSONResponse(first.answer, status_code=201)
            if vat in unknown_suppliers:
                return refusal(
                    422,
                    "UNKNOWN_SUPPLIER",
                    f"The supplier with VAT number {vat} is not in the supplier file of"
                    f" administration {administration}: create the supplier, then book again.",
                )
            invoice = (administration, vat, body["invoiceNumber"])
            if invoice in booked:
                return refusal(
                    422,
                    "DUPLICATE_INVOICE",
                    f"Invoice {body['invoiceNumber']} of supplier {vat} is already booked"
                    f" as {booked[invoice]}.",
                )
            now = datetime.now(UTC)
            reference = f"INF/{administration}/{now.year}/{next(numbers):06d}"
            booked[invoice] = reference
            answer = {
                "bookingReference": reference,
                "status": "BOOKED",
                "bookedAt": now.isoformat(timespec="seconds"),
            }
            recorder.record(
                SERVICE,
                key,
                tenant=administration,
                answer=answer,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "invoice": body["invoiceNumber"],
                    "supplier_vat": vat,
                    "payable": body["totals"]["payable"],
                    "external_reference": body["externalReference"],
                    "fingerprint": fingerprint,
                },
            )
        return JSONResponse(answer, status_code=201)

    return api


def _ubl_problems(content_base64: str) -> list[str]:
    try:
        content = pybase64.b64decode(content_base64, validate=True)
    except binascii.Error:
        return ["ubl.contentBase64: not valid base64"]
    if not content.lstrip().startswith(b"<"):
        return ["ubl.contentBase64: the UBL original is not an XML document"]
    return []
