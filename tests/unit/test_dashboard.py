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
from gateway.engine import NO_ROUTE
from kernel.api import Page, RejectedEventView, rejected_events_router

PAGE = (Path(gateway.__file__).parent / "dashboard.html").read_text(encoding="utf-8")
SCRIPT = PAGE[PAGE.index("<script>") : PAGE.index("</script>")]


def function_body(name: str) -> str:
    """The page's (multi-line) function ``name``, up to its closing brace."""
    found = re.search(rf"^(?:async )?function {name}\(.*?^\}}$", SCRIPT, re.S | re.M)
    assert found is not None, f"the dashboard has no function {name}"
    return found.group()


def table_filling(table: str) -> str:
    """Where ``refresh`` builds the rows of ``table``."""
    found = re.search(rf'fill\("{table}".*?\n  \}}\);', function_body("refresh"), re.S)
    assert found is not None, f"the dashboard does not fill #{table}"
    return found.group()


def test_every_field_the_dashboard_shows_is_one_the_api_gives() -> None:
    # d: a delivery or an incoming document; s: a summary count; w: an item waiting at its
    # source; k: a kept record; page, inbound, waiting, kept: pages.
    given = set(DeliveryView.model_fields) | set(InboundView.model_fields)
    assert set(re.findall(r"\bd\.(\w+)", PAGE)) <= given
    assert set(re.findall(r"\bs\.(\w+)", PAGE)) <= set(StatusCount.model_fields)
    assert set(re.findall(r"\bw\.(\w+)", PAGE)) <= set(WaitingView.model_fields)
    assert set(re.findall(r"\bk\.(\w+)", PAGE)) <= set(RejectedEventView.model_fields)
    assert set(re.findall(r"\bkept\.(\w+)", PAGE)) <= set(Page[RejectedEventView].model_fields)
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


def test_a_delivery_without_a_route_gets_a_hint_not_a_replay_button() -> None:
    # Its replay is refused whatever the clicks (409 no-route-to-replay): there is no target.
    assert f'const NO_ROUTE = "{NO_ROUTE}";' in SCRIPT
    attention = table_filling("attention")
    assert re.search(r'if \(d\.route === NO_ROUTE\) cell\(r, "no route: configure one', attention)
    replay = r'\belse r\.insertCell\(\)\.appendChild\(replayButton\("/v1/deliveries/'
    assert re.search(replay, attention)


def test_a_failed_refresh_greys_the_tables_and_a_refused_token_stops_the_refreshes() -> None:
    # An expired token failed every refresh overnight; the tables went on showing what they
    # held an hour before, as if current.
    shown = function_body("showUpdated")
    assert 'table.classList.toggle("stale", failed)' in shown and '"Last updated "' in shown
    assert re.search(r"table\.stale \{[^}]*opacity", PAGE)
    assert "error.status = response.status" in function_body("api")
    once = function_body("refreshOnce")
    failure = once[once.index("catch (e)") :]
    assert "showUpdated(true)" in failure
    refused = re.search(r"if \(e\.status === 401\) \{(.*?)\}", failure, re.S)
    assert refused is not None
    assert "clearInterval(refreshing); refreshing = null;" in refused.group(1)
    assert "paste a new one" in refused.group(1)


def test_one_refresh_at_a_time_its_rows_put_in_place_once_all_is_read() -> None:
    # A replay's refresh during the interval's: both emptied the tables, both filled them.
    load = function_body("load")
    assert re.search(r"if \(loading\) \{ loadAgain = true; return; \}\s*loading = true;", load)
    assert "finally { loading = false; }" in load
    refresh = function_body("refresh")
    assert "await" not in refresh[refresh.index("fill(") :]
    assert set(re.findall(r'fill\("(\w+)"', refresh)) == set(re.findall(r'<table id="(\w+)"', PAGE))
    assert "innerHTML" not in SCRIPT


def test_the_kept_records_are_listed_and_replayed_through_the_gateways_api() -> None:
    routes = rejected_events_router("gateway:read", "gateway:operate").routes
    paths = {getattr(route, "path", None) for route in routes}
    assert {"/v1/rejected-events", "/v1/rejected-events/{kept_id}/replay"} <= paths
    assert 'kept = await api("/v1/rejected-events?limit=50")' in function_body("refresh")
    assert 'replayButton("/v1/rejected-events/" + k.id + "/replay")' in table_filling("kept")
    # Refused to a token of a tenant the hub does not configure, which reads the rest.
    assert "if (e.status !== 403) throw e;" in function_body("refresh")
