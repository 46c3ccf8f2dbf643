"""``hub demo``'s counting against fake or absent services (the real runs are the
end-to-end tests)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hub.demo import DemoRun, ServiceResult, print_table, run_demos
from kernel.kafka import free_port
from kernel.settings import HubSettings
from tests.support.servers import serving


async def test_a_hub_that_cannot_be_reached_counts_everything_failed(
    hub_settings: HubSettings,
) -> None:
    nowhere = {name: f"http://127.0.0.1:{free_port()}" for name in ("courrier", "sandbox")}
    run = DemoRun(hub_settings, nowhere, "92137", count=3, timeout=1, progress=None)

    [result] = (await run_demos(run, ("courrier",))).values()

    assert (result.submitted, result.delivered, result.failed) == (3, 0, 3)
    assert not result.all_accounted_for()
    assert result.problems[0].startswith("the hub could not be reached: ConnectError")


async def test_factures_counts_rejected_even_when_the_hub_cannot_be_reached(
    hub_settings: HubSettings,
) -> None:
    # README promises "factures": {..., "rejected": ...} in --json: a consumer reads it.
    nowhere = {name: f"http://127.0.0.1:{free_port()}" for name in ("factures", "sandbox")}
    run = DemoRun(hub_settings, nowhere, "92137", count=2, timeout=1, progress=None)

    [result] = (await run_demos(run, ("factures",))).values()

    assert result.problems[0].startswith("the hub could not be reached")
    assert result.as_dict()["rejected"] == 0


Handler = Callable[[httpx.Request], httpx.Response]


def fake_services(monkeypatch: pytest.MonkeyPatch, handlers: dict[str, Handler]) -> None:
    """Each demo's client of a service answered by ``handlers[service]``, not the network."""

    def client(run: DemoRun, service: str, scopes: object = ()) -> httpx.AsyncClient:
        transport = httpx.MockTransport(handlers[service])
        return httpx.AsyncClient(base_url=f"http://{service}.test", transport=transport)

    monkeypatch.setattr(DemoRun, "client", client)


def no_supplier_answers(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"answers": {}})


async def test_an_invoice_the_access_point_refused_counts_failed(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    drops = itertools.count()

    def sandbox(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return no_supplier_answers(request)
        if next(drops) == 1:
            return httpx.Response(503, text="access point unavailable")
        return httpx.Response(201, json={"messageId": str(uuid.uuid4())})

    def factures(request: httpx.Request) -> httpx.Response:
        message_id = request.url.params["peppol_message_id"]
        return httpx.Response(200, json={"items": [{"id": message_id, "state": "booked"}]})

    fake_services(monkeypatch, {"sandbox": sandbox, "factures": factures})
    run = DemoRun(hub_settings, {}, "92137", count=3, timeout=5, progress=None)

    [result] = (await run_demos(run, ("factures",))).values()

    assert (result.submitted, result.delivered, result.rejected, result.failed) == (3, 2, 0, 1)
    assert result.problems == ["access point: 503 access point unavailable"]


async def test_a_refused_approval_counts_failed_with_its_error_not_as_a_timeout(
    hub_settings: HubSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    approvals: list[str] = []

    def sandbox(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return no_supplier_answers(request)
        return httpx.Response(201, json={"messageId": "msg-1"})

    def factures(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/approve"):
            approvals.append(request.url.path)
            problem = {"type": "https://hub.example/problems/invalid-state", "status": 409}
            return httpx.Response(409, json=problem)
        return httpx.Response(200, json={"items": [{"id": "inv-1", "state": "to_approve"}]})

    fake_services(monkeypatch, {"sandbox": sandbox, "factures": factures})
    run = DemoRun(hub_settings, {}, "92137", count=1, timeout=3, progress=None)

    [result] = (await run_demos(run, ("factures",))).values()

    assert approvals == ["/v1/invoices/inv-1/approve"]  # a clerk refused is not asked again
    assert (result.submitted, result.delivered, result.failed) == (1, 0, 1)
    [problem] = result.problems
    assert "approval refused: POST /v1/invoices/inv-1/approve: 409" in problem
    assert "invalid-state" in problem


async def test_a_mail_still_sending_at_the_deadline_counts_failed(
    hub_settings: HubSettings,
) -> None:
    courrier = FastAPI()
    now = datetime.now(UTC).isoformat()

    @courrier.post("/v1/outgoing-mails:send", status_code=202)
    async def send() -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "state": "sending"}

    @courrier.post("/v1/incoming-mails", status_code=201)
    async def register() -> dict[str, Any]:
        return {}

    @courrier.get("/v1/outgoing-mails/{mail_id}")
    async def view(mail_id: str) -> dict[str, Any]:  # the gateway never answers
        return {"id": mail_id, "state": "sending", "created_at": now, "updated_at": now}

    async with serving(courrier) as url:
        run = DemoRun(hub_settings, {"courrier": url}, "92137", count=2, timeout=0.5, progress=None)
        [result] = (await run_demos(run, ("courrier",))).values()

    assert (result.submitted, result.delivered, result.failed) == (2, 0, 2)
    assert all("not sent within 0 s" in problem for problem in result.problems)


async def test_incoming_mail_the_registry_refused_fails_the_run(
    hub_settings: HubSettings,
) -> None:
    courrier = FastAPI()
    now = datetime.now(UTC).isoformat()

    @courrier.post("/v1/outgoing-mails:send", status_code=202)
    async def send() -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "state": "sending"}

    @courrier.post("/v1/incoming-mails", status_code=500)
    async def register() -> dict[str, Any]:
        return {"title": "Internal error"}

    @courrier.get("/v1/outgoing-mails/{mail_id}")
    async def view(mail_id: str) -> dict[str, Any]:
        return {"id": mail_id, "state": "sent", "created_at": now, "updated_at": now}

    async with serving(courrier) as url:
        run = DemoRun(hub_settings, {"courrier": url}, "92137", count=10, timeout=5, progress=None)
        [result] = (await run_demos(run, ("courrier",))).values()

    assert (result.submitted, result.delivered, result.failed) == (10, 10, 2)
    assert not result.all_accounted_for()  # so hub demo exits non-zero
    assert all(problem.startswith("incoming mail: 500") for problem in result.problems)


def test_a_problem_in_square_brackets_is_printed_as_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = ServiceResult(submitted=1, failed=1, problems=["422: [/body] and [bold]x[/bold]"])
    print_table({"courrier": result})
    assert "422: [/body] and [bold]x[/bold]" in capsys.readouterr().out
