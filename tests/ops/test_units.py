"""The systemd units: verify cleanly, stay under exposure 2.5, keep the agreed contract."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from grouptun.control import credential
from ops.units import MAX_EXPOSURE, SYSTEMD_DIR, UNITS, exposure, parse_unit, stage_root, values, verify

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

DAEMON = SYSTEMD_DIR / "grouptun@.service"
PROVIDER = SYSTEMD_DIR / "grouptun-provider.service"


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = stage_root(tmp_path_factory.mktemp("root"))
    dest = root / "etc/systemd/system"
    dest.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD_DIR / name, dest / name)
    return root


@pytest.mark.parametrize("instance", ["grouptun@lan.service", "grouptun-provider.service"])
def test_verify_is_clean(staged, instance):
    proc = verify(staged, instance)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""


def test_verify_would_catch_a_broken_unit(staged, tmp_path):
    """Negative control: a typo and a bad value are reported (as output, rc 0)."""
    root = stage_root(tmp_path)
    (root / "etc/systemd/system").mkdir(parents=True)
    text = DAEMON.read_text().replace("ProtectClock=yes", "ProtectClock=yes\nProtectHomme=yes\nRestart=sometimes")
    (root / "etc/systemd/system/grouptun@.service").write_text(text)
    proc = verify(root, "grouptun@lan.service")
    assert "ProtectHomme" in proc.stderr and "sometimes" in proc.stderr


def test_verify_reports_a_missing_binary(tmp_path):
    root = tmp_path
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(PROVIDER, root / "etc/systemd/system")
    stage_root(root)
    (root / "usr/local/bin/grouptun-provider").unlink()
    proc = verify(root, "grouptun-provider.service")
    assert proc.returncode != 0 and "/usr/local/bin/grouptun-provider" in proc.stderr


@pytest.mark.parametrize("unit_file,instance", [(DAEMON, "grouptun@x.service"),
                                                (PROVIDER, "grouptun-provider.service")])
def test_exposure_at_most_2_5(tmp_path, unit_file, instance):
    # --offline reads the file as given; an instance name makes %i concrete.
    path = tmp_path / instance
    shutil.copy(unit_file, path)
    level, report = exposure(path)
    print(f"\n{instance}: exposure {level}")
    assert level <= MAX_EXPOSURE, report


def test_daemon_contract():
    u = parse_unit(DAEMON)
    svc = lambda key: values(u, "Service", key)  # noqa: E731
    assert svc("Type") == ["notify"]
    assert svc("ExecStart") == ["/usr/local/bin/grouptun up %i"]
    assert svc("ExecReload") == ["/bin/sh -c 'kill -HUP $$MAINPID'"]  # no procps needed (live: test_systemd_nspawn)
    assert svc("Restart") == ["on-failure"]
    assert svc("LimitCORE") == ["0"]  # the watchdog SIGABRT must not dump keys
    assert svc("WatchdogSec") and int(svc("WatchdogSec")[0]) >= 10
    assert svc("CapabilityBoundingSet") == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]  # DNS on port 53
    assert svc("AmbientCapabilities") == ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    assert svc("DevicePolicy") == ["closed"]
    assert svc("DeviceAllow") == ["/dev/net/tun rw"]
    assert svc("PrivateDevices") == []  # would hide /dev/net/tun
    assert svc("PrivateUsers") == []    # CAP_NET_ADMIN must count in the host's namespaces
    assert svc("PrivateNetwork") == []
    assert set(svc("RestrictAddressFamilies")[0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert svc("StateDirectory") == ["grouptun/%i"]
    assert svc("RuntimeDirectory") == ["grouptun"]
    assert svc("RuntimeDirectoryPreserve") == ["yes"]  # shared by every instance
    assert svc("UMask") == ["0077"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "ProtectClock",
                "ProtectHostname", "SystemCallArchitectures", "ProtectProc"):
        assert svc(key), f"{key} missing"


def test_credential_name_matches_what_the_daemon_reads(tmp_path):
    """LoadCredentialEncrypted=NAME:... must be a name grouptun/control/credential.py looks up."""
    (spec,) = values(parse_unit(DAEMON), "Service", "LoadCredentialEncrypted")
    name, _, source = spec.partition(":")
    assert source.startswith("/etc/credstore.encrypted/")
    (tmp_path / name.replace("%i", "lan")).write_bytes(b"correct horse battery\n")
    got = credential.from_systemd("lan", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert got == bytearray(b"correct horse battery")


def test_provider_contract():
    u = parse_unit(PROVIDER)
    svc = lambda key: values(u, "Service", key)  # noqa: E731
    assert svc("CapabilityBoundingSet") == [""]
    assert svc("AmbientCapabilities") == [""]
    assert svc("User") == ["grouptun-provider"]
    assert svc("LimitCORE") == ["0"]
    assert svc("ExecStart") == ["/usr/local/bin/grouptun-provider serve --state /var/lib/grouptun-provider"]
    assert svc("Type") == ["notify"] and svc("NotifyAccess") == ["main"]  # READY=1 from provider/serving.py
    assert svc("StateDirectory") == ["grouptun-provider"]
    assert "AF_NETLINK" not in svc("RestrictAddressFamilies")[0]
    # the user the unit runs as is the one sysusers creates
    sysusers = (SYSTEMD_DIR / "grouptun.sysusers.conf").read_text().split()
    assert sysusers[sysusers.index("u") + 1] == "grouptun-provider"


def test_syscall_filter_groups_exist():
    """Every @group and system call named in SystemCallFilter= is known to this systemd."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                             timeout=30).stdout  # every set, then "# Unlisted system calls"
    known = {line.strip().lstrip("#").strip() for line in listing.splitlines()}
    for unit_file in (DAEMON, PROVIDER):
        for spec in values(parse_unit(unit_file), "Service", "SystemCallFilter"):
            for group in spec.lstrip("~").split():
                if not group.startswith("@"):
                    assert group in known, f"{unit_file.name}: system call {group} unknown to systemd"
                    continue
                proc = subprocess.run(["systemd-analyze", "syscall-filter", group],
                                      capture_output=True, text=True, timeout=30)
                assert proc.returncode == 0, f"{unit_file.name}: {group}: {proc.stderr}"


