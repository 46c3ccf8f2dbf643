"""Simulated platform of the consulted bodies (fire service, regional official…): opinions.

It implements the modelled contract ``contracts/opinions/openapi.yaml`` under
``/opinions/api/v1``: ``POST /requests`` (validated against the contract;
``Idempotency-Key`` honoured), ``GET /answers`` (given and not yet
acknowledged) and ``POST /answers/{id}/acknowledge``.

A body answers each request ``delay_seconds`` after it arrived, with the
configured ``verdict`` (``PUT /_sandbox/opinions/settings``; by default 1 s,
``favourable``). ``GET /_sandbox/opinions`` shows the requests and their
answers. **Sandbox credentials**: ``X-Api-Key: sandbox-opinions-key-<tenant>``.
Faults are those set for service ``opinions``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import problem_response
from kernel.settings import REPOSITORY_ROOT
from sandbox.openapi_contract import OpenApiContract, contract_errors
from sandbox.recorder import Recorder

SERVICE = "opinions"
CONTRACT = REPOSITORY_ROOT / "contracts" / "opinions" / "openapi.yaml"
PREFIX = "/opinions/api/v1"
API_KEY_PREFIX = "sandbox-opinions-key-"
_TENANT = re.compile(r"[0-9]{5}")
Verdict = Literal["favourable", "favourable_with_conditions", "unfavourable"]


class BodyBehaviour(BaseModel):
    """How the simulated bodies answer (control surface)."""

    model_config = ConfigDict(extra="forbid")
    delay_seconds: float = Field(default=1.0, ge=0, le=86_400)
    verdict: Verdict = "favourable"
    text: str = Field(default="Avis favorable, sous réserve du respect des normes en vigueur.")


@dataclass
class OpinionCase:
    account: str
    request: dict[str, Any]
    received_at: datetime
    answer_id: str = field(default_factory=lambda: f"AV-{uuid.uuid4().hex[:16].upper()}")
    answer: dict[str, Any] | None = None
    acknowledged: bool = False

    def answer_if_due(self, now: datetime, behaviour: BodyBehaviour) -> dict[str, Any] | None:
        if self.answer is None and now >= self.received_at + timedelta(
            seconds=behaviour.delay_seconds
        ):
            self.answer = {
                "answerId": self.answer_id,
                "requestId": self.request["requestId"],
                "fileId": self.request["fileId"],
                "reference": self.request["reference"],
                "body": self.request["body"],
                "verdict": behaviour.verdict,
                "text": behaviour.text,
                "givenOn": now.date().isoformat(),
            }
        return self.answer


@dataclass
class Platform:
    cases: dict[tuple[str, str], OpinionCase] = field(default_factory=dict)
    behaviour: BodyBehaviour = field(default_factory=BodyBehaviour)


def problem(status: int, slug: str, title: str, detail: str, **extensions: Any) -> JSONResponse:
    return problem_response(status, slug, title, detail, **extensions)


def account_of(request: Request) -> str | None:
    key = request.headers.get("X-Api-Key", "")
    account = key.removeprefix(API_KEY_PREFIX)
    if not key.startswith(API_KEY_PREFIX) or not _TENANT.fullmatch(account):
        return None
    return account if secrets.compare_digest(key, API_KEY_PREFIX + account) else None


def router(recorder: Recorder, platform: Platform | None = None) -> APIRouter:
    platform = platform or Platform()
    opinion_request = OpenApiContract(CONTRACT).validator("OpinionRequest")
    api = APIRouter(prefix=PREFIX, tags=["sandbox: opinions platform"])

    async def guard(request: Request) -> str | JSONResponse:
        if await recorder.inject_faults(SERVICE, request.headers.get("Idempotency-Key")):
            return problem(503, "unavailable", "Platform unavailable", "Told to fail.")
        return account_of(request) or problem(
            401,
            "unauthorized",
            "Missing or unknown API key",
            "Send the account's key as X-Api-Key (sandbox: sandbox-opinions-key-<tenant>).",
        )

    def invalid(problems: list[str], slug: str = "invalid-request") -> JSONResponse:
        return problem(
            422,
            slug,
            "The request breaks the platform's contract",
            "; ".join(problems),
            errors=problems,
        )

    @api.post("/requests", status_code=201)
    async def request_opinion(request: Request) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
            return invalid(["body: not JSON"])
        problems = contract_errors(opinion_request, body)
        if problems:
            return invalid(problems)
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        key = request.headers.get("Idempotency-Key") or f"no-key-{uuid.uuid4()}"
        async with recorder.lock:
            first = recorder.first(SERVICE, key)
            if first is not None:
                if (first.tenant, first.summary["fingerprint"]) != (account, fingerprint):
                    recorder.count_reuse(first)  # not an arrival of the first request
                    return invalid(
                        ["Idempotency-Key: already used for a different request"],
                        slug="idempotency-key-reused",
                    )
                recorder.count_repeat(first)
                return JSONResponse(first.answer, status_code=201)
            known = platform.cases.get((account, body["requestId"]))
            if known is not None and known.request != body:
                return invalid([f"requestId: {body['requestId']} was used for another request"])
            now = datetime.now(UTC)
            if known is None:
                platform.cases[(account, body["requestId"])] = OpinionCase(account, body, now)
            receipt = {
                "requestId": body["requestId"],
                "status": "pending",
                "receivedAt": now.isoformat(timespec="seconds"),
            }
            recorder.record(
                SERVICE,
                key,
                tenant=account,
                answer=receipt,
                traceparent=request.headers.get("traceparent"),
                summary={
                    "request": body["requestId"],
                    "body": body["body"],
                    "fingerprint": fingerprint,
                },
            )
        return JSONResponse(receipt, status_code=201)

    @api.get("/answers")
    async def answers(request: Request, limit: int = 100) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        now = datetime.now(UTC)
        given = [
            answer
            for case in platform.cases.values()
            if case.account == account
            and not case.acknowledged
            and (answer := case.answer_if_due(now, platform.behaviour)) is not None
        ]
        return JSONResponse({"items": given[: max(1, min(limit, 500))]})

    @api.post("/answers/{answer_id}/acknowledge")
    async def acknowledge(request: Request, answer_id: str) -> JSONResponse:
        account = await guard(request)
        if isinstance(account, JSONResponse):
            return account
        case = next(
            (
                c
                for c in platform.cases.values()
                if c.account == account and c.answer_id == answer_id and c.answer is not None
            ),
            None,
        )
        if case is None:
            return problem(404, "not-found", "Answer not found", f"No answer {answer_id!r} here.")
        case.acknowledged = True
        return JSONResponse({"answerId": answer_id, "status": "acknowledged"})

    control = APIRouter(prefix="/_sandbox/opinions", tags=["sandbox control"])

    @control.put("/settings")
    async def set_behaviour(behaviour: BodyBehaviour) -> BodyBehaviour:
        platform.behaviour = behaviour
        return behaviour

    @control.get("")
    async def cases() -> dict[str, Any]:
        # A case is one (account, requestId); the same request re-sent under another
        # idempotency key is another reception of it, and counts as a duplicate here.
        arrivals: Counter[tuple[str | None, str]] = Counter()
        for reception in recorder.receptions(SERVICE):
            arrivals[(reception.tenant, reception.summary["request"])] += reception.arrivals
        items = [
            {
                "account": case.account,
                "request": case.request,
                "arrivals": arrivals[(case.account, case.request["requestId"])],
                "answer": case.answer,
                "acknowledged": case.acknowledged,
            }
            for case in platform.cases.values()
        ]
        return {"count": len(items), "items": items}

    routes = APIRouter()
    routes.include_router(api)
    routes.include_router(control)
    return routes
