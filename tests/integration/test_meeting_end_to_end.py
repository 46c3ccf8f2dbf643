"""College and council decisions to the Region, the public and the parties, across real processes.

``hub demo``'s meeting part, run for both tenants of the test's processes at
once: the clerks bring items over REST and WS4PM, the college and council
decide them, the meetings are closed and their decisions published. The
gateway transmits the decisions subject to oversight to the sandbox's
Region (signed SOAP) and brings its outcomes back; courrier notifies the
parties concerned through the e-Box (SOAP for one tenant, REST for the other).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.demo import DemoRun, run_demos
from tests.support.hub_processes import HubProcesses, hub_processes

pytestmark = pytest.mark.integration

COMPONENTS = ("sandbox", "courrier", "meeting", "gateway")
COUNT = 12


async def decisions_of(hub: HubProcesses, tenant: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        base_url=hub.url("meeting"), headers=hub.token(tenant, "meeting:read")
    ) as meeting:
        response = await meeting.get("/v1/items", params={"limit": 200})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_every_decision_reaches_oversight_publication_and_the_party_once(
    tmp_path: Path, kafka_bootstrap: str, database_url: str | None
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, database_url, COMPONENTS) as hub:
        urls = {name: hub.url(name) for name in COMPONENTS}
        tenants = (hub.soap_tenant, hub.rest_tenant)
        runs = [
            DemoRun(hub.settings, urls, t, count=COUNT, timeout=90, progress=None) for t in tenants
        ]

        results = [(await run_demos(run, ("meeting",)))["meeting"] for run in runs]

        for result in results:
            assert (result.submitted, result.delivered, result.failed) == (COUNT, COUNT, 0), (
                result.problems
            )
        async with httpx.AsyncClient(base_url=hub.url("sandbox")) as sandbox:
            transmitted = (
                await sandbox.get("/_sandbox/received", params={"service": "oversight"})
            ).json()["items"]
            outcomes = (await sandbox.get("/_sandbox/oversight/outcomes")).json()["items"]
            mailed = [
                item
                for service in ("ebox_soap", "ebox_rest")
                for item in (
                    await sandbox.get("/_sandbox/received", params={"service": service})
                ).json()["items"]
            ]
        for tenant in tenants:
            items = await decisions_of(hub, tenant)
            assert len(items) == COUNT
            assert all(item["deliveries_complete"] for item in items)
            # Both doors were used: the clerks' REST tool and the WS4PM client.
            assert Counter(item["origin"] for item in items).keys() == {"rest", "ws4pm"}
            owed = {
                kind: [i for i in items if kind in {d["kind"] for d in i["deliveries"]}]
                for kind in ("oversight", "publication", "notification")
            }
            assert all(owed.values()), {kind: len(found) for kind, found in owed.items()}

            # The Region received each decision subject to oversight once, and decided on it.
            received = [r for r in transmitted if r["tenant"] == tenant]
            assert sorted(r["summary"]["item_id"] for r in received) == sorted(
                i["id"] for i in owed["oversight"]
            )
            assert all(r["arrivals"] == 1 for r in received)
            assert all(i["oversight_outcome"] == "approved" for i in owed["oversight"])
            assert len([o for o in outcomes if o["tenant"] == tenant]) == len(owed["oversight"])

            # Each party got one letter: the notification's reference is its e-Box message.
            references = {
                d["reference"]
                for i in owed["notification"]
                for d in i["deliveries"]
                if d["kind"] == "notification"
            }
            letters = [m for m in mailed if m["tenant"] == tenant]
            assert len(letters) == len(owed["notification"])
            assert all(m["arrivals"] == 1 for m in letters)
            assert {
                m["answer"].get("messageId") or m["answer"].get("message_id") for m in letters
            } == references

            # What must be published is, and nothing else is.
            assert all(i["published_at"] for i in owed["publication"])
            unpublished = [i for i in items if i not in owed["publication"]]
            assert not any(i["published_at"] for i in unpublished)