INSTALL_HOST = SYSTEMD_DIR.parent / "scripts" / "install-host"
DIRECTORY_ROOTS = {"StateDirectory": "/var/lib", "RuntimeDirectory": "/run", "CacheDirectory": "/var/cache",
                   "LogsDirectory": "/var/log", "ConfigurationDirectory": "/etc"}


@pytest.mark.parametrize("unit_file", [DAEMON, PROVIDER])
def test_configuration_stays_read_only(unit_file):
    """systemd mounts a ConfigurationDirectory= writable even under ProtectSystem=strict: a
    compromised daemon could rewrite every group's pinned provider URL, fingerprint and keys."""
    u = parse_unit(unit_file)
    assert values(u, "Service", "ProtectSystem") == ["strict"]
    assert values(u, "Service", "ConfigurationDirectory") == []
    writable = " ".join(values(u, "Service", "ReadWritePaths")).split()
    assert not [p for p in writable if p.lstrip("-+").startswith("/etc")]


@pytest.mark.parametrize("unit_file", [DAEMON, PROVIDER])
def test_directory_modes_agree_with_install_host(unit_file):
    """A *Directory= that install-host also creates gets the same mode, so systemd does not
    warn at every start that the mode differs (defaults: 0755)."""
    made = dict((path, mode) for mode, path in re.findall(r"^ensure_dir (\d{4}) (/\S+)", INSTALL_HOST.read_text(), re.M))
    u = parse_unit(unit_file)
    checked = 0
    for key, root in DIRECTORY_ROOTS.items():
        mode = (values(u, "Service", key + "Mode") or ["0755"])[0]
        for name in " ".join(values(u, "Service", key)).split():
            path = f"{root}/{name.replace('%i', 'x')}"
            if path in made:
                checked += 1
                assert made[path] == mode, f"{key}={name}: unit mode {mode}, install-host {made[path]}"
    assert checked or unit_file == DAEMON  # the provider's state dir is made by both


def test_readme_status_lines_are_the_daemons(notify_socket):
    """systemd/README.md shows the Status: lines the daemon really sends."""
    import types

    from grouptun.daemon import Daemon
    from grouptun.ops.sdnotify import Notifier

    daemon = Daemon(None, bytearray())
    daemon.ops = types.SimpleNamespace(notifier=Notifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value}))
    daemon.control = None
    daemon._on_install(types.SimpleNamespace(epoch=7, group_size=4))
    daemon._on_trouble("provider refused (401): signature not valid")
    installed, refused = (m["STATUS"] for m in notify_socket.drain())
    readme = (SYSTEMD_DIR / "README.md").read_text()
    assert f'# Status: "{installed}"' in readme
    assert f"`STATUS={installed}`" in readme
    assert f"`STATUS={refused.split(':')[0]}: ... (retrying)`" in readme
