"""Permit files from NOTICe to the decision and its notification, across real processes.

``hub demo``'s urban part, run for both tenants of the test's processes at
once: the sandbox's NOTICe notifies permit requests; the gateway brings them
to urban, which opens the files and has the applicants identified at the
KSZ-BCSS; the demo's clerk declares them complete (PARTIAL to NOTICe) and
asks for opinions or the decision; meeting turns urban's request into an
item, which the demo's college decides; urban answers NOTICe FINAL and
courrier notifies the applicant through the e-Box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.demo import DemoRun, run_demos
from hub.demos.urban import OPINION_EVERY
from tests.support.hub_processes import HubProcesses, hub_processes

pytestmark = pytest.mark.integration

COMPONENTS = ("sandbox", "courrier", "meeting", "urban", "gateway")
COUNT = 8


async def files_of(hub: HubProcesses, tenant: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        base_url=hub.url("urban"), headers=hub.token(tenant, "urban:read")
    ) as urban:
        listed = (await urban.get("/v1/files", params={"limit": 200})).json()["items"]
        return [(await urban.get(f"/v1/files/{file['id']}")).json() for file in listed]


async def test_notified_requests_are_decided_and_the_decision_reaches_notice_and_applicant(
    tmp_path: Path, kafka_bootstrap: str, database_url: str | None
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, database_url, COMPONENTS) as hub:
        urls = {name: hub.url(name) for name in COMPONENTS}
        tenants = (hub.soap_tenant, hub.rest_tenant)
        runs = [
            DemoRun(hub.settings, urls, tenant, count=COUNT, timeout=90, progress=None)
            for tenant in tenants
        ]

        results = [(await run_demos(run, ("urban",)))["urban"] for run in runs]

        for result in results:
            assert (result.submitted, result.delivered, result.failed) == (COUNT, COUNT, 0), (
                result.problems
            )
        async with httpx.AsyncClient(base_url=hub.url("sandbox")) as sandbox:
            notifications = (await sandbox.get("/_sandbox/notice/notifications")).json()["items"]
            opinions = await sandbox.get("/_sandbox/received", params={"service": "opinions"})
            identities = await sandbox.get("/_sandbox/received", params={"service": "ksz_bcss"})
            letters = [
                item
                for service in ("ebox_soap", "ebox_rest")
                for item in (
                    await sandbox.get("/_sandbox/received", params={"service": service})
                ).json()["items"]
            ]
        for tenant in tenants:
            files = await files_of(hub, tenant)
            assert len(files) == COUNT
            assert all(f["state"] in ("granted", "refused") for f in files)
            assert all(f["notice_state"] == "closed" and f["notified_on"] for f in files)
            # The applicants are who the National Register says they are, asked over mutual
            # TLS with the tenant's own certificate.
            assert not any(f["identity_flagged"] for f in files)
            identified = [r for r in identities.json()["items"] if r["tenant"] == tenant]
            assert identified
            assert all(
                r["summary"]["client_certificate"] == f"O={tenant},CN=hub-{tenant}"
                for r in identified
            )

            # NOTICe got one PARTIAL (complete) then one FINAL (the decision), each once.
            mine = [n for n in notifications if n["instanceCode"] == f"NOTICE-{tenant}"]
            assert len(mine) == COUNT
            for notice in mine:
                assert notice["status"] == "CLOTUREE"
                assert [r["state"] for r in notice["responses"]] == ["PARTIAL", "FINAL"]
                assert all(r["arrivals"] == 1 for r in notice["responses"])
                assert notice["fetches"] == 1
            decisions = {n["id"]: n["responses"][1]["decision"].lower() for n in mine}
            assert {f["notice_notification_id"]: f["decision"] for f in files} == decisions

            # The fire service was asked once for each file that needed its opinion.
            asked = [r for r in opinions.json()["items"] if r["tenant"] == tenant]
            assert len(asked) == COUNT // OPINION_EVERY
            assert all(r["arrivals"] == 1 for r in asked)
            assert all(len(f["opinions"]) == 1 for f in files if f["opinions"])

            # Each applicant got one letter with the decision.
            sent = [m for m in letters if m["tenant"] == tenant]
            assert len(sent) == COUNT
            assert all(m["arrivals"] == 1 for m in sent)
