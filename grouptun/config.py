"""The member daemon's configuration: one TOML file per group.

``load(path)`` parses and validates everything up front and returns a
frozen :class:`Config`; any problem raises ``ConfigError(key, problem)``
naming the dotted key at fault (``network.mtu``), so the daemon never
starts half-configured. ``render(config)`` writes the file back in the
same shape (``grouptun join`` uses it). Secrets never live here: the
private keys are in the keystore, the credential comes from systemd, a
file or a prompt.

Limits: unknown keys are refused (a typo must not silently fall back to a
default); byte strings (provider public keys) are base64.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from grouptun import native

from grouptun.apps import exportfiles
from grouptun.core.jointoken import check_urls
from grouptun.errors import ConfigError

DEFAULT_LISTEN_PORT = 51820
DEFAULT_MTU = 1420
MIN_MTU = 1280  # IPv6 minimum: the overlay carries IPv6
MAX_MTU = 65535 - 28
IFNAME_MAX = 15
LOG_LEVELS = ("debug", "info", "warning", "error")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# a member name: NAME_RE, or NAME@LINK for a member in a group a linked provider owns (PROTOCOL.md 8)
MEMBER_RE = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9][A-Za-z0-9_.-]*(?:@[a-z][a-z0-9-]{0,31})?$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"^(?=.{{1,190}}$){_LABEL}(?:\.{_LABEL})*$")  # room for a 63-byte member label
RESOLVED_MODES = ("auto", "off")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class GroupConfig:
    name: str                      # local name of the group ("lan"): file, socket, interface
    member: str                    # this host's member name (the provider's uid)
    group_id: bytes                # 16 bytes, pinned at join; archives for other ids are refused
    interface: str                 # TUN device name, <= 15 characters
    addresses: tuple[str, ...] = ()  # overlay addresses from enrollment, "10.77.0.2/24"; the archive wins


@dataclass(frozen=True)
class ProviderConfig:
    url: str
    tls_fingerprint: str           # SHA-256 of the provider's certificate, lowercase hex
    keys_hash: str                 # fingerprint of the provider keys, from the join token
    ed25519_public: bytes
    mldsa65_public: bytes
    group: str = ""                # the provider's name of the group (in its URLs); "" = group.name
    urls: tuple[str, ...] = ()     # every URL of the provider, in the order tried; () = just url

    @property
    def all_urls(self) -> tuple[str, ...]:
        """The URLs the member asks, in order (before an archive's provider_urls replaces them)."""
        return self.urls or (self.url,)


@dataclass(frozen=True)
class NetworkConfig:
    listen_address: str = "::"     # "::" = dual-stack; an IPv4 address = IPv4 only
    listen_port: int = DEFAULT_LISTEN_PORT
    endpoints: tuple[str, ...] = ()  # reported to the provider; empty = what the provider sees
    mtu: int = DEFAULT_MTU
    routes: tuple[str, ...] = ()   # extra prefixes routed into the tunnel
    advertise_routes: tuple[str, ...] = ()  # LAN prefixes behind us, asked of the provider's admin


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path
    control_socket: Path
    credential_file: Path | None = None


OFFLOAD_MODES = ("auto", "off")
CIPHER_MODES = native.SETTINGS


@dataclass(frozen=True)
class DaemonConfig:
    log_level: str = "info"
    keepalive_interval: float = 10.0
    watch_timeout: float = 15.0    # long-poll length; rekey requests wait at most this long
    report_interval: float = 30.0
    backoff_max: float = 5.0     # low: members are back within it once a provider returns (issue 16)
    metrics_listen: str | None = None  # "127.0.0.1:19586"; loopback only
    offload: str = "auto"  # "auto": TUN TSO/GRO + UDP GSO/GRO where the kernel has them; "off": plain path
    cipher: str = "auto"  # run cipher (grouptun.native): "auto", "native" (error if not built), "reference"


@dataclass(frozen=True)
class NamesConfig:
    """Member names over DNS (grouptun/apps/names.py): answered on the tunnel addresses."""

    enabled: bool = True
    domain: str = ""        # names are MEMBER.DOMAIN; "" = "<[group] name>.grouptun"
    port: int = 53
    rate: float = 200.0     # queries per second answered (all clients together); more are dropped
    burst: int = 100
    client_rate: float = 50.0  # queries per second answered per source address (a resolver caches)
    client_burst: int = 50
    resolved: str = "auto"  # "auto": register address and domain for the interface with systemd-resolved


@dataclass(frozen=True)
class Config:
    group: GroupConfig
    provider: ProviderConfig
    network: NetworkConfig = field(default_factory=NetworkConfig)
    paths: PathsConfig | None = None
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    export: exportfiles.ExportFiles = field(default_factory=exportfiles.ExportFiles)  # [export]: grouptun/apps/exportfiles.py
    source: Path | None = None
    names: NamesConfig = field(default_factory=NamesConfig)

    @property
    def names_domain(self) -> str:
        return self.names.domain or f"{self.group.name.lower()}.grouptun"

    @property
    def provider_group(self) -> str:
        """The group's name at the provider: ``grouptun join --name`` may pick another local name."""
        return self.provider.group or self.group.name

    @property
    def keystore_path(self) -> Path:
        return self.paths.state_dir / "keys.enc"

    @property
    def statefile_path(self) -> Path:
        return self.paths.state_dir / "epochs.json"


def default_interface(group: str) -> str:
    return ("gt-" + group)[:IFNAME_MAX]


def default_paths(group: str, state_root: Path = Path("/var/lib/grouptun"),
                  run_dir: Path = Path("/run/grouptun")) -> PathsConfig:
    return PathsConfig(state_dir=state_root / group, control_socket=run_dir / f"{group}.sock")


# --- validation helpers: each names the key it checks ---

def _table(data: dict, key: str, required: bool) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(key, "missing table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _no_unknown(table: dict, prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}.{key}", "unknown key")


def _str(table: dict, prefix: str, key: str, default: Any = ..., pattern: re.Pattern | None = None) -> str:
    name = f"{prefix}.{key}"
    if key not in table:
        if default is ...:
            raise ConfigError(name, "missing")
        return default
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(name, "must be a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(name, f"invalid value {value!r}")
    return value


def _int(table: dict, prefix: str, key: str, default: int, low: int, high: int) -> int:
    name = f"{prefix}.{key}"
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, "must be an integer")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in {low}..{high}, got {value}")
    return value


def _float(table: dict, prefix: str, key: str, default: float, low: float, high: float) -> float:
    name = f"{prefix}.{key}"
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, "must be a number")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in {low}..{high}, got {value}")
    return float(value)


