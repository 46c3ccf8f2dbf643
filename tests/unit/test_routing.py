from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.routing import RoutingConfigError, load_routing
from kernel.settings import REPOSITORY_ROOT, HubSettings
from kernel.tenants import TenantConfigError, expand_environment, load_tenants

#: The connector types the gateway registers itself (gateway.main.BUILT_IN_CONNECTORS).
BUILT_IN_TYPES = {
    "ebox_rest",
    "ebox_soap",
    "peppol_ap",
    "inforius",
    "stesud",
    "oversight_soap",
    "notice",
    "ksz_identify",
    "opinion_rest",
}

SEND = "courrier.outgoing_mail.send_requested.v1"


def test_the_gateway_registers_every_built_in_type() -> None:
    from gateway.connectors.base import connector_types
    from gateway.main import register_built_in_connectors

    register_built_in_connectors()
    assert set(connector_types()) >= BUILT_IN_TYPES


def write(directory: Path, code: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{code}.yaml").write_text(body, encoding="utf-8")


def test_the_committed_tenant_files_are_valid() -> None:
    tenants = load_tenants(REPOSITORY_ROOT / "config" / "tenants")
    table = load_routing(tenants, BUILT_IN_TYPES, environ={})
    assert {route.connector_type for route in table.routes_for("92137", SEND)} == {"ebox_soap"}
    assert {route.connector_type for route in table.routes_for("62063", SEND)} == {"ebox_rest"}
    assert table.routes_for("92137", "courrier.incoming_mail.registered.v1") == []


def test_every_problem_is_reported_with_its_file_and_field(tmp_path: Path) -> None:
    write(
        tmp_path,
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  ebox: {{type: carrier_pigeon}}
routes:
  - {{name: one, event_type: courrier.nothing.v1, connector: ebox}}
  - {{name: one, event_type: {SEND}, connector: missing}}
""",
    )
    with pytest.raises(RoutingConfigError) as raised:
        load_routing(load_tenants(tmp_path), {"ebox_soap"}, environ={})
    message = str(raised.value)
    assert "connectors.ebox.type: unknown connector type 'carrier_pigeon'" in message
    assert "unknown event type 'courrier.nothing.v1'" in message
    assert "route name used twice" in message
    assert "no connector named 'missing'" in message
    assert "92137.yaml" in message


def test_schema_errors_name_the_field(tmp_path: Path) -> None:
    write(
        tmp_path,
        "92137",
        f"""
tenant: "92137"
name: Test
routes:
  - {{name: Bad Name, event_type: {SEND}, connector: ebox}}
retry: {{max_attempts: 0}}
""",
    )
    with pytest.raises(RoutingConfigError) as raised:
        load_routing(load_tenants(tmp_path), {"ebox_soap"}, environ={})
    assert "routes.0.name: String should match pattern" in str(raised.value)
    assert "retry.max_attempts: Input should be greater than or equal to 1" in str(raised.value)


def test_tenant_files_must_be_named_after_their_tenant(tmp_path: Path) -> None:
    write(tmp_path, "12345", 'tenant: "92137"\nname: Wrong file\n')
    with pytest.raises(TenantConfigError, match=r"must be named 92137\.yaml"):
        load_tenants(tmp_path)


def test_environment_references_expand_innermost_first() -> None:
    template = "${OUTER:-${BASE:-http://127.0.0.1:8010}/ebox}"
    assert expand_environment(template, {}) == "http://127.0.0.1:8010/ebox"
    assert (
        expand_environment(template, {"BASE": "http://sandbox:8010"}) == "http://sandbox:8010/ebox"
    )
    assert expand_environment(template, {"OUTER": "https://ebox.example"}) == "https://ebox.example"
    with pytest.raises(TenantConfigError, match="SECRET is not set"):
        expand_environment({"secret": ["${SECRET}"]}, {})


def test_a_route_may_have_its_own_retry_policy_and_others_keep_the_tenants(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  ebox: {{type: ebox_rest}}
  ebox-soap: {{type: ebox_soap}}
routes:
  - {{name: slow, event_type: {SEND}, connector: ebox, retry: {{max_attempts: 60}}}}
  - {{name: usual, event_type: {SEND}, connector: ebox-soap}}
retry: {{max_attempts: 4}}
""",
    )
    table = load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})
    slow, usual = table.routes_for("92137", SEND)
    assert table.retry_policy(slow).max_attempts == 60
    assert table.retry_policy(usual).max_attempts == 4


