"""Secrets at rest (gmp_sql/secrets.py): SMTP passwords and volume credentials are encrypted
in the store when a key is configured, on SQLite and on PostgreSQL. The tables are read
directly, with a connection of the test's own, to see what the database really holds."""

from __future__ import annotations

import base64
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from gmp_sql import SecretError, SqlSettings, SqlStore, gmp_make_store
from gmp_sql.commands import secrets as secrets_command
from gmp_sql.secrets import (
    Keyring,
    SecretsSettings,
    account_place,
    is_secret_field,
    key_id,
    new_key,
)
from gmp_volumes import registry_of
from gmp_volumes.definitions import BACKEND_CONFIGS, REDACTED, redact

from gmp_core import Account, Config, ConfigError, VolumeRecord
from gmp_core.plugins import make_plugin_manager
from gmp_core.testing import SmtpSink
from tests.conftest import run_async
from tests.support import EventLog, ServiceFactory, account, message
from tests.volumes.servers import WebdavServer, attachments_of

KEY, NEXT_KEY = new_key(), new_key()
PASSWORD = "smtp-pass-7f3a"  # distinctive: searched for in raw rows and logs
S3_SECRET = "s3-secret-91c2"
DAV_PASSWORD = "dav-pass-4be8"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "gmp.db")


def make_store(url: str, **secrets: Any) -> SqlStore:
    config = Config({"sql": {"url": url}, "secrets": secrets}, environ={})
    config.register("sql", SqlSettings)
    store = gmp_make_store(config)
    assert store is not None
    return store


async def opened(url: str, **secrets: Any) -> SqlStore:
    store = make_store(url, **secrets)
    await store.open()
    return store


