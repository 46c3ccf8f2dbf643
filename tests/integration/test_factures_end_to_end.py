"""Invoices from the Peppol sandbox to the accounting software, across real processes.

The sandbox's access point receives suppliers' invoices; the gateway fetches
them, factures checks them, the demo's clerk approves the valid ones, the
gateway hands them to the tenant's accounting software (Stésud by file for one
tenant, Inforius over REST for the other), and the booking reference comes back.
Invalid invoices end rejected with their reasons and an RE answer to their
supplier. This is ``hub demo``'s factures part, run against the test's processes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hub.demo import DemoRun, run_demos
from tests.support.hub_processes import hub_processes

pytestmark = pytest.mark.integration

COMPONENTS = ("sandbox", "courrier", "factures", "gateway")


@pytest.mark.parametrize("accounting", ["stesud", "inforius"])
async def test_valid_invoices_are_booked_and_invalid_ones_answered_re(
    tmp_path: Path, kafka_bootstrap: str, database_url: str | None, accounting: str
) -> None:
    async with hub_processes(tmp_path, kafka_bootstrap, database_url, COMPONENTS) as hub:
        tenant = hub.soap_tenant if accounting == "stesud" else hub.rest_tenant
        urls = {name: hub.url(name) for name in COMPONENTS}
        demo = DemoRun(hub.settings, urls, tenant, count=24, timeout=90, progress=None)

        [result] = (await run_demos(demo, ("factures",))).values()

        assert result.all_accounted_for(), result.problems
        # Every fifth invoice is faulty (wrong totals, unknown VAT category, no buyer
        # reference, CII): refused with an RE answer; the others are booked.
        assert (result.submitted, result.delivered, result.rejected) == (24, 20, 4)

        # The booking references came from the vendor's sandbox, once per invoice.
        async with httpx.AsyncClient(base_url=hub.url("sandbox")) as sandbox:
            received = (
                await sandbox.get("/_sandbox/received", params={"service": accounting})
            ).json()["items"]
        assert len(received) == result.delivered
        assert all(item["arrivals"] == 1 for item in received)
