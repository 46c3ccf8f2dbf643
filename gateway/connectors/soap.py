# zeep ships py.typed but leaves most functions unannotated; calling them is intended here.
"""The plumbing every signed SOAP connector shares: zeep over the gateway's pool, signed.

``SignedSoapClient`` holds one binding of a WSDL, signs each request with the
tenant's X.509 certificate (``gateway.wssecurity.X509Signature``, the one
signer of the hub) and posts it through the gateway's shared httpx pool with
the connector's own timeout. A connector builds the signed envelope
(``envelope``), may wrap it (the e-Box sends SOAP with Attachments), posts it
(``post``) and reads the answer (``answer``, which raises zeep's ``Fault``);
``call`` does the three for a plain ``text/xml`` request. Errors are left to
``gateway.errors.translate_transport_errors`` around the caller's I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from lxml import etree
from pydantic import SecretStr, model_validator
from zeep import AsyncClient
from zeep import Settings as ZeepSettings
from zeep.transports import AsyncTransport
from zeep.wsdl.bindings.soap import SoapBinding

from gateway.connectors.base import ConnectorContext, ConnectorSettings
from gateway.errors import RETRYABLE_STATUS, error_for_status
from gateway.wssecurity import X509Signature
from kernel.logs import mask_national_numbers
from kernel.metrics import CERTIFICATE_EXPIRY
from kernel.pki import ensure_tenant_signing_identity

log = logging.getLogger(__name__)

XML_CONTENT_TYPE = "text/xml; charset=utf-8"


class SharedPoolTransport(AsyncTransport):
    """zeep's httpx transport over the gateway's shared pool, with this connector's timeout."""

    def __init__(self, http: httpx.AsyncClient, timeout_seconds: float) -> None:
        headers = http.headers.copy()
        super().__init__(client=http)  # type: ignore[no-untyped-call]  # zeep: untyped
        http.headers = headers  # AsyncTransport replaces the client's headers; the pool is shared
        self._timeout = httpx.Timeout(timeout_seconds)

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        # No logging of the message here (zeep's would): it holds personal data.
        response: httpx.Response = await self.client.post(
            address, content=message, headers=headers, timeout=self._timeout
        )
        if response.status_code in RETRYABLE_STATUS and response.status_code != 500:
            # The HTTP layer's answer (a proxy's 502 or 503, a 429), not the service's: a
            # SOAP 1.1 service answers 200, or 500 with its Fault. Given to zeep, a body of
            # XML that is no Fault became an "Unknown fault", taken for a permanent one.
            raise error_for_status(response.status_code, response.text[:300], response.headers)
        return response

    async def aclose(self) -> None:
        self.wsdl_client.close()  # only the WSDL loader is ours; the gateway closes the pool


class SigningSettings(ConnectorSettings):
    """The settings of a connector that signs: the tenant's key and certificate (PEM).

    Unset in development: the hub's self-signed tenant identity (kernel/pki.py).
    Production names the ones of the PKI the target trusts.
    """

    key_file: Path | None = None
    cert_file: Path | None = None
    #: The passphrase of an encrypted key file, as a PKI often delivers one; written
    #: ``${AN_ENVIRONMENT_VARIABLE}`` so that the tenant file holds no secret.
    key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _key_and_certificate_together(self) -> SigningSettings:
        if (self.key_file is None) != (self.cert_file is None):
            raise ValueError("key_file and cert_file are given together, or neither")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password is the passphrase of key_file, which is not given")
        return self


@dataclass(frozen=True)
class TenantCertificate:
    """A certificate a connector signs or authenticates with, as the operators' API lists it
    (``GET /v1/certificates``); the subject's national numbers masked."""

    subject: str
    expires_at: datetime


@dataclass(frozen=True)
class TenantIdentity:
    key_file: Path
    cert_file: Path
    #: None when the certificate cannot be read (the connector then says why).
    certificate: TenantCertificate | None
    #: The key file's passphrase, if it is encrypted.
    key_password: str | None = None


