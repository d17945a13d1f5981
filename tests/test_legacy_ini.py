"""The original service's config.ini: every key it knew lands on the same setting its
environment variable sets here, its precedence (the file over the environment), its types,
keys it cannot map ignored by name, and ``gmp migrate-config``'s plugins.toml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gmp_core import Config, ConfigError, Service
from gmp_core.cli import cli
from gmp_core.legacy_ini import KEYS, boolean, translate

# Every key of the original's table (notes §2.2), volumes included, plus leftovers of its
# removed scheduler rules and a typo: those are ignored by name.
ORIGINAL = """\
[storage]
db_path = {root}/mail_service.db

[server]
host = 127.0.0.1
port = 8123
api_token = original-token

[client]
client_sync_url = http://127.0.0.1:9/email/mailproxy/mp_endpoint/proxy_sync
client_sync_user = syncuser
client_sync_password = sync%%pass
client_sync_token = sync-token

[scheduler]
active = true
timezone = Europe/Rome

[delivery]
send_interval_seconds = 0.25
test_mode = yes
default_priority = 1
delivery_report_retention_seconds = 3600
batch_size_per_account = 10
batch_sise = 3

[logging]
delivery_activity = on

[volumes]
volume.docs.backend = local
volume.docs.config = {{"path": "{root}/docs"}}
volume.docs.account_id = acc
volume.shared.backend = local
volume.shared.config = {{"base_path": "{root}/shared"}}
volume.shared.account_id =
volume.base64.backend = base64
volume.base64.config = {{}}
volume.docs.owner = nobody
"""

IGNORED = [
    "[scheduler] active",
    "[scheduler] timezone",
    "[delivery] batch_sise",
    "[volumes] volume.docs.owner",
    "[volumes] volume.base64.*",
]


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    for name in ("docs", "shared"):
        (tmp_path / name).mkdir()
    path = tmp_path / "config.ini"
    path.write_text(ORIGINAL.format(root=tmp_path))
    return path


def every_section(config: Config) -> dict[str, Any]:
    return {table: config.section(table) for table in config.declared_tables()}


def loaded(path: Path, environ: dict[str, str] | None = None) -> Config:
    config = Config.load(path, environ=environ or {})
    Service(config)  # registers every plugin's table
    return config


def test_every_key_of_the_original_lands_on_its_setting(ini: Path, tmp_path: Path) -> None:
    config = loaded(ini)
    assert config.section("sql").url == f"{tmp_path}/mail_service.db"
    rest = config.section("rest")
    assert (rest.host, rest.port) == ("127.0.0.1", 8123)
    assert config.section("token_auth").api_token == "original-token"
    sync = config.section("proxy_sync")
    assert sync.url == "http://127.0.0.1:9/email/mailproxy/mp_endpoint/proxy_sync"
    assert (sync.user, sync.password, sync.token) == ("syncuser", "sync%pass", "sync-token")
    service = config.service
    assert service.send_loop_interval == 0.25
    assert service.test_mode is True
    assert service.default_priority == 1
    assert service.delivery_report_retention_seconds == 3600
    assert service.batch_size_per_account == 10
    assert config.logging.delivery_activity is True
    mounts = config.section("volumes").mounts
    assert [(m.name, m.backend, m.account_id) for m in mounts] == [
        ("docs", "local", "acc"),
        ("shared", "local", None),  # empty account_id: every account's, as at the original
    ]
    assert mounts[0].backend_config().base_path == f"{tmp_path}/docs"  # the original's "path"


def test_the_translation_follows_the_original_environment_names() -> None:
    """[server] port goes where GMP_PORT goes: each target declares the original's variable."""
    config = Config({}, environ={})
    Service(config)
    for (section, key), target in KEYS.items():
        model = config.declared_tables()[target.table]
        extra = model.model_fields[target.key].json_schema_extra
        assert isinstance(extra, dict), f"[{section}] {key}"
        assert extra["legacy_env"] == target.env, f"[{section}] {key}"


def test_keys_it_cannot_map_are_logged_by_name_never_fatal(ini: Path) -> None:
    config = loaded(ini)
    notices = config.startup_notices()
    assert notices[0][0] == logging.INFO
    assert notices[0][1].startswith(f"read {ini}, the original service's configuration")
    warnings = [text for level, text in notices if level == logging.WARNING]
    for label in IGNORED:
        assert any(f"{ini}: {label} is ignored" in text for text in warnings), label
    [active] = [text for text in warnings if "[scheduler] active" in text]
    assert "no effect here" in active and "[proxy_sync] url" in active


def test_the_file_wins_over_the_environment_as_at_the_original(ini: Path) -> None:
    environ = {
        "GMP_PORT": "9001",  # the original's name: the file still wins, as there
        "GMP_REST_PORT": "9002",
        "GMP_API_TOKEN": "from-env",
        "GMP_SERVICE_MAX_CONCURRENT_SENDS": "3",  # not in the file: the environment applies
        "GMP_REST_ACCESS_LOG": "true",
    }
    config = loaded(ini, environ)
    assert config.section("rest").port == 8123
    assert config.section("token_auth").api_token == "original-token"
    assert config.service.max_concurrent_sends == 3
    assert config.section("rest").access_log is True
    assert config.environment_used == {
        "GMP_SERVICE_MAX_CONCURRENT_SENDS": "[service] max_concurrent_sends",
        "GMP_REST_ACCESS_LOG": "[rest] access_log",
    }
    warnings = [text for level, text in config.startup_notices() if level == logging.WARNING]
    assert any(text.startswith("GMP_REST_PORT is ignored: ") for text in warnings)
    assert any(text.startswith("GMP_API_TOKEN is ignored: ") for text in warnings)


