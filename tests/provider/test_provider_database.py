"""Choosing the provider's database (provider/database.py) through the real CLI, on SQLite and PostgreSQL.

Bad input (a wrong URL, an unreachable database, a newer schema, another
provider's database) gets one clear line naming the setting it came from and
writes nothing; ``init --join`` adds a second state dir to a PostgreSQL
database only when its copied keys and certificate are the database's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from provider.database import PASSWORD_CREDENTIAL, URL_ENV, DatabaseSetting, resolve
from provider.errors import DatabaseUrlError
from provider.keys import StatePaths
from provider_helpers import STORE_KINDS, admin, database_url_for, free_port, init_provider
from provider_pg import PASSWORD, PASSWORD_ROLE

CONFIG_SOURCE = "provider.json key 'database_url'"


def _tree(root: Path) -> dict:
    """Every file under ``root`` with its bytes: what "nothing is written" compares."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


@pytest.fixture()
def sqlite_env(tmp_path):
    env = init_provider(tmp_path)
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    return env


# --- where the URL comes from ---------------------------------------------------------------------


def test_precedence_flag_then_environment_then_config_then_sqlite(tmp_path):
    paths = StatePaths(tmp_path)
    urls = {name: f"postgresql+psycopg://gt@db.example/{name}" for name in ("flag", "env", "config")}
    env, config = {URL_ENV: urls["env"]}, {"database_url": urls["config"]}
    assert resolve(urls["flag"], env, config, paths).url.database == "flag"
    assert resolve(None, env, config, paths).source == URL_ENV
    assert resolve(None, {}, config, paths).url.database == "config"
    default = resolve(None, {}, {}, paths)
    assert default.url is None and default.sqlite_path == paths.db and default.to_config() == {}
    assert resolve("postgresql://gt@h/d", {}, {}, paths).url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("text, problem", [
    ("not a url", "not a database URL"),
    ("mysql://gt@localhost/gt", "unknown driver 'mysql'"),
    ("postgresql+psycopg2://gt@localhost/gt", "unknown driver 'postgresql+psycopg2'"),
    ("sqlite:////tmp/x.db", "SQLite is the default"),
    ("postgresql+psycopg://gt@localhost", "names no database"),
    ("postgresql+psycopg://gt@localhost/gt?password_file=relative", "absolute path"),
    ("postgresql+psycopg://gt@localhost/gt?password_file=/nonexistent/pw", "does not exist"),
    ("postgresql+psycopg://gt:pw@localhost/gt?password_file=/etc/hostname", "give it once"),
])
def test_bad_urls_name_the_setting(tmp_path, text, problem):
    with pytest.raises(DatabaseUrlError) as info:
        resolve(text, {}, {}, StatePaths(tmp_path))
    assert info.value.setting == "--database-url" and problem in str(info.value)


def test_config_file_must_hold_no_password(tmp_path):
    with pytest.raises(DatabaseUrlError, match="holds a password") as info:
        resolve(None, {}, {"database_url": "postgresql+psycopg://gt:hunter22@h/d"}, StatePaths(tmp_path))
    assert info.value.setting == CONFIG_SOURCE and "hunter22" not in str(info.value)


def test_password_from_file_or_credential_is_never_shown(tmp_path, monkeypatch):
    secret = "pa:ss/w@rd"
    (tmp_path / "pw").write_text(secret + "\n")
    setting = resolve(f"postgresql://gt@h/d?password_file={tmp_path / 'pw'}", {}, {}, StatePaths(tmp_path))
    assert setting.url.password == secret and "password_file" not in setting.url.query
    assert make_url(setting.to_config()["database_url"]).query["password_file"] == str(tmp_path / "pw")
    (tmp_path / PASSWORD_CREDENTIAL).write_text(secret)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    setting = resolve("postgresql://gt@h/d", {}, {}, StatePaths(tmp_path))
    assert setting.url.password == secret
    for text in (setting.shown, setting.describe(), json.dumps(setting.to_config()),
                 setting.redact(f"driver said {secret} and pa%3Ass%2Fw%40rd")):
        assert secret not in text and "pa%3Ass" not in text, text
    assert isinstance(setting, DatabaseSetting) and "***" in setting.shown


