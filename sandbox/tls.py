"""The sandbox's TLS listener, which asks every client for its certificate.

The KSZ-BCSS authenticates an institution on the connection, by its client
certificate, not in the SOAP message. The sandbox models that with a second
listener on the same process and application (``HubSettings.sandbox_tls_port``):
TLS with the sandbox's development certificate (``kernel.pki``), a client
certificate required, and trusted only when it is one of the tenants'
development certificates (``ClientCertificateTrust``). A client without one,
or with another, fails the handshake, as at the real service.

The application learns who connected through the ASGI TLS extension
(``scope["extensions"]["tls"]``: ``client_cert_name``, ``client_cert_chain``),
which uvicorn does not fill: each connection's protocol is wrapped so that its
requests carry it. ``client_tenant`` reads it back for a route.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Receive, Scope, Send

from kernel.pki import (
    IdentitiesStamp,
    ensure_sandbox_tls_identity,
    identities_stamp,
    tenant_of,
    trusted_tenant_certificates,
)
from kernel.settings import HubSettings

log = logging.getLogger(__name__)


class ClientCertificateTrust:
    """The listener's TLS settings: the sandbox's certificate (made here if ``hub up`` or
    ``hub topics`` has not made it yet), a client certificate required, and trusted when
    it is one of the tenants' development certificates, those made after the sandbox
    started included (``refresh``, before each connection's handshake)."""

    def __init__(self, keys_dir: Path) -> None:
        key_file, cert_file = ensure_sandbox_tls_identity(keys_dir)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_file, key_file)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self._keys_dir = keys_dir
        self._read_at: IdentitiesStamp | None = None
        self.refresh()

    def refresh(self) -> None:
        """Trust the tenants' certificates made since the last look (a glance at their folder
        when none was). A certificate once trusted stays so until the sandbox restarts."""
        stamp = identities_stamp(self._keys_dir)
        if stamp == self._read_at:
            return
        self._read_at = stamp
        trusted = trusted_tenant_certificates(self._keys_dir)
        if trusted:
            self.context.load_verify_locations(
                cadata="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in trusted)
            )


def client_tenant(scope: Scope) -> tuple[str | None, str | None]:
    """The client certificate's subject and the tenant it speaks for, when the request came
    through the TLS listener; (None, None) otherwise."""
    tls = scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None, None
    certificate = x509.load_pem_x509_certificate(chain[0].encode())
    return tls.get("client_cert_name"), tenant_of(certificate)


def _with_client_certificate(app: ASGIApp, certificate: bytes | None) -> ASGIApp:
    """``app`` with the connection's client certificate (DER) in each request's scope."""
    if certificate is None:
        return app
    subject = x509.load_der_x509_certificate(certificate).subject.rfc4514_string()
    tls = {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(certificate)],
        "client_cert_name": subject,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }

    async def app_with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["extensions"] = {**scope.get("extensions", {}), "tls": tls}
        await app(scope, receive, send)

    return app_with_tls


class _ClientCertificateProtocol(asyncio.Protocol):
    """uvicorn's protocol for one connection, its application told the client certificate."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self._inner.app = _with_client_certificate(self._inner.app, certificate)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def start_tls_listener(
    server: uvicorn.Server, settings: HubSettings
) -> asyncio.base_events.Server | None:
    """Serve ``server``'s application on ``settings.sandbox_tls_port`` too, with client
    certificates; added to the server's own listeners, so that it stops with them."""
    if not settings.sandbox_tls_port:
        return None
    trust = ClientCertificateTrust(settings.keys_dir)
    config = server.config

    def create_protocol() -> asyncio.Protocol:
        # Called as the connection is accepted, before its TLS handshake. Never raising: a
        # protocol factory that raised left uvloop's listener accepting nothing more.
        try:
            trust.refresh()
        except Exception:
            log.exception("sandbox: could not read the tenants' certificates; trusting the last")
        make: Callable[..., Any] = config.http_protocol_class
        return _ClientCertificateProtocol(
            make(config=config, server_state=server.server_state, app_state=server.lifespan.state)
        )

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        create_protocol, host=config.host, port=settings.sandbox_tls_port, ssl=trust.context
    )
    server.servers.append(listener)
    log.info(
        "sandbox: TLS listener with client certificates on https://%s:%d",
        config.host,
        settings.sandbox_tls_port,
    )
    return listener
