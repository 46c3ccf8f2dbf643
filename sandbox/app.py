"""The sandbox process: simulated e-Box (REST and SOAP) and, later, the other external services.

``/_sandbox/*`` is the test and operator control surface: what was received
(with how often each idempotency key arrived) and fault injection.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request

from kernel.app import create_app
from kernel.settings import HubSettings, get_settings
from sandbox import ebox_rest, ebox_soap
from sandbox.recorder import FaultSettings, Recorder


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
                "first_received_at": r.first_received_at.isoformat(),
                "answer": r.answer,
                "traceparent": r.traceparent,
                "summary": r.summary,
            }
            for r in recorder.receptions(service)
        ]
        return {"count": len(items), "items": items}

    @router.put("/faults/{service}")
    async def set_faults(service: str, faults: FaultSettings) -> FaultSettings:
        """``service`` is a simulated service's name, or ``*`` for all of them."""
        recorder.set_faults(service, faults)
        return faults

    @router.delete("/received", status_code=204)
    async def reset() -> None:
        recorder.clear()

    return router


def build_app(settings: HubSettings | None = None, recorder: Recorder | None = None) -> FastAPI:
    settings = settings or get_settings()
    recorder = recorder or Recorder()
    app = create_app(
        "sandbox",
        settings,
        title="Hub sandbox",
        description=(
            "Simulated external services (federal e-Box REST and SOAP) for development and tests."
        ),
    )
    app.state.recorder = recorder
    app.include_router(control_router(recorder))
    app.include_router(ebox_rest.router(recorder, settings))
    app.include_router(ebox_soap.router(recorder, settings))
    return app


def recorder_of(request: Request) -> Recorder:
    recorder: Recorder = request.app.state.recorder
    return recorder