async def raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows exactly as the database holds them, read outside the store."""
    if url.startswith("postgresql://"):
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()
    with sqlite3.connect(url) as conn:
        return conn.execute(sql).fetchall()


async def raw_text(url: str) -> str:
    """Every account and volume row, all columns, as one text to search."""
    rows = await raw(url, "SELECT * FROM accounts")
    rows += await raw(url, "SELECT * FROM volumes")
    return repr(rows)


def kid(key: str) -> str:
    return key_id(base64.b64decode(key))


def s3_volume(name: str = "bucket", account_id: str | None = "acc") -> VolumeRecord:
    config = {"bucket": "att", "access_key": "AKIA-test", "secret_key": S3_SECRET}
    now = time.time()
    return VolumeRecord(name, account_id, "s3", config, now, now)


async def put_secrets(store: SqlStore, account_id: str = "acc") -> None:
    await store.put_account(
        Account(id=account_id, host="h", user="mailer", password=PASSWORD), time.time()
    )
    await store.put_volume(s3_volume(account_id=account_id))


async def read_back(store: SqlStore, account_id: str = "acc") -> None:
    """The store gives back what was put, whatever the table holds."""
    accounts = await store.get_accounts([account_id])
    assert accounts[account_id].password == PASSWORD
    [listed] = [a for a in await store.list_accounts() if a.id == account_id]
    assert listed.password == PASSWORD
    [volume] = [v for v in await store.list_volumes() if v.account_id == account_id]
    assert volume.config["secret_key"] == S3_SECRET
    assert volume.config["access_key"] == "AKIA-test"


# ---------------------------------------------------------------------- encrypted at rest


async def test_raw_columns_never_hold_the_secrets_once_a_key_is_set(db_url: str) -> None:
    store = await opened(db_url, key=KEY)
    try:
        await put_secrets(store)
        await read_back(store)
    finally:
        await store.close()
    text = await raw_text(db_url)
    assert PASSWORD not in text and S3_SECRET not in text and "AKIA-test" not in text
    [(password,)] = await raw(db_url, "SELECT password FROM accounts")
    assert password.startswith(f"gmp:v1:{kid(KEY)}:")
    # Only the credentials are sealed: the rest of a volume's config stays readable.
    [(config,)] = await raw(db_url, "SELECT config FROM volumes")
    assert '"bucket":"att"' in config


async def test_values_in_clear_from_before_the_key_still_read(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = await opened(db_url)  # no key: written in clear
    await put_secrets(before)
    await before.close()
    assert PASSWORD in await raw_text(db_url)

    with caplog.at_level(logging.WARNING, logger="gmp.secrets"):
        store = await opened(db_url, key=KEY)
    try:
        assert "3 stored secret(s) still in clear: run 'gmp secrets rotate'" in caplog.text
        await read_back(store)
        await store.put_account(Account(id="new", host="h", password=PASSWORD), time.time())
        assert await store.rotate_secrets() == (3, 1)  # the new account was sealed already
        await read_back(store)
    finally:
        await store.close()
    text = await raw_text(db_url)
    assert PASSWORD not in text and S3_SECRET not in text


async def test_rotation_reseals_everything_and_old_values_read_meanwhile(db_url: str) -> None:
    first = await opened(db_url, key=KEY)
    await put_secrets(first, "a")
    await put_secrets(first, "b")
    await first.close()

    # Mid-rotation: the new key is current, the old one still listed. Both kinds read.
    store = await opened(db_url, key=NEXT_KEY, old_keys=[KEY])
    try:
        await store.put_account(Account(id="c", host="h", password=PASSWORD), time.time())
        passwords = dict(await raw(db_url, "SELECT id, password FROM accounts"))
        assert passwords["a"].startswith(f"gmp:v1:{kid(KEY)}:")
        assert passwords["c"].startswith(f"gmp:v1:{kid(NEXT_KEY)}:")
        for account_id in ("a", "b"):
            await read_back(store, account_id)
        assert (await store.get_accounts(["c"]))["c"].password == PASSWORD

        assert await store.rotate_secrets() == (6, 1)  # a, b: a password and two S3 keys each
        assert await store.rotate_secrets() == (0, 7)  # nothing left to do
    finally:
        await store.close()

    text = await raw_text(db_url)
    assert kid(KEY) not in text and text.count(f"gmp:v1:{kid(NEXT_KEY)}:") == 7
    # The old key can go: the new one alone reads everything, the old one alone nothing.
    store = await opened(db_url, key=NEXT_KEY)
    for account_id in ("a", "b"):
        await read_back(store, account_id)
    await store.close()
    with pytest.raises(SecretError, match="encrypted with key"):
        await opened(db_url, key=KEY)


async def test_a_wrong_key_stops_start_up_naming_the_account_never_the_secret(
    db_url: str,
) -> None:
    store = await opened(db_url, key=KEY)
    await put_secrets(store, "shop")
    await store.close()

    with pytest.raises(SecretError) as error:
        await opened(db_url, key=NEXT_KEY)
    message_ = str(error.value)
    assert message_.startswith(
        f"cannot decrypt the password of account 'shop': it was encrypted with key {kid(KEY)}, "
        "which is not configured"
    )
    assert "(and 2 more)" in message_  # the volume's two keys
    assert PASSWORD not in message_ and KEY not in message_ and NEXT_KEY not in message_

    with pytest.raises(SecretError, match="which is not configured"):  # the key was dropped
        await opened(db_url)


async def test_a_running_store_names_the_account_it_cannot_decrypt(db_url: str) -> None:
    """Another process sharing the database got a new key first (the rotation order in
    docs/security.md avoids it): reading that account fails, naming it."""
    running = await opened(db_url, key=KEY)
    ahead = await opened(db_url, key=NEXT_KEY, old_keys=[KEY])
    try:
        await ahead.put_account(Account(id="shop", host="h", password=PASSWORD), time.time())
        with pytest.raises(SecretError) as error:
            await running.get_accounts(["shop"])
        assert str(error.value).startswith(
            f"cannot decrypt the password of account 'shop': it was encrypted with key "
            f"{kid(NEXT_KEY)}, which is not configured"
        )
    finally:
        await ahead.close()
        await running.close()


async def test_a_sealed_value_moved_to_another_row_does_not_open(db_url: str) -> None:
    """Each value is bound to its row: whoever can write the table cannot hand one
    account's password to another account (and its SMTP host)."""
    store = await opened(db_url, key=KEY)
    await store.put_account(Account(id="victim", host="h", password=PASSWORD), time.time())
    await store.put_account(Account(id="thief", host="h", password="other"), time.time())
    await store.close()
    await execute(
        db_url,
        "UPDATE accounts SET password = (SELECT password FROM accounts WHERE id = 'victim') "
        "WHERE id = 'thief'",
    )
    altered = r"password of account 'thief' with key \w+: the stored value was altered"
    with pytest.raises(SecretError, match=altered):
        await opened(db_url, key=KEY)


async def execute(url: str, sql: str) -> None:
    if url.startswith("postgresql://"):
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        return
    with sqlite3.connect(url) as conn:
        conn.execute(sql)


# ---------------------------------------------------------------------- keys


def write_key_file(path: Path, keys: Sequence[str], mode: int) -> Path:
    path.write_text("# gmp secrets key: current first\n" + "\n".join(keys) + "\n")
    path.chmod(mode)
    return path


