"""From the courrier API to the sandbox's e-Box and back to "sent", across real processes."""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import httpx
import pytest

from hub.traffic import outgoing_mail
from tests.support.hub_processes import HubProcesses, hub_processes

pytestmark = pytest.mark.integration

NO_EBOX_NISS = "90010100123"  # listed in sandbox/fixtures/ebox_recipients.yaml
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def wait_final(
    client: httpx.AsyncClient, mail_id: str, timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view: dict[str, object] = (await client.get(f"/v1/outgoing-mails/{mail_id}")).json()
        if view["state"] in ("sent", "failed"):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"mail {mail_id} did not reach sent or failed in {timeout}s")


async def test_outgoing_mail_reaches_the_ebox_over_soap_and_rest_in_one_trace(
    tmp_path: Path, kafka_bootstrap: str, database_url: str | None
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, database_url) as hub:
        for tenant, service in ((hub.soap_tenant, "ebox_soap"), (hub.rest_tenant, "ebox_rest")):
            async with hub.courrier(tenant) as client:
                traceparent = f"00-{TRACE_ID}-{random.getrandbits(64):016x}-01"
                response = await client.post(
                    "/v1/outgoing-mails:send",
                    json=outgoing_mail(random.Random(), 1),
                    headers={"traceparent": traceparent},
                )
                assert response.status_code == 202, response.text
                mail = await wait_final(client, response.json()["id"])
            assert mail["state"] == "sent", mail
            received = await sandbox_receptions(hub, service)
            [reception] = [r for r in received if r["answer_id"] == mail["ebox_message_id"]]
            assert reception["tenant"] == tenant
            # The sandbox saw the trace that started at the courrier API call.
            assert reception["traceparent"].split("-")[1] == TRACE_ID
        async with httpx.AsyncClient() as client:
            gateway_metrics = (await client.get(hub.url("gateway") + "/metrics")).text
            courrier_metrics = (await client.get(hub.url("courrier") + "/metrics")).text
        for connector in ("ebox_soap", "ebox_rest"):
            assert f'hub_deliveries_total{{connector="{connector}",outcome="delivered"}} 1.0' in (
                gateway_metrics
            )
            assert f'hub_delivery_latency_seconds_count{{connector="{connector}"}} 1.0' in (
                gateway_metrics
            )
        assert 'hub_events_published_total{component="courrier",topic="courrier.events"}' in (
            courrier_metrics
        )
        # Both mails are sent: each process has handled every record of its topic.
        assert 'hub_consumer_lag_events{component="gateway",topic="courrier.events"} 0.0' in (
            gateway_metrics
        )
        assert 'hub_consumer_lag_events{component="courrier",topic="gateway.receipts"} 0.0' in (
            courrier_metrics
        )
        # The outbox's backlog was read from each process's database at the scrape.
        for component, text in (("gateway", gateway_metrics), ("courrier", courrier_metrics)):
            assert re.search(
                rf'^hub_outbox_pending_events{{component="{component}"}} \d', text, re.MULTILINE
            )


