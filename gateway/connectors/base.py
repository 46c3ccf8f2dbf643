"""What every connector is, and how the gateway builds one from a tenant's settings.

A connector type registers a factory under its name (``ebox_rest``,
``ebox_soap``, ``peppol_ap``, ``inforius``, ``stesud``…). The tenant's YAML
names the type and gives its settings, which the connector validates with its
own pydantic model at start (``settings_of``), so a typo in a tenant file is
a clear error before any event is consumed.

A connector's ``deliver`` either returns a ``DeliveryResult`` (its
``external_reference`` is the target's id for what it received; for an
accounting connector, the booking reference; ``answer`` is what a target that
is asked a question answered, copied into the receipt) or raises
``RetryableDeliveryError`` / ``PermanentDeliveryError`` (``gateway.errors``,
whose ``translate_transport_errors`` maps httpx errors; a connector that
POSTs JSON and gets an id back calls ``gateway.connectors.rest.post_delivery``,
which does all of that). It must be idempotent under
``Delivery.idempotency_key``: the same key may come again after a crash or a
retry.

Vendors add connectors without touching the hub: a package declares an entry
point in the group ``hub.connectors`` (``PLUGIN_GROUP``) whose object is a
callable that calls ``register_connector``; ``docs/connectors.md`` has a
complete example::

    [project.entry-points."hub.connectors"]
    acme = "acme_hub.connector:register"

Once installed beside the hub, a tenant file may say ``type: acme``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

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
    #: What the target answered when the delivery is a question (e.g. the identity the
    #: National Register holds for a NISS); the engine copies it into the receipt.
    answer: dict[str, str | None] | None = None


#: How long one attempt may take in all, for a connector that says nothing of its time.
ATTEMPT_SECONDS = 300.0


def attempt_seconds_for(timeout_seconds: float, requests: int = 2) -> float:
    """An attempt's deadline for a connector whose requests each have ``timeout_seconds``:
    ``requests`` requests' worth (by default a token, then the call) and a margin. Cut
    short, an attempt whose request went may be sent again: better too long than that."""
    return requests * timeout_seconds + 5


def attempt_deadline(connector: object) -> float:
    """The deadline of one attempt of ``connector``: its ``attempt_seconds``; else, for a
    connector written before it existed, two requests' worth of its settings'
    ``timeout_seconds``; else ``ATTEMPT_SECONDS``."""
    declared = getattr(connector, "attempt_seconds", None)
    if isinstance(declared, int | float):
        return float(declared)
    timeout = getattr(getattr(connector, "settings", None), "timeout_seconds", None)
    if isinstance(timeout, int | float):
        return attempt_seconds_for(timeout)
    return ATTEMPT_SECONDS


class Connector(Protocol):
    """A connector may also have ``attempt_seconds``, the deadline of one whole attempt
    (``ATTEMPT_SECONDS`` otherwise): the engine cuts an attempt that takes longer; and
    ``certificate`` (``gateway.connectors.soap.TenantCertificate`` or None), the one it
    signs or authenticates with, which the operators' API lists with its end."""

    type_name: str

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        """Deliver or raise RetryableDeliveryError / PermanentDeliveryError."""
        ...

    async def aclose(self) -> None: ...


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _usable_by_httpx(url: str) -> str:
    # The pattern lets through what httpx refuses to send to (a port "44x3", an IPv4
    # address "999.1.1.1"): every request then raised InvalidURL, retried until dead.
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx's reason quotes the wrong part only (the port, the host), not the
        # credentials a URL may hold.
        raise ValueError(f"not a URL the gateway can send to: {exc}") from exc
    return url


#: A target's URL in a connector's settings: one without its scheme was taken, and every
#: delivery to it then retried as "unreachable" until it was dead.
TargetUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+"), AfterValidator(_usable_by_httpx)]


@dataclass(frozen=True)
class ConnectorContext:
    tenant: str
    hub: HubSettings
    #: The gateway's one client (``gateway.http``); connectors set their own per-call timeouts.
    http: httpx.AsyncClient
    #: The connector's name in the tenant's file (``connectors.<name>``).
    name: str = ""


_S = TypeVar("_S", bound=ConnectorSettings)


def settings_of(model: type[_S], context: ConnectorContext, config: dict[str, Any]) -> _S:
    """``config`` validated by the connector's model, or a ValueError naming every problem.

    The message leaves out the input values: they would print the secrets.
    """
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        type_name = config.get("type", model.__name__)
        raise ValueError(f"tenant {context.tenant}: {type_name} settings: {problems}") from exc


def json_field(response: httpx.Response, name: str) -> Any:
    """A top-level field of a JSON object answer, or None (not JSON, not an object, absent)."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to read
        return None
    return body.get(name) if isinstance(body, dict) else None


ConnectorFactory = Callable[[ConnectorContext, dict[str, Any]], Connector]
_FACTORIES: dict[str, ConnectorFactory] = {}
_EVENT_TYPES: dict[str, frozenset[str]] = {}


def register_connector(
    type_name: str, factory: ConnectorFactory, *, event_types: Iterable[str] | None = None
) -> None:
    """``event_types``: the only ones the connector delivers, if it says; a route of
    another type to it is refused when the gateway starts, not at every delivery."""
    if type_name in _FACTORIES:
        raise ValueError(f"connector type {type_name!r} registered twice")
    _FACTORIES[type_name] = factory
    if event_types is not None:
        _EVENT_TYPES[type_name] = frozenset(event_types)


def connector_types() -> dict[str, ConnectorFactory]:
    return dict(_FACTORIES)


def delivered_event_types(type_name: str) -> frozenset[str] | None:
    """The event types a connector type delivers; None when it did not say."""
    return _EVENT_TYPES.get(type_name)


#: Vendors add connectors without touching the hub: a package declares an entry
#: point in this group whose object is a callable that calls ``register_connector``.
PLUGIN_GROUP = "hub.connectors"


#: The plugins' entry points already loaded in this process (name, ``module:object``):
#: a gateway built again in the same process (the tests, an application holding two) ran
#: each plugin's registration again, which ``register_connector`` refuses as a second one.
_LOADED_PLUGINS: set[tuple[str, str]] = set()


class ConnectorPluginError(RuntimeError):
    """A vendor's connector plugin failed to load or to register its types."""


def load_plugin_connectors() -> list[str]:
    """Load the plugins of ``PLUGIN_GROUP`` not loaded yet in this process: the names of
    the entry points this call loaded. Raises ``ConnectorPluginError`` naming the entry
    point of one that fails."""
    from importlib.metadata import entry_points

    loaded = []
    for entry_point in entry_points(group=PLUGIN_GROUP):
        key = (entry_point.name, entry_point.value)
        if key in _LOADED_PLUGINS:
            continue
        try:
            entry_point.load()()
        except Exception as exc:
            # Else the start stopped with the vendor code's bare traceback (an ImportError,
            # a typo), which names neither the plugin nor the package to fix or remove.
            package = entry_point.dist.name if entry_point.dist is not None else "unknown"
            raise ConnectorPluginError(
                f"connector plugin {entry_point.name!r} ({entry_point.value}, package"
                f" {package}, entry point group {PLUGIN_GROUP}) failed to load:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        _LOADED_PLUGINS.add(key)
        loaded.append(entry_point.name)
    return loaded
