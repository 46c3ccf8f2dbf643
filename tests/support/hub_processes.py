"""The hub's processes (sandbox, courrier, gateway) started for real, as ``hub up`` starts them.

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
connectors:
  ebox:
{connector}
routes:
  - name: outgoing-mail-ebox
    event_type: courrier.outgoing_mail.send_requested.v1
    connector: ebox
retry:
  max_attempts: 12
  base_delay_seconds: 0.2
  max_delay_seconds: 2
"""
SOAP_CONNECTOR = """\
    type: ebox_soap
    endpoint: ${HUB_SANDBOX_URL}/ebox/soap/EboxMessage
    timeout_seconds: 5"""
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
        )


@asynccontextmanager
async def hub_processes(
    tmp_path: Path, bootstrap: str, database_url: str | None
) -> AsyncIterator[HubProcesses]:
    soap_tenant, rest_tenant = random.sample(range(90000, 99999), 2)
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    (tenants_dir / f"{soap_tenant}.yaml").write_text(
        TENANT_FILE.format(code=soap_tenant, connector=SOAP_CONNECTOR)
    )
    (tenants_dir / f"{rest_tenant}.yaml").write_text(
        TENANT_FILE.format(
            code=rest_tenant, connector=REST_CONNECTOR.replace("{code}", str(rest_tenant))
        )
    )
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=tenants_dir)
    prepare_development_material(settings)
    ports = {name: free_port() for name in ("sandbox", "courrier", "gateway")}
    environment = {"HUB_SANDBOX_URL": f"http://127.0.0.1:{ports['sandbox']}"}
    prefix = "t" + uuid.uuid4().hex[:10] + "_"
    if database_url:
        environment["DATABASE_URL"] = database_url
        environment["HUB_DATABASE_SCHEMA_PREFIX"] = prefix
    hub = HubProcesses(settings, bootstrap, environment, str(soap_tenant), str(rest_tenant), ports)
    try:
        for component in ("sandbox", "courrier", "gateway"):
            await hub.start(component)
        yield hub
    finally:
        stop_all(list(hub.running.values()), None)
        if database_url:
            await drop_schemas(database_url, [prefix + "courrier", prefix + "gateway"])


async def drop_schemas(url: str, schemas: list[str]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for schema in schemas:
                await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()
