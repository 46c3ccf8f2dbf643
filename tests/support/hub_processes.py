"""The hub's processes started for real, as ``hub up`` starts them.

Each test gets its own tenants (random codes), var directory and, on
PostgreSQL, its own schemas, so tests sharing the session's broker never see
each other's documents.
"""

from __future__ import annotations

import random
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text

from hub.components import BY_NAME
from hub.demos import LIMITS
from hub.supervisor import (
    Running,
    prepare_development_material,
    start_component,
    stop_all,
    wait_healthy,
)
from kernel.auth import issue_token
from kernel.database import create_engine
from kernel.kafka import free_port
from kernel.settings import HubSettings

TENANT_FILE = """\
tenant: "{code}"
name: Test commune {code}
peppol:
  participant: "0208:{participant}"
  access_point: peppol
notice:
  instance: "NOTICE-{code}"
services:
  meeting:
    configurations:
      - id: college
        kind: college
        title: Collège communal
        decision_prefix: COL
        proposing_services: [urbanisme, travaux, secretariat]
        categories:
          - {{id: urbanisme, title: Urbanisme, publication: true}}
          - {{id: travaux, title: Travaux publics, oversight: true}}
          - {{id: personnel, title: Personnel}}
      - id: council
        kind: council
        title: Conseil communal
        decision_prefix: CC
        proposing_services: [secretariat, finances]
        categories:
          - {{id: finances, title: Finances et budget, oversight: true, publication: true}}
          - {{id: reglements, title: Règlements communaux, publication: true}}
    ws4pm_clients:
      - username: urban-{code}
        password: sandbox-ws4pm-{code}
  urban:
    decision:
      meeting_config: college
      proposing_service: urbanisme
      category: urbanisme
connectors:
  ebox:
{connector}
  peppol:
    type: peppol_ap
    base_url: ${{HUB_SANDBOX_URL}}/peppol-ap/v1
    api_key: sandbox-ap-key-hub
  accounting:
{accounting}
  oversight:
    type: oversight_soap
    endpoint: ${{HUB_SANDBOX_URL}}/oversight/soap/Tutelle
    timeout_seconds: 5
  notice:
    type: notice
    base_url: ${{HUB_SANDBOX_URL}}/notice/api/v1
    api_key: sandbox-notice-key-hub
    timeout_seconds: 5
  identification:
    type: ksz_identify
    endpoint: ${{HUB_SANDBOX_TLS_URL}}/ksz-bcss/WebServiceConnector
    user_id: "00000000097"
    email: urbanisme@{code}.example.be
    timeout_seconds: 5
  opinions:
    type: opinion_rest
    base_url: ${{HUB_SANDBOX_URL}}/opinions/api/v1
    api_key: sandbox-opinions-key-{code}
    timeout_seconds: 5
routes:
  - name: outgoing-mail-ebox
    event_type: courrier.outgoing_mail.send_requested.v1
    connector: ebox
  - name: approved-invoice-accounting
    event_type: factures.invoice.approved.v1
    connector: accounting
  - name: invoice-response-peppol
    event_type: factures.invoice_response.requested.v1
    connector: peppol
  - name: decision-oversight
    event_type: meeting.decision.transmission_requested.v1
    connector: oversight
  - name: notice-response
    event_type: urban.notice.response_requested.v1
    connector: notice
  - name: applicant-identification
    event_type: urban.applicant.identification_requested.v1
    connector: identification
  - name: opinion-request
    event_type: urban.opinion.requested.v1
    connector: opinions
retry:
  max_attempts: 12
  base_delay_seconds: 0.2
  max_delay_seconds: 2
"""
SOAP_CONNECTOR = """\
    type: ebox_soap
    endpoint: ${HUB_SANDBOX_URL}/ebox/soap/EboxMessage
    timeout_seconds: 5"""
STESUD_CONNECTOR = """\
    type: stesud"""
INFORIUS_CONNECTOR = """\
    type: inforius
    base_url: ${{HUB_SANDBOX_URL}}/inforius/api/v2
    api_key: sandbox-inforius-{code}"""