# --- bad input through the CLI writes nothing -------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_a_wrong_url_names_its_source_and_writes_nothing(sqlite_env, how):
    bad = "mysql://gt@localhost/gt"
    args, env = ["group", "create", "wan", "--cidr", "10.78.0.0/24"], {}
    source = {"flag": "--database-url", "env": URL_ENV, "config": CONFIG_SOURCE}[how]
    if how == "flag":
        args += ["--database-url", bad]
    elif how == "env":
        env[URL_ENV] = bad
    else:
        config = json.loads((sqlite_env.state / "provider.json").read_text())
        (sqlite_env.state / "provider.json").write_text(json.dumps({**config, "database_url": bad}))
    before = _tree(sqlite_env.state)
    proc = admin(sqlite_env.state, *args, check=False, env=env)
    _one_line_error(proc, 78, f"database URL from {source}", "unknown driver 'mysql'")
    assert _tree(sqlite_env.state) == before


def test_an_unreachable_database_names_the_setting_and_init_writes_nothing(tmp_path, sqlite_env):
    dead = "postgresql+psycopg://gt:topsecret@127.0.0.1:1/gt"  # loopback port 1: connection refused
    state = tmp_path / "new"
    proc = admin(state, "init", "--url", "https://127.0.0.1:8443", "--database-url", dead, check=False)
    err = _one_line_error(proc, 74, "(from --database-url)", "unreachable", "127.0.0.1:1")
    assert "topsecret" not in err and "***" in err
    assert not state.exists()
    before = _tree(sqlite_env.state)
    proc = admin(sqlite_env.state, "group", "list", check=False, env={URL_ENV: dead})
    assert "topsecret" not in _one_line_error(proc, 74, f"(from {URL_ENV})", "unreachable")
    assert _tree(sqlite_env.state) == before


def test_a_missing_sqlite_file_is_not_created(sqlite_env):
    (sqlite_env.state / "provider.db").unlink()
    proc = admin(sqlite_env.state, "group", "list", check=False)
    _one_line_error(proc, 74, "provider.db does not exist", "--database-url")
    assert not (sqlite_env.state / "provider.db").exists()


