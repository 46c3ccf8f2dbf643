"""Keys as tests need them: a tenant's development key, encrypted as a PKI delivers one."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from kernel.pki import ensure_tenant_signing_identity


def encrypted_identity(keys_dir: Path, tenant: str, passphrase: bytes) -> tuple[Path, Path]:
    """The tenant's development key (encrypted with ``passphrase``, beside ``keys_dir``)
    and certificate."""
    key_file, cert_file = ensure_tenant_signing_identity(keys_dir, tenant)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    encrypted = keys_dir.parent / f"encrypted-key-{tenant}.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return encrypted, cert_file
