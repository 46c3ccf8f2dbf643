"""A tenant's certificate: when it stops being valid is published and, when soon, said."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from gateway.connectors.base import ConnectorContext
from gateway.connectors.soap import SigningSettings, signing_files
from kernel.settings import HubSettings

#: A person's certificate (an eID's) names its holder by national number.
HOLDER_NISS = "85073003328"


def identity(
    folder: Path, tenant: str, valid_for: timedelta, holder: str | None = None
) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant)]
    if holder:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, holder))
    name = x509.Name(attributes)
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=365))
        .not_valid_after(now + valid_for)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True)
    key_file, cert_file = folder / "tls.key", folder / "tls.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def expiry(tenant: str, connector: str, name: str) -> float | None:
    return REGISTRY.get_sample_value(
        "hub_certificate_expiry_timestamp_seconds",
        {"tenant": tenant, "connector": connector, "name": name},
    )


def files(key_file: Path, cert_file: Path) -> SigningSettings:
    return SigningSettings(key_file=key_file, cert_file=cert_file)


async def test_a_certificate_near_or_past_its_end_is_said_at_start_and_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    async with httpx.AsyncClient() as http:
        settings = HubSettings(var_dir=tmp_path / "var")
        soon = identity(tmp_path / "soon", "11111", timedelta(days=10, hours=1), HOLDER_NISS)
        past = identity(tmp_path / "past", "22222", timedelta(days=-2))

        near = signing_files(
            ConnectorContext("11111", settings, http, "ksz"), files(*soon), "ksz_identify"
        )
        signing_files(ConnectorContext("22222", settings, http, "ebox"), files(*past), "ebox_soap")
        # The development identity has two years ahead of it: published, nothing said. A
        # second connector of the same type for that tenant is published apart.
        development = signing_files(
            ConnectorContext("22222", settings, http, "ebox-cpas"), SigningSettings(), "ebox_soap"
        )

    said = {(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records}
    assert said == {("WARNING", "tenant 11111"), ("ERROR", "tenant 22222")}
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "the ksz_identify certificate 2.5.4.5=85*********,O=11111" in warning
    assert "in 10 days" in warning
    assert HOLDER_NISS not in warning  # masked, as everywhere in the logs
    for tenant, connector, name, cert_file in (
        ("11111", "ksz_identify", "ksz", soon[1]),
        ("22222", "ebox_soap", "ebox", past[1]),
        ("22222", "ebox_soap", "ebox-cpas", development.cert_file),
    ):
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert expiry(tenant, connector, name) == certificate.not_valid_after_utc.timestamp()
    # What the operators' API lists (GET /v1/certificates), masked as the log.
    assert near.certificate is not None
    assert near.certificate.subject == "2.5.4.5=85*********,O=11111"
    assert near.certificate.expires_at.timestamp() == expiry("11111", "ksz_identify", "ksz")
