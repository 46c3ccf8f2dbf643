"""The KSZ-BCSS over mutual TLS: the sandbox process's TLS listener asks for a tenant's
certificate, and the ksz_identify connector shows it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.urban import IdentificationRequested
from gateway.connectors.base import ConnectorContext, Delivery
from gateway.connectors.ksz_bcss import KszBcssConnector, create_connector
from gateway.errors import RetryableDeliveryError
from gateway.http import outbound_client
from hub.components import BY_NAME
from hub.supervisor import start_component, stop_all, wait_healthy
from kernel.kafka import free_port
from kernel.pki import ensure_sandbox_tls_identity, ensure_tenant_signing_identity
from kernel.settings import HubSettings

pytestmark = pytest.mark.integration

TENANT, STRANGER = "92137", "62063"
KNOWN = "85073003328"
PATH = "/ksz-bcss/WebServiceConnector"


@dataclass
class Sandbox:
    settings: HubSettings
    url: str
    tls_url: str


@pytest.fixture
async def sandbox(tmp_path: Path, corpus: Path) -> AsyncIterator[Sandbox]:
    """The sandbox as ``hub up`` runs it, trusting the one tenant whose identity exists."""
    tls_port = free_port()
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    settings = HubSettings(
        var_dir=tmp_path / "var",
        tenants_dir=tenants_dir,
        corpus_dir=corpus,
        sandbox_tls_port=tls_port,
        sandbox_tls_url=f"https://127.0.0.1:{tls_port}",
    )
    ensure_tenant_signing_identity(settings.keys_dir, TENANT)
    ensure_sandbox_tls_identity(settings.keys_dir)
    running = start_component(BY_NAME["sandbox"], settings, "127.0.0.1:1", port=free_port())
    try:
        await wait_healthy(running, "127.0.0.1")
        yield Sandbox(settings, running.url, settings.sandbox_tls_url)
    finally:
        stop_all([running], None)


def delivery(tenant: str) -> Delivery:
    data = IdentificationRequested(file_id="F-1", niss=KNOWN, declared_last_name="Lambert")
    event = new_event(data, tenant=tenant, subject="F-1", source="urn:test")
    return Delivery(f"{event.id}:applicant-identification", tenant, "r", event, 1)


def connector(sandbox: Sandbox, tenant: str, http: httpx.AsyncClient) -> KszBcssConnector:
    config = {
        "type": "ksz_identify",
        "endpoint": sandbox.tls_url + PATH,
        "user_id": "00000000097",
        "email": f"urbanisme@{tenant}.example.be",
        "timeout_seconds": 5,
    }
    built = create_connector(ConnectorContext(tenant, sandbox.settings, http), config)
    assert isinstance(built, KszBcssConnector)
    return built


async def test_the_tenant_shows_its_certificate_and_the_sandbox_knows_who_asked(
    sandbox: Sandbox,
) -> None:
    async with outbound_client(8) as http:
        ksz = connector(sandbox, TENANT, http)
        try:
            result = await ksz.deliver(delivery(TENANT))
        finally:
            await ksz.aclose()
        received = (await http.get(f"{sandbox.url}/_sandbox/received?service=ksz_bcss")).json()
    assert result.answer is not None and result.answer["status"] == "found"
    [item] = received["items"]
    assert item["tenant"] == TENANT
    assert item["summary"]["client_certificate"] == f"O={TENANT},CN=hub-{TENANT}"


async def test_without_a_certificate_the_sandbox_trusts_there_is_no_handshake(
    sandbox: Sandbox,
) -> None:
    # A client that trusts the sandbox's server but shows no certificate of its own.
    server_certificate = ensure_sandbox_tls_identity(sandbox.settings.keys_dir)[1]
    trusting = ssl.create_default_context(cafile=server_certificate)
    async with httpx.AsyncClient(verify=trusting) as anonymous:
        with pytest.raises(httpx.TransportError):
            await anonymous.post(
                sandbox.tls_url + PATH, content=b"<x/>", headers={"Content-Type": "text/xml"}
            )

    # A tenant whose identity was made after the sandbox started: not among those it trusts.
    ensure_tenant_signing_identity(sandbox.settings.keys_dir, STRANGER)
    async with outbound_client(8) as http:
        ksz = connector(sandbox, STRANGER, http)
        try:
            with pytest.raises(RetryableDeliveryError, match="KSZ-BCSS unreachable") as refused:
                await ksz.deliver(delivery(STRANGER))
        finally:
            await ksz.aclose()
        received = (await http.get(f"{sandbox.url}/_sandbox/received?service=ksz_bcss")).json()
    # The operator reads which certificate the CBSS did not know.
    assert f"the client certificate shown: O={STRANGER},CN=hub-{STRANGER}" in str(refused.value)
    assert received["items"] == []
