"""Config: a good file loads; each bad key is refused by name; render round-trips."""

from __future__ import annotations

import base64
import re
import tomllib
from pathlib import Path

import pytest

from grouptun import config
from grouptun.errors import ConfigError

EXAMPLE = Path(config.__file__).with_name("example.toml")


def good() -> dict:
    return {
        "group": {"name": "lan", "member": "alice", "group_id": "00" * 16, "addresses": ["10.77.0.2/24", "fd77::2/64"]},
        "provider": {"url": "https://127.0.0.1:8443", "tls_fingerprint": "ab" * 32, "keys_hash": "cd" * 32,
                     "ed25519_public": base64.b64encode(bytes(32)).decode(),
                     "mldsa65_public": base64.b64encode(bytes(1952)).decode()},
        "network": {"listen_port": 51820, "endpoints": ["192.0.2.1:51820", "[2001:db8::1]:51820"]},
    }


def test_good_config_loads_with_defaults(tmp_path):
    cfg = config.parse(good())
    assert cfg.group.interface == "gt-lan"
    assert cfg.network.mtu == 1420 and cfg.network.listen_address == "::"
    assert cfg.paths.control_socket == Path("/run/grouptun/lan.sock")
    assert cfg.keystore_path == Path("/var/lib/grouptun/lan/keys.enc")
    assert cfg.group.group_id == bytes(16)


@pytest.mark.parametrize("section,key,value,named", [
    ("group", "name", "bad name!", "group.name"),
    ("group", "member", "", "group.member"),
    ("group", "group_id", "xyz", "group.group_id"),
    ("group", "interface", "much-too-long-interface", "group.interface"),
    ("group", "addresses", ["10.0.0.300/24"], "group.addresses"),
    ("group", "colour", "red", "group.colour"),
    ("provider", "url", "http://x", "provider.url"),
    ("provider", "tls_fingerprint", "abc", "provider.tls_fingerprint"),
    ("provider", "ed25519_public", "!!!", "provider.ed25519_public"),
    ("provider", "mldsa65_public", base64.b64encode(bytes(10)).decode(), "provider.mldsa65_public"),
    ("network", "listen_port", 0, "network.listen_port"),
    ("network", "listen_port", "51820", "network.listen_port"),
    ("network", "listen_address", "example.org", "network.listen_address"),
    ("network", "mtu", 576, "network.mtu"),
    ("network", "endpoints", ["nope"], "network.endpoints"),
    ("network", "routes", ["10.0.0.0/33"], "network.routes"),
    ("paths", "state_dir", "relative/dir", "paths.state_dir"),
    ("daemon", "log_level", "loud", "daemon.log_level"),
    ("daemon", "keepalive_interval", 0, "daemon.keepalive_interval"),
    ("daemon", "metrics_listen", "0.0.0.0:9586", "daemon.metrics_listen"),
    ("daemon", "watch_timeout", True, "daemon.watch_timeout"),
    ("daemon", "cipher", "fast", "daemon.cipher"),
])
def test_each_bad_key_is_named(section, key, value, named):
    data = good()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as info:
        config.parse(data)
    assert info.value.key == named


@pytest.mark.parametrize("missing,named", [("group", "group"), ("provider", "provider")])
def test_missing_tables_are_named(missing, named):
    data = good()
    del data[missing]
    with pytest.raises(ConfigError) as info:
        config.parse(data)
    assert info.value.key == named


def test_missing_key_and_unknown_table_are_named():
    data = good()
    del data["provider"]["url"]
    with pytest.raises(ConfigError, match="provider.url"):
        config.parse(data)
    data = good()
    data["extra"] = {}
    with pytest.raises(ConfigError) as info:
        config.parse(data)
    assert info.value.key == "extra"


def test_load_reports_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("[group\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.toml")


def test_render_round_trips(tmp_path):
    cfg = config.parse(good())
    path = tmp_path / "lan.toml"
    path.write_text(config.render(cfg))
    again = config.load(path)
    assert again.group == cfg.group and again.provider == cfg.provider
    assert again.network == cfg.network and again.paths == cfg.paths and again.daemon == cfg.daemon


def test_example_uses_only_known_keys():
    text = EXAMPLE.read_text()
    text = re.sub(r'mldsa65_public = "\.\.\."', f'mldsa65_public = "{base64.b64encode(bytes(1952)).decode()}"', text)
    cfg = config.parse(tomllib.loads(text))
    assert cfg.group.interface == "gt-lan" and cfg.network.mtu == 1420 and cfg.daemon.cipher == "auto"


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1:51820", ("192.0.2.1", 51820)), ("[fd00::1]:1", ("fd00::1", 1)), ("host.example:9", ("host.example", 9))])
def test_parse_endpoint(text, expected):
    assert config.parse_endpoint(text) == expected
    assert config.parse_endpoint(config.format_endpoint(*expected)) == expected


@pytest.mark.parametrize("text", ["1.2.3.4", "fd00::1:80", "[fd00::1]80", "[nothex]:80", "h:0", "h:70000", ":80"])
def test_parse_endpoint_refuses(text):
    with pytest.raises(ValueError):
        config.parse_endpoint(text)
