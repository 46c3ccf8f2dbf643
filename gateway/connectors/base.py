"""What every connector is, and how the gateway builds one from a tenant's settings.

A connector type registers a factory under its name (``ebox_rest``,
``ebox_soap``…). The tenant's YAML names the type and gives its settings,
which the connector validates with its own pydantic model at start, so a
typo in a tenant file is a clear error before any event is consumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from contracts.envelope import CloudEvent
from kernel.settings import HubSettings


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver one event on one route."""

    idempotency_key: str  # "<event id>:<route>", also sent to the target
    tenant: str
    route: str
    event: CloudEvent
    attempt: int
    trace_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryResult:
    external_reference: str  # the target's id for what it received (e.g. the e-Box message id)


class Connector(Protocol):
    type_name: str

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        """Deliver or raise RetryableDeliveryError / PermanentDeliveryError."""
        ...

    async def aclose(self) -> None: ...


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ConnectorContext:
    tenant: str
    hub: HubSettings
    http: httpx.AsyncClient  # shared pool; connectors set their own per-call timeouts


ConnectorFactory = Callable[[ConnectorContext, dict[str, Any]], Connector]
_FACTORIES: dict[str, ConnectorFactory] = {}


def register_connector(type_name: str, factory: ConnectorFactory) -> None:
    if type_name in _FACTORIES:
        raise ValueError(f"connector type {type_name!r} registered twice")
    _FACTORIES[type_name] = factory


def connector_types() -> dict[str, ConnectorFactory]:
    return dict(_FACTORIES)


#: Vendors add connectors without touching the hub: a package declares an entry
#: point in this group whose object is a callable that calls ``register_connector``.
PLUGIN_GROUP = "hub.connectors"


def load_plugin_connectors() -> list[str]:
    from importlib.metadata import entry_points

    loaded = []
    for entry_point in entry_points(group=PLUGIN_GROUP):
        entry_point.load()()
        loaded.append(entry_point.name)
    return loaded