def test_a_key_file_other_users_can_read_is_refused(tmp_path: Path) -> None:
    file = write_key_file(tmp_path / "secrets.key", [KEY], 0o644)
    with pytest.raises(ConfigError) as error:
        Keyring.from_settings(SecretsSettings(key_file=str(file)))
    assert str(error.value) == (
        f"[secrets] key_file {file}: other users may read or change it (mode 644); "
        f"run: chmod 600 {file}"
    )
    file.chmod(0o640)  # the service's group may read it (a mounted secret, say)
    keyring = Keyring.from_settings(SecretsSettings(key_file=str(file)))
    assert keyring.current_id == kid(KEY)


def test_a_key_file_lists_the_current_key_then_older_ones(tmp_path: Path) -> None:
    file = write_key_file(tmp_path / "secrets.key", [NEXT_KEY, KEY], 0o600)
    keyring = Keyring.from_settings(SecretsSettings(key_file=str(file)))
    old = Keyring.from_settings(SecretsSettings(key=KEY))
    place = account_place("acc")
    assert keyring.open(old.seal(PASSWORD, place), place) == PASSWORD
    assert keyring.seal(PASSWORD, place).startswith(f"gmp:v1:{kid(NEXT_KEY)}:")


@pytest.mark.parametrize(
    ("tables", "environ", "problem"),
    [
        ({"key": "not base64!"}, {}, "[secrets] key: Value error, must be 32 random bytes"),
        ({"key": base64.b64encode(b"short").decode()}, {}, "[secrets] key: Value error, must"),
        ({}, {"GMP_SECRETS_KEY": "x" * 43}, "environment variable GMP_SECRETS_KEY: Value error"),
        ({}, {"GMP_SECRETS_OLD_KEYS": f"{KEY},bad"}, "GMP_SECRETS_OLD_KEYS: Value error, must"),
        ({"key": KEY, "key_file": "/k"}, {}, "key_file: Value error, set key or key_file, not"),
    ],
)
def test_bad_keys_stop_start_up_without_echoing_them(
    tables: dict[str, Any], environ: dict[str, str], problem: str
) -> None:
    config = Config({"secrets": tables}, environ=environ)
    with pytest.raises(ConfigError) as error:
        config.register("secrets", SecretsSettings)
    assert problem in str(error.value)
    for value in [*tables.values(), *environ.values()]:
        assert value not in str(error.value)