def test_two_routes_sending_one_event_type_to_one_connector_are_refused(tmp_path: Path) -> None:
    # A copied route: each route has its own idempotency keys, so every letter would be
    # published twice. One event type to two connectors stays allowed (two senders).
    write(
        tmp_path,
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  ebox: {{type: ebox_rest}}
  ebox-soap: {{type: ebox_soap}}
routes:
  - {{name: outgoing-mail-ebox, event_type: {SEND}, connector: ebox}}
  - {{name: outgoing-mail-ebox-soap, event_type: {SEND}, connector: ebox-soap}}
  - {{name: outgoing-mail-ebox-2, event_type: {SEND}, connector: ebox}}
""",
    )
    with pytest.raises(RoutingConfigError) as raised:
        load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})
    [problem] = str(raised.value).splitlines()[1:]
    assert problem == (
        f"  - {tmp_path / '92137.yaml'}: routes[2] (outgoing-mail-ebox-2): routes"
        f" 'outgoing-mail-ebox' and 'outgoing-mail-ebox-2' both send {SEND} to connector"
        " 'ebox': each event would be delivered twice"
    )


def test_a_route_to_a_connector_that_cannot_deliver_its_event_type_is_refused(
    tmp_path: Path,
) -> None:
    from gateway.main import register_built_in_connectors

    register_built_in_connectors()
    write(
        tmp_path,
        "92137",
        """
tenant: "92137"
name: Test
connectors:
  ebox: {type: ebox_rest, client_id: c, client_secret: s, token_url: x, base_url: y}
routes:
  - {name: invoices-to-ebox, event_type: factures.invoice.approved.v1, connector: ebox}
""",
    )
    with pytest.raises(RoutingConfigError) as raised:
        load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})
    assert (
        "routes[0] (invoices-to-ebox): connector 'ebox' (ebox_rest) delivers"
        " courrier.outgoing_mail.send_requested.v1, not factures.invoice.approved.v1"
    ) in str(raised.value)


def test_every_connector_whose_settings_are_wrong_is_named_at_once(
    tmp_path: Path, hub_settings: HubSettings
) -> None:
    from gateway.main import build_connectors, register_built_in_connectors

    register_built_in_connectors()
    write(
        tmp_path,
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  ebox: {{type: ebox_rest, client_id: c, client_secret: s3cret, token_url: idp/token,
          base_url: "https://ebox.test"}}
  soap: {{type: ebox_soap, endpoint: "https://ebox.test/soap", key_file: /k.pem}}
routes:
  - {{name: one, event_type: {SEND}, connector: ebox}}
""",
    )
    table = load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})
    with pytest.raises(RoutingConfigError) as raised:
        build_connectors(table, hub_settings, httpx.AsyncClient())
    message = str(raised.value)
    assert "tenant 92137: ebox_rest settings: token_url: String should match pattern" in message
    assert "tenant 92137: ebox_soap settings:" in message and "key_file and cert_file" in message
    assert "s3cret" not in message and "/k.pem" not in message


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    # PyYAML keeps the last: the first routes were silently dropped.
    write(
        tmp_path,
        "92137",
        f"""tenant: "92137"
name: Test
routes:
  - {{name: one, event_type: {SEND}, connector: ebox}}
connectors:
  ebox: {{type: ebox_rest}}
routes: []
""",
    )
    with pytest.raises(TenantConfigError, match=r"key 'routes' given twice \(first at line 3\)"):
        load_tenants(tmp_path)
    write(tmp_path, "92137", 'tenant: "92137"\nname: Test\nconnectors:\n  a: {}\n  a: {}\n')
    with pytest.raises(
        TenantConfigError, match=r"(?s)key 'a' given twice \(first at line 4\).*line 5"
    ):
        load_tenants(tmp_path)


def test_a_retry_policy_whose_longest_delay_is_below_its_first_is_refused(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        "92137",
        'tenant: "92137"\nname: Test\nretry: {base_delay_seconds: 600, max_delay_seconds: 1}\n',
    )
    with pytest.raises(RoutingConfigError, match="max_delay_seconds must not be below base"):
        load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})


def test_a_target_url_httpx_cannot_send_to_is_refused(
    tmp_path: Path, hub_settings: HubSettings
) -> None:
    from gateway.main import build_connectors, register_built_in_connectors

    register_built_in_connectors()
    write(
        tmp_path,
        "92137",
        """
tenant: "92137"
name: Test
connectors:
  notice: {type: notice, base_url: "https://notice.example:44x3", api_key: k}
""",
    )
    table = load_routing(load_tenants(tmp_path), BUILT_IN_TYPES, environ={})
    with pytest.raises(RoutingConfigError, match=r"base_url: .*Invalid port: '44x3'"):
        build_connectors(table, hub_settings, httpx.AsyncClient())


def test_a_key_or_wsdl_the_connector_cannot_use_is_named_with_the_others(
    tmp_path: Path, hub_settings: HubSettings
) -> None:
    from gateway.main import build_connectors, register_built_in_connectors
    from tests.support.keys import encrypted_identity

    register_built_in_connectors()
    encrypted, cert_file = encrypted_identity(hub_settings.keys_dir, "92137", b"secret")
    broken = tmp_path / "broken.wsdl"
    broken.write_text("<definitions>cut short", encoding="utf-8")
    write(
        tmp_path / "tenants",
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  locked: {{type: ebox_soap, endpoint: "https://ebox.test/soap", key_file: "{encrypted}",
            cert_file: "{cert_file}"}}
  cut: {{type: ebox_soap, endpoint: "https://ebox.test/soap", wsdl: "{broken}"}}
""",
    )
    table = load_routing(load_tenants(tmp_path / "tenants"), BUILT_IN_TYPES, environ={})
    with pytest.raises(RoutingConfigError) as raised:
        build_connectors(table, hub_settings, httpx.AsyncClient())
    message = str(raised.value)
    assert "connectors.locked: the signing key cannot be read: Password was not given" in message
    assert "(key_password)" in message
    assert "connectors.cut: tenant 92137: XMLSyntaxError:" in message

    # Its passphrase given, from the environment as a secret should be, the key signs.
    write(
        tmp_path / "tenants",
        "92137",
        f"""
tenant: "92137"
name: Test
connectors:
  locked: {{type: ebox_soap, endpoint: "https://ebox.test/soap", key_file: "{encrypted}",
            cert_file: "{cert_file}", key_password: "${{EBOX_KEY_PASSWORD}}"}}
""",
    )
    environ = {"EBOX_KEY_PASSWORD": "secret"}
    table = load_routing(load_tenants(tmp_path / "tenants"), BUILT_IN_TYPES, environ=environ)
    [connector] = build_connectors(table, hub_settings, httpx.AsyncClient()).values()
    assert connector.certificate is not None  # built, its certificate watched
