"""The KSZ-BCSS over mutual TLS: the sandbox process's TLS listener asks for a tenant's
certificate, and the ksz_identify connector shows it."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.envelope import new_event
from contracts.events.urban import IdentificationRequested
from gateway.connectors.base import ConnectorContext, Delivery, DeliveryResult
from gateway.connectors.ksz_bcss import KszBcssConnector, create_connector
from gateway.errors import RetryableDeliveryError
from gateway.http import outbound_client
from hub.components import BY_NAME
from hub.supervisor import start_component, stop_all, wait_healthy
from kernel.kafka import free_port
from kernel.pki import ensure_sandbox_tls_identity, ensure_tenant_signing_identity
from kernel.settings import HubSettings

pytestmark = pytest.mark.integration

TENANT, LATER = "92137", "62063"
KNOWN = "85073003328"
PATH = "/ksz-bcss/WebServiceConnector"


@dataclass
class Sandbox:
    settings: HubSettings
    url: str
    tls_url: str


@pytest.fixture
async def sandbox(tmp_path: Path, corpus: Path) -> AsyncIterator[Sandbox]:
    """The sandbox as ``hub serve sandbox`` runs it, trusting the one tenant whose identity
    exists, its own TLS identity made at its start."""
    tls_port = free_port()
    tenants_dir = tmp_path / "tenants"
    tenants_dir.mkdir()
    settings = HubSettings(
        var_dir=tmp_path / "var",
        tenants_dir=tenants_dir,
        corpus_dir=corpus,
        sandbox_tls_port=tls_port,
    )
    ensure_tenant_signing_identity(settings.keys_dir, TENANT)  # its TLS one: the sandbox's own
    running = start_component(BY_NAME["sandbox"], settings, "127.0.0.1:1", port=free_port())
    try:
        await wait_healthy(running, "127.0.0.1")
        yield Sandbox(settings, running.url, settings.sandbox_tls_address())
    finally:
        stop_all([running], None)


def delivery(tenant: str) -> Delivery:
    data = IdentificationRequested(file_id="F-1", niss=KNOWN, declared_last_name="Lambert")
    event = new_event(data, tenant=tenant, subject="F-1", source="urn:test")
    return Delivery(f"{event.id}:applicant-identification", tenant, "r", event, 1)


def connector(
    sandbox: Sandbox,
    tenant: str,
    http: httpx.AsyncClient,
    settings: HubSettings | None = None,
    **config: object,
) -> KszBcssConnector:
    config = {
        "type": "ksz_identify",
        "endpoint": sandbox.tls_url + PATH,
        "user_id": "00000000097",
        "email": f"urbanisme@{tenant}.example.be",
        "timeout_seconds": 5,
        **config,
    }
    context = ConnectorContext(tenant, settings or sandbox.settings, http)
    built = create_connector(context, config)
    assert isinstance(built, KszBcssConnector)
    return built


async def identify(ksz: KszBcssConnector, tenant: str) -> DeliveryResult:
    try:
        return await ksz.deliver(delivery(tenant))
    finally:
        await ksz.aclose()


async def received(sandbox: Sandbox, http: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await http.get(f"{sandbox.url}/_sandbox/received?service=ksz_bcss")
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_the_tenant_shows_its_certificate_and_the_sandbox_knows_who_asked(
    sandbox: Sandbox,
) -> None:
    async with outbound_client(8) as http:
        result = await identify(connector(sandbox, TENANT, http), TENANT)
        # A tenant whose identity was made after the sandbox started is trusted too.
        ensure_tenant_signing_identity(sandbox.settings.keys_dir, LATER)
        later = await identify(connector(sandbox, LATER, http), LATER)
        items = await received(sandbox, http)
    assert result.answer is not None and result.answer["status"] == "found"
    assert later.answer is not None and later.answer["status"] == "found"
    assert {item["tenant"]: item["summary"]["client_certificate"] for item in items} == {
        TENANT: f"O={TENANT},CN=hub-{TENANT}",
        LATER: f"O={LATER},CN=hub-{LATER}",
    }


async def test_two_institutions_sending_the_same_key_each_get_their_own_answer(
    sandbox: Sandbox,
) -> None:
    ensure_tenant_signing_identity(sandbox.settings.keys_dir, LATER)
    shared_key = "same-event:applicant-identification"
    async with outbound_client(8) as http:
        for tenant in (TENANT, LATER):
            ksz = connector(sandbox, tenant, http)
            try:
                result = await ksz.deliver(replace(delivery(tenant), idempotency_key=shared_key))
            finally:
                await ksz.aclose()
            assert result.answer is not None and result.answer["status"] == "found"
        items = await received(sandbox, http)
    # The key is scoped by the TLS client's tenant: the second institution's request was
    # answered for itself, not with the first one's reply.
    assert sorted((item["tenant"], item["idempotency_key"]) for item in items) == [
        (LATER, f"{LATER}:{shared_key}"),
        (TENANT, f"{TENANT}:{shared_key}"),
    ]


async def test_without_a_certificate_the_sandbox_trusts_there_is_no_handshake(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # A client that trusts the sandbox's server but shows no certificate of its own.
    server_certificate = ensure_sandbox_tls_identity(sandbox.settings.keys_dir)[1]
    trusting = ssl.create_default_context(cafile=server_certificate)
    async with httpx.AsyncClient(verify=trusting) as anonymous:
        with pytest.raises(httpx.TransportError):
            await anonymous.post(
                sandbox.tls_url + PATH, content=b"<x/>", headers={"Content-Type": "text/xml"}
            )

    # A certificate of the tenant's, but not one of the hub's keys: not trusted.
    key_file, cert_file = ensure_tenant_signing_identity(tmp_path / "elsewhere", TENANT)
    async with outbound_client(8) as http:
        ksz = connector(sandbox, TENANT, http, key_file=str(key_file), cert_file=str(cert_file))
        with pytest.raises(RetryableDeliveryError, match="KSZ-BCSS unreachable") as refused:
            await identify(ksz, TENANT)
        items = await received(sandbox, http)
    # The operator reads which certificate the CBSS did not know.
    assert f"the client certificate shown: O={TENANT},CN=hub-{TENANT}" in str(refused.value)
    assert items == []


async def test_production_trusts_the_sandbox_only_when_told_by_ca_file(sandbox: Sandbox) -> None:
    production = HubSettings(
        environment="production",
        var_dir=sandbox.settings.var_dir,
        corpus_dir=sandbox.settings.corpus_dir,
        kafka_bootstrap_servers="kafka:9092",
        database_url="postgresql://hub@db/hub",
        jwks_url="https://idp.example.be/jwks",
        jwt_issuer="https://idp.example.be",
    )
    key_file, cert_file = ensure_tenant_signing_identity(sandbox.settings.keys_dir, TENANT)
    identity = {"key_file": str(key_file), "cert_file": str(cert_file)}
    server_certificate = ensure_sandbox_tls_identity(sandbox.settings.keys_dir)[1]
    async with outbound_client(8) as http:
        # The sandbox's development certificate is not a public authority's.
        with pytest.raises(RetryableDeliveryError, match="KSZ-BCSS unreachable") as untrusted:
            await identify(connector(sandbox, TENANT, http, production, **identity), TENANT)
        identity["ca_file"] = str(server_certificate)
        trusted = await identify(connector(sandbox, TENANT, http, production, **identity), TENANT)
    assert "certificate" in str(untrusted.value).lower()
    assert "client certificate shown" not in str(untrusted.value)  # the server's was refused
    assert trusted.answer is not None and trusted.answer["status"] == "found"


def test_a_tls_port_taken_stops_the_sandbox_saying_so(tmp_path: Path, corpus: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        environment = os.environ | {
            "HUB_VAR_DIR": str(tmp_path / "var"),
            "HUB_TENANTS_DIR": str(tmp_path),
            "HUB_CORPUS_DIR": str(corpus),
            "HUB_SANDBOX_TLS_PORT": str(taken.getsockname()[1]),
        }
        command = [sys.executable, "-m", "hub.cli", "serve", "sandbox", "--port", str(free_port())]
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr  # uvicorn's start-up failure
    assert "the TLS listener cannot start on port" in done.stdout + done.stderr
