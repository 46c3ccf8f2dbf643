"""The tenant file's ``services: meeting:`` block: meeting configurations and WS4PM clients.

A configuration (``college``, ``council``) lists the item categories, which
of them are subject to regional oversight ("tutelle") and which decisions
must be published, the proposing services, and the prefix of its decision
numbers. WS4PM clients authenticate with HTTP Basic; their passwords are
``${VAR:-default}`` references resolved from the environment at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernel.tenants import Tenant, TenantConfigError, expand_environment

#: The innermost ``${VAR}`` or ``${VAR:-default}``; nested references expand from the inside.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Category(_Strict):
    id: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1)
    #: Decisions in this category go to the Region's oversight ("tutelle").
    oversight: bool = False
    #: Decisions in this category must be published.
    publication: bool = False


class MeetingConfig(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    kind: Literal["college", "council"]
    title: str = Field(min_length=1)
    description: str = ""
    #: Decision numbers read ``<prefix>/<year>/<sequence>``, e.g. ``COL/2026/0042``.
    decision_prefix: str = Field(pattern=r"^[A-Z0-9]{1,10}$")
    categories: tuple[Category, ...] = ()
    proposing_services: tuple[str, ...] = ()

    def category(self, category_id: str) -> Category | None:
        return next((c for c in self.categories if c.id == category_id), None)


class Ws4pmClient(_Strict):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8)


class MeetingBlock(_Strict):
    configurations: tuple[MeetingConfig, ...] = ()
    ws4pm_clients: tuple[Ws4pmClient, ...] = ()


@dataclass(frozen=True)
class TenantMeetings:
    tenant: str
    configurations: dict[str, MeetingConfig]
    ws4pm_clients: tuple[Ws4pmClient, ...]


def load_meeting_settings(
    tenants: dict[str, Tenant], environ: dict[str, str] | None = None
) -> dict[str, TenantMeetings]:
    """Every tenant's meeting block (absent: no configuration); a wrong block stops start-up."""
    environ = dict(os.environ) if environ is None else environ
    settings: dict[str, TenantMeetings] = {}
    usernames: dict[str, str] = {}
    for code, tenant in tenants.items():
        services = tenant.raw.get("services") or {}
        raw: Any = services.get("meeting") if isinstance(services, dict) else None
        where = f"{tenant.source_file}: services.meeting"
        try:
            block = MeetingBlock.model_validate(expand_environment(raw or {}, environ))
        except ValidationError as exc:
            raise TenantConfigError(f"{where}: {_first_error(exc)}") from exc
        except TenantConfigError as exc:  # an unset ${VARIABLE}
            raise TenantConfigError(f"{where}: {exc}") from exc
        configurations = {config.id: config for config in block.configurations}
        if len(configurations) != len(block.configurations):
            raise TenantConfigError(f"{where}: two configurations have the same id")
        _refuse_shared_prefixes(where, block.configurations)
        for client in block.ws4pm_clients:
            # The username alone names the tenant of a WS4PM call: it must be unique hub-wide.
            if client.username in usernames:
                raise TenantConfigError(
                    f"{where}: WS4PM username {client.username!r} is also used by tenant "
                    f"{usernames[client.username]}"
                )
            usernames[client.username] = code
        settings[code] = TenantMeetings(code, configurations, block.ws4pm_clients)
    return settings


def _refuse_shared_prefixes(where: str, configurations: tuple[MeetingConfig, ...]) -> None:
    """Decision numbers are unique per tenant, but counted per configuration: two
    configurations with one prefix would both number ``COL/2026/0001``, and the second's
    decisions failed until its count passed the first's."""
    by_prefix: dict[str, str] = {}
    for config in configurations:
        other = by_prefix.setdefault(config.decision_prefix, config.id)
        if other != config.id:
            raise TenantConfigError(
                f"{where}: configurations {other!r} and {config.id!r} both have "
                f"decision_prefix {config.decision_prefix!r}; each configuration numbers its "
                "decisions under its own prefix"
            )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}"
