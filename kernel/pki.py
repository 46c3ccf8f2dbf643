"""Development key material: each tenant's X.509 identity, and the sandbox's TLS one.

In development and tests every tenant signs its SOAP messages, and presents
itself to the KSZ-BCSS over TLS, with a self-signed certificate the hub makes
on first start (``hub up``), and the sandbox trusts exactly those
certificates. The sandbox's TLS listener (the KSZ-BCSS, which authenticates
the institution by its client certificate) shows a self-signed certificate
for 127.0.0.1, which the gateway trusts in development only. In production a
tenant's key and certificate come from the federal PKI and are named in its
connector settings, and targets show certificates of public authorities;
nothing here is used then.

Layout: ``<keys_dir>/tenants/<tenant>/ebox-signing.key`` (PKCS#8 PEM, mode
0600) and ``ebox-signing.crt`` (PEM), subject ``CN=hub-<tenant>, O=<tenant>``;
``<keys_dir>/sandbox-tls/tls.key`` and ``tls.crt``, for ``127.0.0.1``,
``localhost`` and ``sandbox`` (docker-compose's host name).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_FILE = "ebox-signing.key"
CERT_FILE = "ebox-signing.crt"
SANDBOX_TLS_DIR = "sandbox-tls"
SANDBOX_TLS_KEY_FILE = "tls.key"
SANDBOX_TLS_CERT_FILE = "tls.crt"
VALIDITY = timedelta(days=730)
_TENANT = re.compile(r"^[0-9]{5}$")


def tenant_identity_dir(keys_dir: Path, tenant: str) -> Path:
    if not _TENANT.match(tenant):  # the code becomes a path: never let "../" through
        raise ValueError(f"tenant code {tenant!r} is not a 5-digit NIS code")
    return keys_dir / "tenants" / tenant


def ensure_tenant_signing_identity(keys_dir: Path, tenant: str) -> tuple[Path, Path]:
    """Create the tenant's signing key and self-signed certificate once; return their paths."""
    directory = tenant_identity_dir(keys_dir, tenant)
    return _ensure_identity(
        directory, KEY_FILE, CERT_FILE, lambda key: _tenant_certificate(key, tenant)
    )


def sandbox_tls_files(keys_dir: Path) -> tuple[Path, Path]:
    """Where the sandbox's TLS key and certificate are (``ensure_sandbox_tls_identity``)."""
    directory = keys_dir / SANDBOX_TLS_DIR
    return directory / SANDBOX_TLS_KEY_FILE, directory / SANDBOX_TLS_CERT_FILE


def ensure_sandbox_tls_identity(keys_dir: Path) -> tuple[Path, Path]:
    """Create the sandbox's TLS server key and self-signed certificate once; their paths."""
    return _ensure_identity(
        keys_dir / SANDBOX_TLS_DIR, SANDBOX_TLS_KEY_FILE, SANDBOX_TLS_CERT_FILE, _server_certificate
    )


def _ensure_identity(
    directory: Path,
    key_file: str,
    cert_file: str,
    certificate_for: Callable[[rsa.RSAPrivateKey], x509.Certificate],
) -> tuple[Path, Path]:
    """A key and its certificate in ``directory``, made once.

    The pair is written into a private temporary directory which is then
    renamed into place in one step, so processes starting together never see
    (or mix) half an identity: the first rename wins, the others discard theirs.
    """
    key_path, cert_path = directory / key_file, directory / cert_file
    if directory.exists():
        # Renamed into place whole: an existing directory is complete or broken. (Looking
        # at the files first, then at the directory, raced with a process renaming it.)
        if key_path.is_file() and cert_path.is_file():
            return key_path, cert_path
        raise RuntimeError(
            f"{directory} exists but does not hold both {key_file} and {cert_file};"
            " remove it and the hub will make a new development identity"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{secrets.token_hex(8)}.tmp"
    staging.mkdir(mode=0o700)
    try:
        _write_identity(staging, key_file, cert_file, certificate_for)
        try:
            staging.rename(directory)
        except OSError:
            if not (key_path.is_file() and cert_path.is_file()):
                raise  # not a lost race: a real failure
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return key_path, cert_path


def _self_signed(key: rsa.RSAPrivateKey, name: x509.Name) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock differences
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _tenant_certificate(key: rsa.RSAPrivateKey, tenant: str) -> x509.Certificate:
    """Signs SOAP messages, and authenticates the tenant as a TLS client (no extended key
    usage: any purpose its key usage allows)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"hub-{tenant}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
        ]
    )
    return (
        _self_signed(key, name)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _server_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub sandbox")])
    return (
        _self_signed(key, name)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("sandbox"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_identity(
    directory: Path,
    key_file: str,
    cert_file: str,
    certificate_for: Callable[[rsa.RSAPrivateKey], x509.Certificate],
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = certificate_for(key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    descriptor = os.open(directory / key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_pem)
    (directory / cert_file).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def trusted_tenant_certificates(keys_dir: Path) -> list[x509.Certificate]:
    """Every tenant's development certificate: the sandbox's trust store.

    Production trust comes from the federal PKI, not from this directory.
    """
    certificates = []
    for path in sorted((keys_dir / "tenants").glob(f"*/{CERT_FILE}")):
        if not _TENANT.match(path.parent.name):  # e.g. another process's staging directory
            continue
        with contextlib.suppress(ValueError):  # a damaged file is simply not trusted
            certificates.append(x509.load_pem_x509_certificate(path.read_bytes()))
    return certificates


#: What ``identities_stamp`` returns.
IdentitiesStamp = tuple[int | None, tuple[str, ...]]


def identities_stamp(keys_dir: Path) -> IdentitiesStamp:
    """The tenants' identities at a glance: their folder's last change and its names (each
    identity is renamed into it whole); the same stamp, no identity appeared or was
    replaced since. The names as well as the time: a rename within the clock's tick of the
    last look leaves the time as it was."""
    folder = keys_dir / "tenants"
    try:
        return folder.stat().st_mtime_ns, tuple(sorted(os.listdir(folder)))
    except OSError:  # not there yet
        return None, ()


def tenant_of(certificate: x509.Certificate) -> str | None:
    """The tenant a hub certificate speaks for: its subject's O, when that is a NIS code."""
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        value = attribute.value
        if isinstance(value, str) and _TENANT.match(value):
            return value
    return None