async def test_a_recipient_without_digital_ebox_ends_failed_with_a_clear_reason(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, None) as hub:
        async with hub.courrier(hub.soap_tenant) as client:
            body = outgoing_mail(random.Random(), 1)
            body["recipient"] = {"kind": "person", "identifier": NO_EBOX_NISS}
            response = await client.post("/v1/outgoing-mails:send", json=body)
            mail = await wait_final(client, response.json()["id"])
        assert mail["state"] == "failed"
        assert "no digital e-Box" in str(mail["failure_reason"])

        # The operator of that tenant sees the failed delivery, with its reason, and replays it;
        # another tenant's operator sees nothing of it.
        operator = hub.token(hub.soap_tenant, "gateway:read", "gateway:operate")
        stranger = hub.token(hub.rest_tenant, "gateway:read", "gateway:operate")
        async with httpx.AsyncClient(base_url=hub.url("gateway")) as gateway:
            page = (await gateway.get("/v1/deliveries?status=failed", headers=operator)).json()
            [delivery] = page["items"]
            assert (
                delivery["subject"] == mail["id"] and "no digital e-Box" in delivery["last_error"]
            )
            summary = (await gateway.get("/v1/deliveries/summary", headers=operator)).json()
            assert summary == [{"connector": "ebox_soap", "status": "failed", "count": 1}]
            assert (await gateway.get("/v1/deliveries", headers=stranger)).json()["items"] == []
            # A cursor past any id the database holds is a bad request, not a 500.
            for listing in ("/v1/deliveries", "/v1/inbound", "/v1/inbound/waiting"):
                huge = await gateway.get(f"{listing}?cursor={2**63}", headers=operator)
                assert huge.status_code == 422, (listing, huge.text)
                assert huge.headers["content-type"] == "application/problem+json"
            # Each tenant's operator sees its own certificates and their end, not another's.
            for tenant, token, connectors in (
                (hub.soap_tenant, operator, {"ebox", "identification", "oversight"}),
                (hub.rest_tenant, stranger, {"identification", "oversight"}),
            ):
                certificates = (await gateway.get("/v1/certificates", headers=token)).json()
                assert {c["connector"] for c in certificates} == connectors
                assert all(
                    c["subject"] == f"O={tenant},CN=hub-{tenant}" and 700 < c["days_left"] <= 730
                    for c in certificates
                )
            key = delivery["idempotency_key"]
            foreign = await gateway.post(f"/v1/deliveries/{key}/replay", headers=stranger)
            assert foreign.status_code == 404
            read_only = hub.token(hub.soap_tenant, "gateway:read")
            assert (
                await gateway.post(f"/v1/deliveries/{key}/replay", headers=read_only)
            ).status_code == 403
            replayed = await gateway.post(f"/v1/deliveries/{key}/replay", headers=operator)
            assert (replayed.status_code, replayed.json()["status"]) == (200, "retrying")
            # The replay really goes out again (attempts start from zero) and, as the
            # recipient still has no e-Box, ends failed again after a new attempt.
            for _ in range(100):
                current = (await gateway.get(f"/v1/deliveries/{key}", headers=operator)).json()
                if current["status"] == "failed":
                    break
                await asyncio.sleep(0.1)
            assert (current["status"], current["attempts"]) == ("failed", 1)
            assert current["updated_at"] > delivery["updated_at"]


async def sandbox_receptions(hub: HubProcesses, service: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=hub.url("sandbox")) as client:
        items = (await client.get("/_sandbox/received", params={"service": service})).json()[
            "items"
        ]
    for item in items:
        answer = item["answer"]
        item["answer_id"] = answer.get("messageId") or answer.get("message_id")
    return list(items)


async def test_a_slow_target_does_not_hold_another_tenants_mail(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The REST e-Box answers after 4 s; the SOAP one at once. The SOAP tenant's mail, sent
    after the REST tenant's, is sent first: the gateway did not wait for the slow target
    before reading on (it waits 2 s at most, then the attempt goes on in the background)."""
    async with hub_processes(tmp_path, kafka_bootstrap, None) as hub:
        async with httpx.AsyncClient(base_url=hub.url("sandbox")) as sandbox:
            await sandbox.put("/_sandbox/faults/ebox_rest", json={"latency_ms": 4000})
        async with hub.courrier(hub.rest_tenant) as slow, hub.courrier(hub.soap_tenant) as fast:
            waiting = await slow.post(
                "/v1/outgoing-mails:send", json=outgoing_mail(random.Random(), 1)
            )
            sent_after = await fast.post(
                "/v1/outgoing-mails:send", json=outgoing_mail(random.Random(), 2)
            )
            assert (waiting.status_code, sent_after.status_code) == (202, 202)
            fast_mail = await wait_final(fast, sent_after.json()["id"])
            slow_view = (await slow.get(f"/v1/outgoing-mails/{waiting.json()['id']}")).json()
            assert fast_mail["state"] == "sent"
            assert slow_view["state"] == "sending"  # its target still has not answered
            slow_mail = await wait_final(slow, waiting.json()["id"])
        assert slow_mail["state"] == "sent"
        [reception] = [
            r
            for r in await sandbox_receptions(hub, "ebox_rest")
            if r["answer_id"] == slow_mail["ebox_message_id"]
        ]
        assert reception["arrivals"] == 1  # attempted once, its outcome recorded by itself