def _str_list(table: dict, prefix: str, key: str) -> tuple[str, ...]:
    name = f"{prefix}.{key}"
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(name, "must be a list of non-empty strings")
    return tuple(value)


def _b64(table: dict, prefix: str, key: str, size: int | None = None) -> bytes:
    text = _str(table, prefix, key)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{prefix}.{key}", "must be base64") from exc
    if size is not None and len(raw) != size:
        raise ConfigError(f"{prefix}.{key}", f"must decode to {size} bytes, got {len(raw)}")
    return raw


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ValueError if malformed."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad endpoint {text!r}: expected [v6]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"bad endpoint {text!r}: expected host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad endpoint {text!r}: port must be 1..65535")
    return host, int(port)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoints(table: dict, prefix: str, key: str) -> tuple[str, ...]:
    values = _str_list(table, prefix, key)
    for value in values:
        try:
            parse_endpoint(value)
        except ValueError as exc:
            raise ConfigError(f"{prefix}.{key}", str(exc)) from exc
    return values


def _prefixes(table: dict, prefix: str, key: str, interface: bool) -> tuple[str, ...]:
    values = _str_list(table, prefix, key)
    for value in values:
        try:
            ipaddress.ip_interface(value) if interface else ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{prefix}.{key}", f"bad prefix {value!r}: {exc}") from exc
    return values


# --- sections ---

