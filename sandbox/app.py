"""The sandbox process: simulated external services.

The federal e-Box (REST and SOAP), the communes' Peppol access point
(``peppol_ap``), the accounting packages Inforius (REST) and Stésud (a
drop directory watched by a background task), the regional oversight
(``oversight``, a modelled SOAP contract), the SPW's NOTICe permit
notifications (``notice``, modelled REST), the KSZ-BCSS ``IdentifyPerson``
(``ksz_bcss``, SOAP) and the consulted bodies' opinions (``opinions``, modelled
REST).

``/_sandbox/*`` is the test and operator control surface: what was received
(with how often each idempotency key arrived), every attempt (faulted ones
included) and fault injection.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from kernel.app import BackgroundTask, create_app
from kernel.errors import problem_response
from kernel.settings import HubSettings, get_settings
from sandbox import (
    ebox_rest,
    ebox_soap,
    inforius,
    ksz_bcss,
    notice,
    opinions,
    oversight,
    peppol_ap,
    stesud,
)
from sandbox.recorder import FaultSettings, Recorder
from sandbox.stesud import StesudSandbox

#: The names faults can be set for (``PUT /_sandbox/faults/<name>``), besides ``*``.
SERVICES = frozenset(
    module.SERVICE
    for module in (
        ebox_rest,
        ebox_soap,
        inforius,
        ksz_bcss,
        notice,
        opinions,
        oversight,
        peppol_ap,
        stesud,
    )
)


def control_router(recorder: Recorder) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.get("/received")
    async def received(service: str | None = None) -> dict[str, Any]:
        items = [
            {
                "service": r.service,
                "idempotency_key": r.idempotency_key,
                "tenant": r.tenant,
                "arrivals": r.arrivals,
                "reused": r.reused,
                "first_received_at": r.first_received_at.isoformat(),
                "answer": r.answer,
                "traceparent": r.traceparent,
                "summary": r.summary,
            }
            for r in recorder.receptions(service)
        ]
        return {"count": len(items), "items": items}

    @router.get("/attempts")
    async def attempts(service: str | None = None) -> dict[str, Any]:
        """Every request that carried an ``Idempotency-Key``, faulted ones included.

        ``arrivals`` in ``/received`` counts only the requests processed: an injected
        503 or timeout leaves its trace here alone.
        """
        items = [
            {"service": s, "idempotency_key": key, "attempts": count}
            for s, key, count in recorder.attempts(service)
        ]
        return {"count": len(items), "items": items}

    @router.put("/faults/{service}", response_model=None)
    async def set_faults(service: str, faults: FaultSettings) -> FaultSettings | JSONResponse:
        """``service`` is a simulated service's name, or ``*`` for all of them."""
        if service != "*" and service not in SERVICES:
            # A misspelt name would otherwise be taken and inject nothing.
            return problem_response(
                404,
                "unknown-service",
                "No such simulated service",
                f"{service!r} is not a simulated service: use one of {sorted(SERVICES)} or '*'.",
            )
        recorder.set_faults(service, faults)
        return faults

    @router.delete("/faults", status_code=204)
    async def reset_faults() -> None:
        recorder.clear_faults()

    @router.delete("/received", status_code=204)
    async def reset_received() -> None:
        """Forget the receptions and attempts, and what Inforius and Stésud booked.

        A key sent again afterwards is a new one everywhere, and the accounting vendors book
        its invoice afresh (their booking references keep counting up: never one twice).
        Stésud's drop directory is left as it is: a file whose acknowledgement is still in
        ``out/`` is answered by it again.

        Everything else stays: the fault settings (``DELETE /faults``); the e-Box access
        tokens; the NOTICe notifications, with the responses they got and their status (a
        response retried after the reset to a notification a FINAL response closed is
        refused, 409); the opinions platform's cases and its settings; the oversight's
        decided and pending outcomes and its behaviour; the Peppol access point's inbox
        messages and their states.
        """
        recorder.clear_received()

    return router


def build_app(settings: HubSettings | None = None, recorder: Recorder | None = None) -> FastAPI:
    settings = settings or get_settings()
    recorder = recorder or Recorder()
    stesud = StesudSandbox.from_settings(settings, recorder)

    async def startup(app: FastAPI) -> list[BackgroundTask]:
        async def watch_stesud_drop_directory() -> None:
            await stesud.run()

        return [watch_stesud_drop_directory]

    app = create_app(
        "sandbox",
        settings,
        title="Hub sandbox",
        description=(
            "Simulated external services for development and tests: federal e-Box (REST and"
            " SOAP), Peppol access point, Inforius and Stésud accounting, regional oversight."
        ),
        startup=startup,
    )
    app.state.recorder = recorder
    app.include_router(control_router(recorder))
    app.include_router(ebox_rest.router(recorder, settings))
    app.include_router(ebox_soap.router(recorder, settings))
    registered = peppol_ap.registered_participants(settings.tenants_dir)
    access_point = peppol_ap.AccessPoint(participants=registered)
    app.include_router(peppol_ap.router(recorder, access_point))
    app.include_router(inforius.router(recorder))
    app.include_router(oversight.router(recorder, settings))
    app.include_router(notice.router(recorder))
    app.include_router(ksz_bcss.router(recorder, settings))
    app.include_router(opinions.router(recorder))
    app.state.stesud = stesud
    return app


def recorder_of(request: Request) -> Recorder:
    recorder: Recorder = request.app.state.recorder
    return recorder
