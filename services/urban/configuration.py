"""The tenant file's ``services: urban:`` block.

The commune's NOTICe instance code is the tenant file's ``notice: instance:``
(``Tenant.notice_instance``, read by the kernel for the gateway and urban
alike): a notification naming another instance is not this tenant's.
``warning_days``: how many days
before a deadline the watcher announces it. ``decision`` says where the
college decision is asked for (meeting configuration, proposing service,
category of the item).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernel.tenants import Tenant, TenantConfigError, expand_environment


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecisionTarget(_Strict):
    #: A meeting configuration's id, as meeting names them (and the file keeps it).
    meeting_config: str = Field(default="college", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    proposing_service: str = Field(default="urbanisme", min_length=1, max_length=200)
    category: str | None = None


class UrbanBlock(_Strict):
    warning_days: int = Field(default=5, ge=0, le=60)
    decision: DecisionTarget = DecisionTarget()


@dataclass(frozen=True)
class TenantUrban:
    tenant: str
    notice_instance: str | None
    warning_days: int
    decision: DecisionTarget


def load_urban_settings(
    tenants: dict[str, Tenant], environ: dict[str, str] | None = None
) -> dict[str, TenantUrban]:
    """Every tenant's urban block (absent: the defaults); a wrong block stops start-up."""
    environ = dict(os.environ) if environ is None else environ
    settings: dict[str, TenantUrban] = {}
    for code, tenant in tenants.items():
        services = tenant.raw.get("services") or {}
        raw: Any = services.get("urban") if isinstance(services, dict) else None
        where = f"{tenant.source_file}: services.urban"
        try:
            block = UrbanBlock.model_validate(expand_environment(raw or {}, environ))
        except ValidationError as exc:
            error = exc.errors()[0]
            location = ".".join(str(part) for part in error["loc"])
            raise TenantConfigError(f"{where}: {location}: {error['msg']}") from exc
        except TenantConfigError as exc:
            raise TenantConfigError(f"{where}: {exc}") from exc
        settings[code] = TenantUrban(
            code, tenant.notice_instance, block.warning_days, block.decision
        )
    return settings
