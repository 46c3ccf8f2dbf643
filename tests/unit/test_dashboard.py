"""The gateway's dashboard reads only what the operators' API answers."""

from __future__ import annotations

import re
from pathlib import Path

import gateway
from gateway.api import (
    DeliveryPage,
    DeliveryView,
    InboundPage,
    InboundView,
    StatusCount,
    WaitingPage,
    WaitingView,
)

PAGE = (Path(gateway.__file__).parent / "dashboard.html").read_text(encoding="utf-8")


def test_every_field_the_dashboard_shows_is_one_the_api_gives() -> None:
    # d: a delivery or an incoming document; s: a summary count; w: an item waiting at its
    # source; page, inbound, waiting: pages.
    given = set(DeliveryView.model_fields) | set(InboundView.model_fields)
    assert set(re.findall(r"\bd\.(\w+)", PAGE)) <= given
    assert set(re.findall(r"\bs\.(\w+)", PAGE)) <= set(StatusCount.model_fields)
    assert set(re.findall(r"\bw\.(\w+)", PAGE)) <= set(WaitingView.model_fields)
    pages = (
        set(DeliveryPage.model_fields)
        | set(InboundPage.model_fields)
        | set(WaitingPage.model_fields)
    )
    assert set(re.findall(r"\b(?:page|inbound|waiting)\.(\w+)", PAGE)) <= pages


def test_the_token_command_shown_grants_what_the_dashboard_offers() -> None:
    [command] = re.findall(r"<code>(\.venv/bin/hub token [^<]+)</code>", PAGE)
    for scope in ("gateway:read", "gateway:operate", "gateway:unroutable"):
        assert f"--scope {scope}" in command
