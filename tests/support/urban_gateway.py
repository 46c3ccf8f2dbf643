"""The sandbox and a gateway served in the test's event loop, for the urban-planning flows.

One tenant with a random code and NOTICe instance, routed to the sandbox's
NOTICe, KSZ-BCSS and opinions platform; its own consumer group, so tests
sharing the session's broker never see each other's documents.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from contracts.envelope import CloudEvent, to_record
from gateway.main import GatewayOptions
from gateway.main import build_app as build_gateway
from kernel.auth import issue_token
from kernel.kafka import make_producer
from kernel.settings import HubSettings
from sandbox.app import build_app as build_sandbox
from sandbox.recorder import Recorder
from tests.support.groups import group_at_end
from tests.support.servers import serving

TENANT_FILE = """\
tenant: "{code}"
name: Test commune {code}
notice:
  instance: "{instance}"
connectors:
  notice:
    type: notice
    base_url: {sandbox}/notice/api/v1
    api_key: sandbox-notice-key-hub
    timeout_seconds: 5
    poll_instances: ["{stranger}"]
  identification:
    type: ksz_identify
    endpoint: {sandbox}/ksz-bcss/WebServiceConnector
    user_id: "00000000097"
    email: urbanisme@{code}.example.be
    timeout_seconds: 5
  opinions:
    type: opinion_rest
    base_url: {sandbox}/opinions/api/v1
    api_key: sandbox-opinions-key-{code}
    timeout_seconds: 5
routes:
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
  max_attempts: 30
  base_delay_seconds: 0.1
  max_delay_seconds: 0.5
"""


@dataclass
class UrbanGateway:
    settings: HubSettings
    sandbox: str
    gateway: str
    tenant: str
    #: The tenant's NOTICe instance, and one polled that is no tenant's.
    instance: str
    stranger_instance: str

    def token(self, *scopes: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(self.settings, self.tenant, list(scopes))}


@asynccontextmanager
async def urban_gateway(
    tmp_path: Path, bootstrap: str, database: tuple[str, str | None], corpus_dir: Path
) -> AsyncIterator[UrbanGateway]:
    tenant = str(random.randrange(10000, 99999))
    instance, stranger = f"NOTICE-{uuid.uuid4().hex[:8]}", f"NOTICE-{uuid.uuid4().hex[:8]}"
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    settings = HubSettings(var_dir=tmp_path / "var", tenants_dir=tenants_dir, corpus_dir=corpus_dir)
    async with serving(build_sandbox(settings, Recorder())) as sandbox:
        (tenants_dir / f"{tenant}.yaml").write_text(
            TENANT_FILE.format(code=tenant, instance=instance, stranger=stranger, sandbox=sandbox),
            encoding="utf-8",
        )
        url, schema = database
        options = GatewayOptions(
            database_url=url,
            database_schema=schema,
            kafka_bootstrap_servers=bootstrap,
            group_id=await group_at_end(bootstrap, "gateway"),
            peppol_poll_seconds=0.1,
            notice_poll_seconds=0.1,
            opinion_poll_seconds=0.1,
        )
        async with serving(build_gateway(settings, options)) as gateway:
            yield UrbanGateway(settings, sandbox, gateway, tenant, instance, stranger)


async def publish(bootstrap: str, *events: CloudEvent) -> None:
    producer = make_producer(bootstrap, client_id="test-urban")
    await producer.start()
    try:
        for event in events:
            record = to_record(event)
            await producer.send_and_wait(
                record.topic, value=record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()
