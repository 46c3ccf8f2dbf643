"""Routing tables: per tenant, which event types go to which connector.

Each tenant's YAML file (``HUB_TENANTS_DIR/<tenant>.yaml``) names its
connectors (a type and its settings) and its routes (event type → connector).
``load_routing`` validates all of it at start and raises one
``RoutingConfigError`` listing every problem with its file and field, so an
operator fixes a tenant file before any event is consumed.

String values may use ``${VAR}`` or ``${VAR:-default}``: the same file then
serves the embedded hub and docker-compose (e.g. ``${HUB_SANDBOX_URL}``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.events import event_class_for
from kernel.tenants import Tenant

# Innermost references first: a default may itself hold a reference.
_ENV_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}$]*))?\}")


class RoutingConfigError(ValueError):
    pass


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(default=8, ge=1, le=100)
    base_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_delay_seconds: float = Field(default=300.0, gt=0, le=86_400)


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    event_type: str
    connector: str


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # the connector's own model checks the rest
    type: str


class TenantRoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    name: str
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    #: Free-form settings read by the services (not by the gateway).
    services: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    tenant: str
    name: str
    event_type: str
    connector_name: str
    connector_type: str


@dataclass
class RoutingTable:
    routes: dict[tuple[str, str], list[Route]] = field(default_factory=dict)
    connector_settings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    retry: dict[str, RetryPolicy] = field(default_factory=dict)

    def routes_for(self, tenant: str, event_type: str) -> list[Route]:
        return self.routes.get((tenant, event_type), [])

    def route(self, tenant: str, name: str) -> Route | None:
        for routes in self.routes.values():
            for route in routes:
                if route.tenant == tenant and route.name == name:
                    return route
        return None

    def retry_policy(self, tenant: str) -> RetryPolicy:
        return self.retry.get(tenant, RetryPolicy())

    def event_types(self) -> set[str]:
        return {event_type for (_, event_type) in self.routes}


def expand_environment(value: Any, environ: dict[str, str] | None = None) -> Any:
    environ = dict(os.environ) if environ is None else environ
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ and environ[name] != "":
                return environ[name]
            if default is not None:
                return default
            raise RoutingConfigError(f"environment variable {name} is not set")

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


def load_routing(
    tenants: dict[str, Tenant],
    known_connector_types: set[str],
    environ: dict[str, str] | None = None,
) -> RoutingTable:
    table = RoutingTable()
    problems: list[str] = []
    for code, tenant in tenants.items():
        where = str(tenant.source_file)
        try:
            parsed = TenantRoutingFile.model_validate(expand_environment(tenant.raw, environ))
        except RoutingConfigError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except ValidationError as exc:
            for error in exc.errors():
                location = ".".join(str(part) for part in error["loc"])
                problems.append(f"{where}: {location}: {error['msg']}")
            continue
        table.retry[code] = parsed.retry
        for name, connector in parsed.connectors.items():
            if connector.type not in known_connector_types:
                problems.append(
                    f"{where}: connectors.{name}.type: unknown connector type {connector.type!r} "
                    f"(known: {', '.join(sorted(known_connector_types))})"
                )
                continue
            table.connector_settings[(code, name)] = connector.model_dump()
        seen_names: set[str] = set()
        for index, route in enumerate(parsed.routes):
            at = f"{where}: routes[{index}] ({route.name})"
            if route.name in seen_names:
                problems.append(f"{at}: route name used twice")
            seen_names.add(route.name)
            if event_class_for(route.event_type) is None:
                problems.append(f"{at}: unknown event type {route.event_type!r}")
            if route.connector not in parsed.connectors:
                problems.append(f"{at}: no connector named {route.connector!r} in this file")
                continue
            table.routes.setdefault((code, route.event_type), []).append(
                Route(
                    tenant=code,
                    name=route.name,
                    event_type=route.event_type,
                    connector_name=route.connector,
                    connector_type=parsed.connectors[route.connector].type,
                )
            )
    if problems:
        raise RoutingConfigError(
            "the routing tables have problems:\n  - " + "\n  - ".join(problems)
        )
    return table