def _group(data: dict) -> GroupConfig:
    t = _table(data, "group", True)
    _no_unknown(t, "group", {"name", "member", "group_id", "interface", "addresses"})
    name = _str(t, "group", "name", pattern=NAME_RE)
    group_id = _str(t, "group", "group_id")
    if not re.fullmatch(r"[0-9a-f]{32}", group_id):
        raise ConfigError("group.group_id", "must be 32 lowercase hex digits (16 bytes)")
    return GroupConfig(
        name=name,
        member=_str(t, "group", "member", pattern=MEMBER_RE),
        group_id=bytes.fromhex(group_id),
        interface=_str(t, "group", "interface", default_interface(name), _IFNAME_RE),
        addresses=_prefixes(t, "group", "addresses", interface=True),
    )


def _provider(data: dict) -> ProviderConfig:
    t = _table(data, "provider", True)
    _no_unknown(t, "provider", {"url", "tls_fingerprint", "keys_hash", "ed25519_public", "mldsa65_public", "group",
                                "urls"})
    url = _str(t, "provider", "url")
    if not url.startswith("https://"):
        raise ConfigError("provider.url", "must start with https://")
    urls = t.get("urls", [])
    if urls != []:
        urls = check_urls(urls, "provider.urls")
    fp = _str(t, "provider", "tls_fingerprint").lower().replace(":", "")
    if not _HEX64_RE.match(fp):
        raise ConfigError("provider.tls_fingerprint", "must be a SHA-256 in hex (64 digits)")
    return ProviderConfig(
        url=url,
        tls_fingerprint=fp,
        keys_hash=_str(t, "provider", "keys_hash"),
        ed25519_public=_b64(t, "provider", "ed25519_public", 32),
        mldsa65_public=_b64(t, "provider", "mldsa65_public", 1952),
        group=_str(t, "provider", "group", ""),
        urls=tuple(urls),
    )


def _network(data: dict) -> NetworkConfig:
    t = _table(data, "network", False)
    _no_unknown(t, "network", {"listen_address", "listen_port", "endpoints", "mtu", "routes", "advertise_routes"})
    listen = _str(t, "network", "listen_address", "::")
    try:
        ipaddress.ip_address(listen)
    except ValueError as exc:
        raise ConfigError("network.listen_address", f"not an IP address: {listen!r}") from exc
    return NetworkConfig(
        listen_address=listen,
        listen_port=_int(t, "network", "listen_port", DEFAULT_LISTEN_PORT, 1, 65535),
        endpoints=_endpoints(t, "network", "endpoints"),
        mtu=_int(t, "network", "mtu", DEFAULT_MTU, MIN_MTU, MAX_MTU),
        routes=_prefixes(t, "network", "routes", interface=False),
        advertise_routes=_networks(t, "network", "advertise_routes"),
    )


def _networks(table: dict, prefix: str, key: str) -> tuple[str, ...]:
    """Networks in strict form (no host bits), as the provider takes them."""
    values = _str_list(table, prefix, key)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ConfigError(f"{prefix}.{key}", f"bad network {value!r}: {exc}") from exc
    return values


def _paths(data: dict, group: str) -> PathsConfig:
    t = _table(data, "paths", False)
    _no_unknown(t, "paths", {"state_dir", "control_socket", "credential_file"})
    defaults = default_paths(group)
    out = {}
    for key, default in (("state_dir", defaults.state_dir), ("control_socket", defaults.control_socket),
                         ("credential_file", None)):
        value = _str(t, "paths", key, None)
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"paths.{key}", "must be an absolute path")
        out[key] = Path(value) if value is not None else default
    return PathsConfig(**out)


