"""Vendors' connector plugins (entry points of ``hub.connectors``, ``docs/connectors.md``)
are loaded once per process, however often the gateway is built in it; a broken one is
named by its entry point."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.connectors import base
from gateway.connectors.base import (
    PLUGIN_GROUP,
    ConnectorPluginError,
    connector_types,
    load_plugin_connectors,
)
from gateway.main import BUILT_IN_CONNECTORS, build_app
from kernel.settings import HubSettings

#: ``docs/connectors.md``'s example, cut to what registering needs.
ACME = """
from gateway.connectors.base import register_connector

SEND = "courrier.outgoing_mail.send_requested.v1"


class AcmeConnector:
    type_name = "acme"

    def __init__(self, context, config):
        self.config = config


def register():
    register_connector("acme", AcmeConnector, event_types=[SEND])
"""


@pytest.fixture(autouse=True)
def own_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The connector types and plugins this test registers are forgotten after it: a type
    ``acme`` left behind would be in every later test's gateway."""
    for module in BUILT_IN_CONNECTORS:  # registered for good, before the copy
        importlib.import_module(module)
    monkeypatch.setattr(base, "_FACTORIES", dict(base._FACTORIES))
    monkeypatch.setattr(base, "_EVENT_TYPES", dict(base._EVENT_TYPES))
    monkeypatch.setattr(base, "_LOADED_PLUGINS", set(base._LOADED_PLUGINS))
    modules = set(sys.modules)
    yield
    for module in set(sys.modules) - modules:
        if module.startswith("acme_hub_"):
            del sys.modules[module]


def install(
    directory: Path, monkeypatch: pytest.MonkeyPatch, package: str, entry_point: str, source: str
) -> None:
    """``package`` installed beside the hub as pip leaves it: its module and its metadata,
    which declares ``entry_point`` (``name = module:object``) in ``PLUGIN_GROUP``."""
    (directory / f"{package}.py").write_text(source, encoding="utf-8")
    metadata = directory / f"{package}-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n", encoding="utf-8"
    )
    (metadata / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\n{entry_point}\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(directory))


def test_a_plugin_registers_once_however_often_the_gateway_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its register() ran at every build: the second raised "connector type 'acme'
    # registered twice", and so did every test after the first with a plugin installed.
    install(tmp_path, monkeypatch, "acme_hub_ok", "acme = acme_hub_ok:register", ACME)
    settings = HubSettings(var_dir=tmp_path / "var")
    build_app(settings)
    build_app(settings)

    assert connector_types()["acme"] is sys.modules["acme_hub_ok"].AcmeConnector
    assert base.delivered_event_types("acme") == {"courrier.outgoing_mail.send_requested.v1"}
    assert load_plugin_connectors() == []  # loaded already


def test_a_broken_plugin_is_named_by_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its bare ImportError named neither the plugin nor the package to fix or remove.
    broken = "def register():\n    import acme_sdk_missing\n"
    install(tmp_path, monkeypatch, "acme_hub_broken", "acme = acme_hub_broken:register", broken)
    with pytest.raises(ConnectorPluginError) as raised:
        build_app(HubSettings(var_dir=tmp_path / "var"))

    said = str(raised.value)
    assert "connector plugin 'acme' (acme_hub_broken:register, package acme_hub_broken" in said
    assert "ModuleNotFoundError: No module named 'acme_sdk_missing'" in said
    assert "acme" not in connector_types()