REST_CONNECTOR = """\
    type: ebox_rest
    base_url: ${HUB_SANDBOX_URL}/ebox/rest
    token_url: ${HUB_SANDBOX_URL}/ebox/oauth2/token
    client_id: hub-{code}
    client_secret: sandbox-secret-{code}
    timeout_seconds: 5"""


@dataclass
class HubProcesses:
    settings: HubSettings
    bootstrap: str
    environment: dict[str, str]
    soap_tenant: str
    rest_tenant: str
    ports: dict[str, int] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)

    def url(self, component: str) -> str:
        return f"http://127.0.0.1:{self.ports[component]}"

    async def start(self, component: str) -> None:
        item = start_component(
            BY_NAME[component],
            self.settings,
            self.bootstrap,
            port=self.ports[component],
            extra_environment=self.environment,
        )
        self.running[component] = item
        await wait_healthy(item, "127.0.0.1")

    def kill(self, component: str) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        process = self.running.pop(component).process
        process.send_signal(signal.SIGKILL)
        process.wait()

    def token(self, tenant: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(self.settings, tenant, list(scopes))}

    def courrier(self, tenant: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url("courrier"),
            timeout=30,
            headers=self.token(tenant, "courrier:read", "courrier:write"),
            # httpx keeps an idle connection 5 s, as long as uvicorn: a busy machine's
            # 50 reads at once, taking longer, reused one uvicorn had just closed.
            limits=LIMITS,
        )


SPINE = ("sandbox", "courrier", "gateway")


def participant_number(rng: random.Random) -> str:
    """A random valid Belgian enterprise number (modulo 97), for a tenant's Peppol id."""
    first_eight = rng.randrange(2_000_000, 9_999_999)
    return f"{first_eight:08d}{97 - first_eight % 97:02d}"


@asynccontextmanager
async def hub_processes(
    tmp_path: Path,
    bootstrap: str,
    database_url: str | None,
    components: tuple[str, ...] = SPINE,
) -> AsyncIterator[HubProcesses]:
    """``components`` started in order (the gateway last: it reads what the others publish).

    The SOAP tenant books invoices with Stésud, the REST tenant with Inforius. Both have
    the committed tenants' meeting configurations, urban block, NOTICe instance
    (``NOTICE-<code>``) and connectors to the sandbox's oversight, NOTICe, KSZ-BCSS and
    opinions platform.
    """
    rng = random.Random()
    soap_tenant, rest_tenant = rng.sample(range(90000, 99999), 2)
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    (tenants_dir / f"{soap_tenant}.yaml").write_text(
        TENANT_FILE.format(
            code=soap_tenant,
            participant=participant_number(rng),
            connector=SOAP_CONNECTOR,
            accounting=STESUD_CONNECTOR,
        ),
        encoding="utf-8",
    )
    (tenants_dir / f"{rest_tenant}.yaml").write_text(
        TENANT_FILE.format(
            code=rest_tenant,
            participant=participant_number(rng),
            connector=REST_CONNECTOR.replace("{code}", str(rest_tenant)),
            accounting=INFORIUS_CONNECTOR.format(code=rest_tenant),
        ),
        encoding="utf-8",
    )
    # The KSZ-BCSS through the sandbox's TLS listener, with the tenant's client certificate.
    tls_port = free_port()
    settings = HubSettings(
        var_dir=tmp_path / "var",
        tenants_dir=tenants_dir,
        sandbox_tls_port=tls_port,
    )
    prepare_development_material(settings)
    ports = {name: free_port() for name in components}
    environment = {
        "HUB_SANDBOX_URL": f"http://127.0.0.1:{ports['sandbox']}",
        "HUB_INBOUND_POLL_SECONDS": "0.2",
    }
    prefix = "t" + uuid.uuid4().hex[:10] + "_"
    if database_url:
        environment["DATABASE_URL"] = database_url
        environment["HUB_DATABASE_SCHEMA_PREFIX"] = prefix
    hub = HubProcesses(settings, bootstrap, environment, str(soap_tenant), str(rest_tenant), ports)
    try:
        for component in components:
            await hub.start(component)
        yield hub
    finally:
        stop_all(list(hub.running.values()), None)
        if database_url:
            await drop_schemas(database_url, [prefix + component for component in components])


async def drop_schemas(url: str, schemas: list[str]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for schema in schemas:
                await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()