def _daemon(data: dict) -> DaemonConfig:
    t = _table(data, "daemon", False)
    _no_unknown(t, "daemon", {f.name for f in fields(DaemonConfig)})
    level = _str(t, "daemon", "log_level", "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError("daemon.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    metrics = _str(t, "daemon", "metrics_listen", None)
    if metrics is not None:
        try:
            host, _ = parse_endpoint(metrics)
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError as exc:
            raise ConfigError("daemon.metrics_listen", str(exc)) from exc
        if not loopback:
            raise ConfigError("daemon.metrics_listen", "must be a loopback address")
    return DaemonConfig(
        log_level=level,
        keepalive_interval=_float(t, "daemon", "keepalive_interval", 10.0, 1.0, 3600.0),
        watch_timeout=_float(t, "daemon", "watch_timeout", 15.0, 1.0, 300.0),
        report_interval=_float(t, "daemon", "report_interval", 30.0, 1.0, 3600.0),
        backoff_max=_float(t, "daemon", "backoff_max", 5.0, 1.0, 3600.0),
        metrics_listen=metrics,
        offload=_offload(t),
        cipher=_cipher(t),
    )


def _offload(t: dict) -> str:
    value = _str(t, "daemon", "offload", "auto").lower()
    if value not in OFFLOAD_MODES:
        raise ConfigError("daemon.offload", f"must be one of {', '.join(OFFLOAD_MODES)}")
    return value


def _cipher(t: dict) -> str:
    value = _str(t, "daemon", "cipher", "auto").lower()
    if value not in CIPHER_MODES:
        raise ConfigError("daemon.cipher", f"must be one of {', '.join(CIPHER_MODES)}")
    return value


def _names(data: dict) -> NamesConfig:
    t = _table(data, "names", False)
    _no_unknown(t, "names", {f.name for f in fields(NamesConfig)})
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("names.enabled", "must be true or false")
    domain = t.get("domain", "")
    if not isinstance(domain, str) or (domain and not DOMAIN_RE.match(domain.lower().rstrip("."))):
        raise ConfigError("names.domain", f"must be a DNS domain like lan.grouptun, got {domain!r}")
    resolved = _str(t, "names", "resolved", "auto").lower()
    if resolved not in RESOLVED_MODES:
        raise ConfigError("names.resolved", f"must be one of {', '.join(RESOLVED_MODES)}")
    return NamesConfig(
        enabled=enabled, domain=domain.lower().rstrip("."), port=_int(t, "names", "port", 53, 1, 65535),
        rate=_float(t, "names", "rate", 200.0, 1.0, 100000.0), burst=_int(t, "names", "burst", 100, 1, 100000),
        client_rate=_float(t, "names", "client_rate", 50.0, 1.0, 100000.0),
        client_burst=_int(t, "names", "client_burst", 50, 1, 100000), resolved=resolved)


def parse(data: dict, source: Path | None = None) -> Config:
    """Validate an already-decoded TOML document."""
    for key in data:
        if key not in {"group", "provider", "network", "paths", "daemon", "export", "names"}:
            raise ConfigError(key, "unknown table")
    group = _group(data)
    return Config(group=group, provider=_provider(data), network=_network(data),
                  paths=_paths(data, group.name), daemon=_daemon(data), export=exportfiles.parse(data),
                  source=source, names=_names(data))


def load(path: str | Path) -> Config:
    """Read and validate ``path``; ConfigError names the key at fault."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from exc
    return parse(data, source=path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(config: Config) -> str:
    """TOML text that :func:`load` turns back into ``config``."""
    p = config.provider
    sections: list[tuple[str, dict[str, Any]]] = [
        ("group", {"name": config.group.name, "member": config.group.member,
                   "group_id": config.group.group_id.hex(),
                   "interface": config.group.interface, "addresses": config.group.addresses}),
        ("provider", {"url": p.url, "tls_fingerprint": p.tls_fingerprint, "keys_hash": p.keys_hash,
                      "ed25519_public": base64.b64encode(p.ed25519_public).decode(),
                      "mldsa65_public": base64.b64encode(p.mldsa65_public).decode(),
                      **({"group": p.group} if p.group else {}), **({"urls": p.urls} if p.urls else {})}),
        ("network", {f.name: getattr(config.network, f.name) for f in fields(NetworkConfig)}),
        ("paths", {k: str(v) for k, v in vars(config.paths).items() if v is not None}),
        ("daemon", {f.name: getattr(config.daemon, f.name) for f in fields(DaemonConfig)
                    if getattr(config.daemon, f.name) is not None}),
        ("names", {f.name: getattr(config.names, f.name) for f in fields(NamesConfig)}),
    ]
    if exportfiles.to_toml(config.export):
        sections.append(("export", exportfiles.to_toml(config.export)))
    lines = ["# grouptun member configuration (written by `grouptun join`; see example.toml)"]
    for name, values in sections:
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"