def test_a_key_file_that_cannot_be_used_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gmp\.key: cannot be read \(No such file"):
        Keyring.from_settings(SecretsSettings(key_file=str(tmp_path / "gmp.key")))
    empty = write_key_file(tmp_path / "empty.key", [], 0o600)
    with pytest.raises(ConfigError, match="holds no key"):
        Keyring.from_settings(SecretsSettings(key_file=str(empty)))
    bad = write_key_file(tmp_path / "bad.key", [KEY, "short"], 0o600)
    with pytest.raises(ConfigError, match=r"bad\.key: key 2: must be 32 random bytes"):
        Keyring.from_settings(SecretsSettings(key_file=str(bad)))


def test_check_config_finds_a_bad_key() -> None:
    from gmp_core.cli import cli

    env = {"GMP_CONFIG": "", "GMP_SECRETS_KEY": "hunter2"}
    result = CliRunner().invoke(cli, ["check-config"], env=env)
    assert result.exit_code == 1
    assert "environment variable GMP_SECRETS_KEY: Value error, must be 32" in result.output
    assert "hunter2" not in result.output


async def test_the_key_comes_from_the_environment(tmp_path: Path) -> None:
    config = Config({"sql": {"url": str(tmp_path / "gmp.db")}}, environ={"GMP_SECRETS_KEY": KEY})
    config.register("sql", SqlSettings)
    store = gmp_make_store(config)
    assert store is not None
    await store.open()
    await store.close()
    assert store.keyring.current_id == kid(KEY)


def test_volume_credentials_are_the_fields_the_api_redacts() -> None:
    """The store seals exactly what gmp_volumes treats as secret, for every backend."""
    for model in BACKEND_CONFIGS.values():
        for field in model.model_fields:
            assert is_secret_field(field) == (redact({field: "x"})[field] == REDACTED), field
    assert {f for m in BACKEND_CONFIGS.values() for f in m.model_fields if is_secret_field(f)} == {
        "access_key",
        "secret_key",
        "password",
        "token",
    }


# ---------------------------------------------------------------------- the service


# plain-text AUTH is what the test sink offers without TLS; fine on 127.0.0.1
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_an_encrypted_password_authenticates_at_the_smtp_server(
    db_url: str,  # before make_service: the schema is dropped after the service stops
    make_service: ServiceFactory,
    events: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = await SmtpSink(credentials={"mailer": PASSWORD}).start()
    try:
        with caplog.at_level(logging.DEBUG):
            service = await make_service(sql={"url": db_url}, secrets={"key": KEY})
            await service.put_account(account(sink, user="mailer", password=PASSWORD))
            assert PASSWORD not in await raw_text(db_url)
            await service.add_messages([message("m1")])
            await events.wait("sent", "m1")
        assert sink.logins == ["mailer"]  # AUTH with the password the store decrypted
        assert PASSWORD not in caplog.text and KEY not in caplog.text
    finally:
        await sink.stop()


async def test_without_a_key_start_up_warns_that_secrets_are_in_clear(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gmp.secrets"):
        await make_service()
    [warning] = [r for r in caplog.records if r.name == "gmp.secrets"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        "no secrets key is configured ([secrets] key or key_file, GMP_SECRETS_KEY): "
        "SMTP passwords and volume credentials are stored in clear"
    )


async def test_with_a_key_start_up_says_secrets_are_encrypted(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gmp.secrets"):
        await make_service(secrets={"key": KEY})
    [info] = [r for r in caplog.records if r.name == "gmp.secrets"]
    assert info.levelno == logging.INFO
    assert info.getMessage() == f"stored secrets are encrypted (key {kid(KEY)})"
    assert KEY not in caplog.text


async def test_a_webdav_volume_set_over_the_api_keeps_its_password_sealed(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog, tmp_path: Path
) -> None:
    """Set with a password, kept sealed, opened again at the next start, and used."""
    root = tmp_path / "dav"
    root.mkdir()
    (root / "plan.odt").write_bytes(b"plan")
    dav = WebdavServer(root, password=DAV_PASSWORD).start()
    tables = {"secrets": {"key": KEY}, "volumes": {"api_allow_networks": ["127.0.0.0/8"]}}
    try:
        first = await make_service(**tables)
        registry = registry_of(first)
        assert registry is not None
        config = {"url": dav.url, "username": "u", "password": DAV_PASSWORD}
        config["allow_networks"] = ["127.0.0.1/32"]
        await registry.put({"name": "dav", "backend": "webdav", "config": config})
        await first.stop()
        assert DAV_PASSWORD not in await raw_text(str(tmp_path / "gmp.db"))

        service = await make_service(**tables)  # mounts the stored volume again
        await service.put_account(account(sink))
        attachment = {"filename": "plan.odt", "storage_path": "dav:plan.odt"}
        await service.add_messages([message("m1", attachments=[attachment])])
        await events.wait("sent", "m1")
        assert attachments_of(sink.mails[0])[0][2] == b"plan"
    finally:
        dav.stop()


# ---------------------------------------------------------------------- the command


def test_gmp_secrets_rotate_without_a_key_fails_before_creating_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no plugins.toml: the default database is ./gmp.db
    result = CliRunner().invoke(secrets_command, ["rotate"], env={"GMP_CONFIG": ""})
    assert result.exit_code == 1
    assert "no current key to rotate to" in result.output
    assert list(tmp_path.iterdir()) == []


def test_gmp_secrets_rotate(tmp_path: Path) -> None:
    db = tmp_path / "gmp.db"
    config = tmp_path / "plugins.toml"
    config.write_text(f'[sql]\nurl = "{db}"\n')

    async def clear_account() -> None:
        store = await opened(str(db))
        await put_secrets(store)
        await store.close()

    run_async(clear_account)
    runner = CliRunner()
    args = ["rotate", "--config", str(config)]
    result = runner.invoke(secrets_command, args, env={})
    assert result.exit_code == 1
    assert "no current key to rotate to" in result.output

    result = runner.invoke(secrets_command, args, env={"GMP_SECRETS_KEY": KEY})
    assert result.exit_code == 0, result.output
    assert result.output == f"re-encrypted 3 secrets with key {kid(KEY)} (0 already were)\n"
    assert PASSWORD not in str(run_async(lambda: raw_text(str(db))))

    env = {"GMP_SECRETS_KEY": NEXT_KEY, "GMP_SECRETS_OLD_KEYS": KEY}
    result = runner.invoke(secrets_command, args, env=env)
    assert result.output == f"re-encrypted 3 secrets with key {kid(NEXT_KEY)} (0 already were)\n"

    result = runner.invoke(secrets_command, args, env={"GMP_SECRETS_KEY": KEY})
    assert result.exit_code == 1
    assert "cannot decrypt the password of account 'acc'" in result.output


def test_gmp_secrets_is_a_command_of_gmp() -> None:
    group = click.Group()
    make_plugin_manager().hook.gmp_register_commands(cli=group)
    result = CliRunner().invoke(group, ["secrets", "new-key"])
    assert result.exit_code == 0
    assert len(base64.b64decode(result.output.strip())) == 32
