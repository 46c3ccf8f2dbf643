"""Development signing identities of the tenants (kernel/pki.py)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernel.pki import (
    ensure_sandbox_tls_identity,
    ensure_tenant_signing_identity,
    identities_stamp,
    sandbox_tls_files,
    tenant_of,
    trusted_tenant_certificates,
)


def test_identity_is_made_once_with_a_private_key_and_a_two_year_certificate(
    tmp_path: Path,
) -> None:
    key_path, cert_path = ensure_tenant_signing_identity(tmp_path, "92137")

    assert key_path == tmp_path / "tenants" / "92137" / "ebox-signing.key"
    assert cert_path == tmp_path / "tenants" / "92137" / "ebox-signing.crt"
    assert key_path.stat().st_mode & 0o777 == 0o600
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    name = certificate.subject
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hub-92137"
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "92137"
    assert certificate.issuer == certificate.subject  # self-signed
    lifetime = certificate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=729) < lifetime <= timedelta(days=730)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == certificate.public_key()
    assert tenant_of(certificate) == "92137"

    before = (key_path.read_bytes(), cert_path.read_bytes())
    assert ensure_tenant_signing_identity(tmp_path, "92137") == (key_path, cert_path)
    assert (key_path.read_bytes(), cert_path.read_bytes()) == before


def test_processes_starting_together_agree_on_one_matching_pair(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda _: ensure_tenant_signing_identity(tmp_path, "62063"), range(6))
        )

    assert len(set(results)) == 1
    key_path, cert_path = results[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert key.public_key() == certificate.public_key()
    assert sorted(p.name for p in (tmp_path / "tenants").iterdir()) == ["62063"]  # no leftovers


def test_trust_store_lists_every_tenant_certificate(tmp_path: Path) -> None:
    assert trusted_tenant_certificates(tmp_path) == []
    ensure_tenant_signing_identity(tmp_path, "92137")
    ensure_tenant_signing_identity(tmp_path, "62063")

    assert sorted(tenant_of(c) or "" for c in trusted_tenant_certificates(tmp_path)) == [
        "62063",
        "92137",
    ]


@pytest.mark.parametrize("tenant", ["../x", "9213", "92137/..", ""])
def test_tenant_code_never_becomes_an_arbitrary_path(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(ValueError, match="5-digit"):
        ensure_tenant_signing_identity(tmp_path, tenant)


def test_the_sandbox_tls_identity_names_the_hosts_it_is_reached_at_and_is_made_once(
    tmp_path: Path,
) -> None:
    key_path, cert_path = ensure_sandbox_tls_identity(tmp_path)

    assert (key_path, cert_path) == sandbox_tls_files(tmp_path)
    assert key_path.stat().st_mode & 0o777 == 0o600
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "sandbox"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert tenant_of(certificate) is None  # not a tenant's: the sandbox never trusts it
    assert trusted_tenant_certificates(tmp_path) == []

    before = cert_path.read_bytes()
    assert ensure_sandbox_tls_identity(tmp_path) == (key_path, cert_path)
    assert cert_path.read_bytes() == before


def test_a_tenant_identity_made_within_the_clocks_tick_still_changes_the_stamp(
    tmp_path: Path,
) -> None:
    assert identities_stamp(tmp_path) == (None, ())
    ensure_tenant_signing_identity(tmp_path, "92137")
    before = identities_stamp(tmp_path)
    tenants = tmp_path / "tenants"
    changed_at = tenants.stat().st_mtime_ns

    ensure_tenant_signing_identity(tmp_path, "62063")
    os.utime(tenants, ns=(changed_at, changed_at))  # as if renamed within the same tick
    after = identities_stamp(tmp_path)

    assert after != before and after[1] == ("62063", "92137")
    assert identities_stamp(tmp_path) == after  # nothing new: the same
