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

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contracts.events import event_class_for
from gateway.connectors.base import delivered_event_types
from kernel.tenants import Tenant, TenantConfigError, expand_environment

# Innermost references first: a default may itself hold a reference.


class RoutingConfigError(ValueError):
    pass


class RetryPolicy(BaseModel):
    """By default, 20 attempts over one to two hours (1, 2, 4… then every 5-10 minutes):
    a target's maintenance window turns no document dead."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(default=20, ge=1, le=100)
    base_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_delay_seconds: float = Field(default=600.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _max_delay_not_below_base(self) -> RetryPolicy:
        # Every wait is capped at max_delay_seconds: below the base (600 and 1, swapped),
        # 20 attempts span some 15 s and a target's maintenance window turns every
        # document dead.
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("max_delay_seconds must not be below base_delay_seconds")
        return self


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    event_type: str
    connector: str
    #: This route's own retry policy, e.g. for a vendor that acknowledges within
    #: hours (a file exchange); the tenant's ``retry`` otherwise.
    retry: RetryPolicy | None = None


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # the connector's own model checks the rest
    type: str


class PeppolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: "<EAS scheme>:<identifier>", e.g. "0208:0216987614" (a Belgian enterprise number).
    participant: str = Field(pattern=r"^[0-9]{4}:[^\s:]{1,200}$")
    #: The connector (of type ``peppol_ap``, in this file) whose access point account
    #: holds this participant's inbox: the gateway polls it. None: nothing is polled.
    access_point: str | None = None


class TenantRoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    name: str
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    peppol: PeppolSettings | None = None
    #: The NOTICe instance (``notice: instance:``), read by ``kernel.tenants``.
    notice: dict[str, Any] | None = None
    #: Free-form settings read by the services (not by the gateway).
    services: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    tenant: str
    name: str
    event_type: str
    connector_name: str
    connector_type: str
    retry: RetryPolicy | None = None


@dataclass
class RoutingTable:
    routes: dict[tuple[str, str], list[Route]] = field(default_factory=dict)
    connector_settings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    retry: dict[str, RetryPolicy] = field(default_factory=dict)
    #: tenant → its Peppol participant ("0208:0216987614").
    participants: dict[str, str] = field(default_factory=dict)
    #: tenant → the name of its connector whose access point inbox the gateway polls.
    peppol_inboxes: dict[str, str] = field(default_factory=dict)

    def routes_for(self, tenant: str, event_type: str) -> list[Route]:
        return self.routes.get((tenant, event_type), [])

    def route(self, tenant: str, name: str) -> Route | None:
        for routes in self.routes.values():
            for route in routes:
                if route.tenant == tenant and route.name == name:
                    return route
        return None

    def retry_policy(self, route: Route) -> RetryPolicy:
        """The route's own policy if it has one, else its tenant's."""
        return route.retry or self.retry.get(route.tenant, RetryPolicy())

    def event_types(self) -> set[str]:
        return {event_type for (_, event_type) in self.routes}

    def tenants(self) -> set[str]:
        """The tenants with a route."""
        return {tenant for (tenant, _) in self.routes}


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
        except TenantConfigError as exc:
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
        if parsed.peppol is not None:
            table.participants[code] = parsed.peppol.participant
            inbox = parsed.peppol.access_point
            if inbox is not None:
                if parsed.connectors.get(inbox, ConnectorConfig(type="")).type != "peppol_ap":
                    problems.append(
                        f"{where}: peppol.access_point: no connector named {inbox!r} of type"
                        " peppol_ap in this file"
                    )
                else:
                    table.peppol_inboxes[code] = inbox
        seen_names: set[str] = set()
        # The route that sends each event type to each connector.
        seen_pairs: dict[tuple[str, str], str] = {}
        for index, route in enumerate(parsed.routes):
            at = f"{where}: routes[{index}] ({route.name})"
            if route.name in seen_names:
                problems.append(f"{at}: route name used twice")
            seen_names.add(route.name)
            # Each route has its own idempotency keys: a copied route would deliver every
            # event twice (two e-Box letters). One event type to two connectors is fine.
            first = seen_pairs.setdefault((route.event_type, route.connector), route.name)
            if first != route.name:
                problems.append(
                    f"{at}: routes {first!r} and {route.name!r} both send {route.event_type}"
                    f" to connector {route.connector!r}: each event would be delivered twice"
                )
            if event_class_for(route.event_type) is None:
                problems.append(f"{at}: unknown event type {route.event_type!r}")
            if route.connector not in parsed.connectors:
                problems.append(f"{at}: no connector named {route.connector!r} in this file")
                continue
            connector_type = parsed.connectors[route.connector].type
            delivered = delivered_event_types(connector_type)
            if delivered is not None and route.event_type not in delivered:
                problems.append(
                    f"{at}: connector {route.connector!r} ({connector_type}) delivers"
                    f" {', '.join(sorted(delivered))}, not {route.event_type}"
                )
            table.routes.setdefault((code, route.event_type), []).append(
                Route(
                    tenant=code,
                    name=route.name,
                    event_type=route.event_type,
                    connector_name=route.connector,
                    connector_type=parsed.connectors[route.connector].type,
                    retry=route.retry,
                )
            )
    if problems:
        raise RoutingConfigError(
            "the routing tables have problems:\n  - " + "\n  - ".join(problems)
        )
    return table