def signing_files(
    ctx: ConnectorContext, settings: SigningSettings, type_name: str
) -> TenantIdentity:
    """The tenant's key and certificate, to sign or to show as a TLS client: configured ones,
    or in development the hub's self-signed tenant identity (``kernel/pki.py``); their expiry
    watched (``watch_expiry``)."""
    key_file, cert_file = settings.key_file, settings.cert_file
    password = settings.key_password.get_secret_value() if settings.key_password else None
    if not (key_file and cert_file):
        if ctx.hub.environment == "production":
            raise ValueError(
                f"tenant {ctx.tenant}: the {type_name} connector needs key_file and cert_file"
                " in production (the tenant's certificate from the federal PKI)"
            )
        key_file, cert_file = ensure_tenant_signing_identity(ctx.hub.keys_dir, ctx.tenant)
    certificate = watch_expiry(ctx.tenant, type_name, ctx.name, cert_file)
    return TenantIdentity(key_file, cert_file, certificate, password)


#: A certificate that stops being valid within this long is logged as a warning at start.
EXPIRY_WARNING = timedelta(days=30)


def watch_expiry(
    tenant: str, type_name: str, name: str, cert_file: Path
) -> TenantCertificate | None:
    """Publish when the certificate stops being valid (``hub_certificate_expiry_timestamp_
    seconds``, for an alert weeks ahead), and say so at start when that is soon or past: a
    target refusing an expired certificate answers with a fault or a cut connection, which
    does not say why. An unreadable file is left to the connector, which says so."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    expires = certificate.not_valid_after_utc
    # By the connector's name too: a tenant may have two of one type (two e-Box senders).
    CERTIFICATE_EXPIRY.labels(tenant, type_name, name).set(expires.timestamp())
    left = expires - datetime.now(UTC)
    # A person's certificate (an eID's) carries the national number in its subject.
    subject = mask_national_numbers(certificate.subject.rfc4514_string())
    if left <= timedelta(0):
        log.error(
            "tenant %s: the %s certificate %s expired on %s; renew it (%s)",
            tenant,
            type_name,
            subject,
            expires.date(),
            cert_file,
        )
    elif left <= EXPIRY_WARNING:
        log.warning(
            "tenant %s: the %s certificate %s expires on %s, in %d days; renew it (%s)",
            tenant,
            type_name,
            subject,
            expires.date(),
            left.days,
            cert_file,
        )
    return TenantCertificate(subject, expires)


class SignedSoapClient:
    def __init__(
        self,
        *,
        wsdl: str,
        binding: str,
        endpoint: str,
        http: httpx.AsyncClient,
        timeout_seconds: float,
        identity: TenantIdentity,
    ) -> None:
        self.endpoint = endpoint
        self.transport = SharedPoolTransport(http, timeout_seconds)
        self.client = AsyncClient(
            wsdl,
            transport=self.transport,
            wsse=X509Signature.from_files(
                identity.key_file, identity.cert_file, password=identity.key_password
            ),
            settings=ZeepSettings(forbid_dtd=True, forbid_entities=True, forbid_external=True),
        )
        self._service = self.client.create_service(binding, endpoint)
        found = self.client.wsdl.bindings[binding]
        if not isinstance(found, SoapBinding):
            raise ValueError(f"{binding} of {wsdl} is not a SOAP binding")
        self._binding = found

    def envelope(self, operation: str, **request: Any) -> bytes:
        """The operation's request envelope, signed, serialised with its XML declaration."""
        element = self.client.create_message(self._service, operation, **request)
        return serialise(element)

    async def post(self, payload: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.transport.post(self.endpoint, payload, headers)

    def answer(self, operation: str, response: httpx.Response) -> Any:
        """The operation's answer as zeep reads it; a SOAP Fault raises zeep's ``Fault``."""
        return self._binding.process_reply(
            self.client,
            self._binding.get(operation),
            self.transport.new_response(response),  # type: ignore[no-untyped-call]
        )

    async def call(self, operation: str, headers: dict[str, str], **request: Any) -> Any:
        """A plain SOAP 1.1 request (``text/xml``) and its answer."""
        soap_action = self._binding.get(operation).soapaction or ""
        response = await self.post(
            self.envelope(operation, **request),
            {**headers, "Content-Type": XML_CONTENT_TYPE, "SOAPAction": f'"{soap_action}"'},
        )
        return self.answer(operation, response)

    async def aclose(self) -> None:
        await self.transport.aclose()


def serialise(envelope: etree._Element) -> bytes:
    serialised: bytes = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return serialised