@pytest.fixture(params=STORE_KINDS)
def newer_schema_env(request, tmp_path):
    env = init_provider(tmp_path, database_url_for(request.param, request))
    admin(env.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    store = env.store()
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    return env


def test_a_newer_schema_is_refused_naming_the_setting_and_nothing_is_written(newer_schema_env, tmp_path):
    env = newer_schema_env
    source = "default: SQLite in the state dir" if env.database_url is None else CONFIG_SOURCE
    before, files = env.dump(), _tree(env.state)
    for args in (("group", "list"), ("group", "create", "wan", "--cidr", "10.78.0.0/24"), ("invite", "lan", "x"),
                 ("serve", "--listen", f"127.0.0.1:{free_port()}")):
        proc = admin(env.state, *args, check=False)
        _one_line_error(proc, 74, f"(from {source})", "schema version 99, this provider knows")
    assert env.dump() == before
    assert {k: v for k, v in _tree(env.state).items() if k != "serve.lock"} == files
    if env.database_url is not None:  # neither a new provider nor a replica takes that database
        for extra in ((), ("--join",)):
            other = tmp_path / f"other{len(extra)}"
            if extra:
                _copy_keys_and_tls(env.state, other)
            proc = admin(other, "init", "--url", "https://127.0.0.1:8443", *extra, "--database-url",
                         env.database_url, check=False)
            assert proc.returncode == 74 and "--database-url" in proc.stderr, proc.stderr
            assert not (other / "provider.json").exists()
        assert env.dump() == before


# --- init on PostgreSQL, init --join (replicas serving together: test_provider_replicas.py) ------------------------------------------


def _copy_keys_and_tls(source: Path, target: Path) -> None:
    target.mkdir(mode=0o700, parents=True)
    for part in ("keys", "tls"):
        shutil.copytree(source / part, target / part)


def test_init_then_join_a_second_state_dir_and_every_command_sees_one_database(pg_server, tmp_path):
    url = pg_server.new_database()
    first = init_provider(tmp_path / "a", url)
    assert make_url(first.config["database_url"]) == make_url(url)
    admin(first.state, "group", "create", "lan", "--cidr", "10.77.0.0/24")
    second = tmp_path / "b"
    _copy_keys_and_tls(first.state, second)
    out = admin(second, "init", "--join", "--database-url", url).stdout
    assert "joined" in out and first.url in out
    config = json.loads((second / "provider.json").read_text())
    assert config["provider_keys"] == first.config["provider_keys"] and config["database_url"] == first.config["database_url"]
    assert admin(second, "group", "list").stdout.split() == ["lan"]  # the URL now comes from provider.json
    admin(second, "invite", "lan", "carol")
    assert "invite" in admin(first.state, "audit").stdout.split("replica-join", 1)[1]
    assert not (second / "provider.db").exists()


def test_join_refuses_another_providers_keys_and_writes_nothing(pg_server, tmp_path):
    url = pg_server.new_database()
    owner = init_provider(tmp_path / "a", url)
    stranger = init_provider(tmp_path / "s")  # another provider (SQLite): its own keys and certificate
    before = owner.dump()
    for name, keys_from, tls_from in (("keys", stranger.state, owner.state), ("tls", owner.state, stranger.state)):
        target = tmp_path / f"join-{name}"
        target.mkdir(mode=0o700)
        shutil.copytree(keys_from / "keys", target / "keys")
        shutil.copytree(tls_from / "tls", target / "tls")
        proc = admin(target, "init", "--join", "--database-url", url, check=False)
        _one_line_error(proc, 74, "(from --database-url)", "another provider" if name == "keys" else "TLS")
        assert sorted(p.name for p in target.iterdir()) == ["keys", "tls"]
    assert owner.dump() == before
    proc = admin(tmp_path / "fresh", "init", "--url", owner.url, "--database-url", url, check=False)
    _one_line_error(proc, 74, "holds a grouptun provider already")
    assert not (tmp_path / "fresh").exists() and owner.dump() == before
    proc = admin(stranger.state, "group", "list", "--database-url", url, check=False)
    _one_line_error(proc, 74, "another provider's keys")
    proc = admin(tmp_path / "nodb", "init", "--join", check=False)
    _one_line_error(proc, 64, "--join needs the shared database")


def test_password_from_a_systemd_credential_reaches_a_real_server(pg_server, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / PASSWORD_CREDENTIAL).write_text(PASSWORD + "\n")
    url = pg_server.new_database().replace("//gt@", f"//{PASSWORD_ROLE}@")
    state = tmp_path / "state"
    proc = admin(state, "init", "--url", "https://127.0.0.1:8443", "--database-url", url, check=False)
    _one_line_error(proc, 74, "no password supplied")  # no credential: the server wants one
    assert not state.exists()
    proc = admin(state, "init", "--url", "https://127.0.0.1:8443", "--database-url", url,
                 env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert PASSWORD not in proc.stdout + proc.stderr
    assert PASSWORD not in (state / "provider.json").read_text()
    assert admin(state, "group", "list", env={"CREDENTIALS_DIRECTORY": str(creds)}).returncode == 0
    wrong = url.replace(f"//{PASSWORD_ROLE}@", f"//{PASSWORD_ROLE}:not-the-pw@")
    proc = admin(state, "group", "list", "--database-url", wrong, check=False)
    assert "not-the-pw" not in _one_line_error(proc, 74, "password authentication failed", "(from --database-url)")
