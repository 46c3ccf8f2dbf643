"""The tenants the hub serves: one YAML file per commune or CPAS in ``HUB_TENANTS_DIR``.

The kernel reads only who the tenant is (code and name); the gateway reads the
same file's routes and connectors with its own, stricter model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contracts.identifiers import NOTICE_INSTANCE_CODE
from kernel.errors import ProblemError

_ENV_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}$]*))?\}")


class TenantConfigError(ValueError):
    """A tenant file is unreadable or wrong; the message names the file and the field."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the
    last, so a second ``routes:`` silently dropped the first (its events then consumed
    with no route) and a connector's name used twice dropped a connector."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            # Left out: a merge key (``<<: *defaults``), whose keys the mapping's own may
            # override on purpose; and a sequence or a mapping as a key, which the loader
            # refuses itself (not hashable).
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in first_lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} given twice (first at line {first_lines[key]})",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class Tenant:
    code: str
    name: str
    source_file: Path
    raw: dict[str, Any]
    #: The commune's instance code on the SPW's NOTICe (``notice: instance:``): the
    #: gateway routes NOTICe notifications by it and urban checks them against it.
    notice_instance: str | None = None


def load_tenants(directory: Path) -> dict[str, Tenant]:
    if not directory.is_dir():
        raise TenantConfigError(f"tenants directory {directory} does not exist (HUB_TENANTS_DIR)")
    tenants: dict[str, Tenant] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise TenantConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise TenantConfigError(f"{path}: expected a mapping with 'tenant' and 'name'")
        code = str(raw.get("tenant", ""))
        if not (len(code) == 5 and code.isascii() and code.isdigit()):
            raise TenantConfigError(f"{path}: 'tenant' must be a 5-digit NIS code, got {code!r}")
        if path.stem != code:
            raise TenantConfigError(f"{path}: the file of tenant {code} must be named {code}.yaml")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise TenantConfigError(f"{path}: 'name' is required")
        notice_instance = _notice_instance(path, raw)
        tenants[code] = Tenant(code, name, path, raw, notice_instance)
    if not tenants:
        raise TenantConfigError(f"no tenant file (*.yaml) in {directory}")
    instances: dict[str, str] = {}
    for code, tenant in tenants.items():
        if tenant.notice_instance is None:
            continue
        if tenant.notice_instance in instances:
            raise TenantConfigError(
                f"{tenant.source_file}: NOTICe instance {tenant.notice_instance!r} is also "
                f"tenant {instances[tenant.notice_instance]}'s"
            )
        instances[tenant.notice_instance] = code
    return tenants


def _notice_instance(path: Path, raw: dict[str, Any]) -> str | None:
    block = raw.get("notice")
    if block is None:
        return None
    instance = block.get("instance") if isinstance(block, dict) else None
    if not isinstance(instance, str) or not NOTICE_INSTANCE_CODE.fullmatch(instance):
        raise TenantConfigError(
            f"{path}: notice.instance must be the NOTICe instance code (1 to 40 letters,"
            " digits or hyphens)"
        )
    return instance


def expand_environment(value: Any, environ: dict[str, str] | None = None) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` references in a tenant file's values, nested ones
    innermost first; an unset variable without a default is a TenantConfigError."""
    environ = dict(os.environ) if environ is None else environ
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            raise TenantConfigError(f"environment variable {name} is not set")

        for _ in range(5):  # nesting depth we accept
            expanded = _ENV_REFERENCE.sub(replace, value)
            if expanded == value:
                break
            value = expanded
        return value
    if isinstance(value, dict):
        return {key: expand_environment(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_environment(item, environ) for item in value]
    return value


class UnknownTenant(ProblemError):
    def __init__(self, code: str) -> None:
        super().__init__(
            403,
            "unknown-tenant",
            "Unknown tenant",
            f"Tenant {code!r} is not configured on this hub; ask an operator to add it.",
        )
