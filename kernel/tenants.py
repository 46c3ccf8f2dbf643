"""The tenants the hub serves: one YAML file per commune or CPAS in ``HUB_TENANTS_DIR``.

The kernel reads only who the tenant is (code and name); the gateway reads the
same file's routes and connectors with its own, stricter model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kernel.errors import ProblemError


class TenantConfigError(ValueError):
    """A tenant file is unreadable or wrong; the message names the file and the field."""


@dataclass(frozen=True)
class Tenant:
    code: str
    name: str
    source_file: Path
    raw: dict[str, Any]


def load_tenants(directory: Path) -> dict[str, Tenant]:
    if not directory.is_dir():
        raise TenantConfigError(f"tenants directory {directory} does not exist (HUB_TENANTS_DIR)")
    tenants: dict[str, Tenant] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise TenantConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise TenantConfigError(f"{path}: expected a mapping with 'tenant' and 'name'")
        code = str(raw.get("tenant", ""))
        if not (len(code) == 5 and code.isdigit()):
            raise TenantConfigError(f"{path}: 'tenant' must be a 5-digit NIS code, got {code!r}")
        if path.stem != code:
            raise TenantConfigError(f"{path}: the file of tenant {code} must be named {code}.yaml")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise TenantConfigError(f"{path}: 'name' is required")
        tenants[code] = Tenant(code=code, name=name, source_file=path, raw=raw)
    if not tenants:
        raise TenantConfigError(f"no tenant file (*.yaml) in {directory}")
    return tenants


class UnknownTenant(ProblemError):
    def __init__(self, code: str) -> None:
        super().__init__(
            403,
            "unknown-tenant",
            "Unknown tenant",
            f"Tenant {code!r} is not configured on this hub; ask an operator to add it.",
        )