def test_in_plugins_toml_the_environment_wins(tmp_path: Path) -> None:
    file = tmp_path / "plugins.toml"
    file.write_text('[rest]\nport = 8123\n[token_auth]\napi_token = "from-file"\n')
    config = loaded(file, {"GMP_PORT": "9001", "GMP_API_TOKEN": "from-env"})
    assert config.section("rest").port == 9001
    assert config.section("token_auth").api_token == "from-env"


def test_which_file_is_read(ini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Config.load(environ={}).path == Path("config.ini")  # no plugins.toml here
    assert Config.load(environ={"GMP_CONFIG": str(ini)}).file_wins
    (tmp_path / "plugins.toml").write_text("[service]\n")
    found = Config.load(environ={})
    assert found.path == Path("plugins.toml") and not found.file_wins


@pytest.mark.parametrize(
    ("words", "value"),
    [(["1", "true", "Yes", " on "], True), (["0", "FALSE", "no", "off"], False)],
)
def test_booleans_as_the_original_read_them(words: list[str], value: bool) -> None:
    for word in words:
        assert boolean(word) is value
        tables = translate(f"[delivery]\ntest_mode = {word}\n").tables
        assert tables == {"service": {"test_mode": value}}


def test_a_boolean_it_does_not_understand_leaves_the_default_and_says_so() -> None:
    translation = translate("[logging]\ndelivery_activity = maybe\n")
    assert translation.tables == {}
    assert translation.ignored == ["[logging] delivery_activity"]
    assert "not a boolean" in translation.notices[0][1]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[server]\nport = eighty\n", "config.ini [server] port: must be an integer"),
        (
            "[delivery]\nsend_interval_seconds = soon\n",
            "config.ini [delivery] send_interval_seconds: must be a number",
        ),
        (
            "[volumes]\nvolume.v.backend = local\nvolume.v.config = {not json}\n",
            "config.ini [volumes] volume.v.config: not valid JSON (Expecting property name",
        ),
        (
            "[volumes]\nvolume.v.backend = local\nvolume.v.config = [1]\n",
            "config.ini [volumes] volume.v.config: must be a JSON object",
        ),
        ("[volumes]\nvolume.v.config = {}\n", "config.ini [volumes] volume.v.backend: missing"),
        (
            "[client]\nclient_sync_password = 100%secret\n",
            "config.ini [client] client_sync_password: a '%' must be written '%%'",
        ),
        ("password = hunter2\n", "config.ini: not a valid INI file (MissingSectionHeaderError"),
        (
            "[server]\nport = 1\nport = 2\n",
            "config.ini: not a valid INI file (DuplicateOptionError on line 3)",
        ),
    ],
)
def test_values_it_cannot_read_stop_start_up_naming_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "config.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        Config.load(path, environ={})
    assert str(raised.value).replace(str(tmp_path) + "/", "").startswith(error)
    assert "hunter2" not in str(raised.value) and "secret" not in str(raised.value)


def test_a_value_out_of_range_names_the_ini_key(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[delivery]\ndefault_priority = 7\n")
    with pytest.raises(ConfigError, match=r"config.ini \[delivery\] default_priority: Value error"):
        Config.load(path, environ={})


def test_migrate_config_prints_a_plugins_toml_giving_the_same_settings(
    ini: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["migrate-config", str(ini)], env={"GMP_CONFIG": ""})
    assert result.exit_code == 0, result.output
    for label in IGNORED:
        assert f"not translated: {label}" in result.stderr
        assert f"#   {ini}: {label} is ignored" in result.stdout
    toml = tmp_path / "plugins.toml"
    toml.write_text(result.stdout)

    checked = runner.invoke(cli, ["check-config", "--config", str(toml)], env={"GMP_CONFIG": ""})
    assert checked.exit_code == 0, checked.output
    assert every_section(loaded(toml)) == every_section(loaded(ini))


def test_migrate_config_refuses_what_start_up_would(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[delivery]\nbatch_size_per_account = 0\n")
    result = CliRunner().invoke(cli, ["migrate-config", str(path)])
    assert result.exit_code == 1
    assert "[delivery] batch_size_per_account: Value error, must be at least 1" in result.output


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            '{"bucket": "b"}',
            "config.ini [volumes] volume.g.backend: Input should be 'local', 'memory'",
        ),
        ('{"path": ""}', "config.ini [volumes] (mounts [0] volume.g): Value error, mounts[0]"),
    ],
)
def test_a_bad_volume_names_it(tmp_path: Path, config: str, error: str) -> None:
    backend = "gcs" if "bucket" in config else "local"  # gcs: the original had it, we do not
    path = tmp_path / "config.ini"
    path.write_text(f"[volumes]\nvolume.g.backend = {backend}\nvolume.g.config = {config}\n")
    with pytest.raises(ConfigError) as raised:
        Service(Config.load(path, environ={}))
    assert str(raised.value).replace(str(tmp_path) + "/", "").startswith(error)
