"""Configuration: file, GMP_<TABLE>_<KEY>, legacy flat names, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gmp_core import Config, ConfigError, Service
from gmp_core.plugins import describe_plugins, make_plugin_manager


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.load(environ={})
    assert config.path is None
    assert config.service.default_priority == 2
    assert config.service.retry_delays == [60, 300, 900, 3600, 7200]
    assert config.service.retries_allowed == 5


def test_file_then_environment_then_legacy_names(tmp_path: Path) -> None:
    file = tmp_path / "plugins.toml"
    file.write_text(
        '[service]\ndefault_priority = 1\nsend_loop_interval = 2.0\n[sql]\nurl = "from-file.db"\n'
    )
    environ = {
        "GMP_SERVICE_SEND_LOOP_INTERVAL": "0.25",  # the table-qualified name
        "GMP_DB_PATH": "legacy.db",  # the seed's flat name
        "GMP_BATCH_SIZE_PER_ACCOUNT": "7",
        "GMP_SERVICE_RETRY_DELAYS": "1, 2,3",
    }
    config = Config.load(file, environ=environ)
    service = Service(config, load_entrypoints=True)
    assert config.service.default_priority == 1  # file
    assert config.service.send_loop_interval == 0.25  # env wins over the file
    assert config.service.batch_size_per_account == 7
    assert config.service.retry_delays == [1, 2, 3]
    assert service.config.section("sql").url == "legacy.db"


def test_qualified_name_wins_over_legacy_name() -> None:
    config = Config({}, environ={"GMP_DEFAULT_PRIORITY": "3", "GMP_SERVICE_DEFAULT_PRIORITY": "0"})
    assert config.service.default_priority == 0


def test_legacy_api_token_and_host(tmp_path: Path) -> None:
    config = Config(
        {}, environ={"GMP_API_TOKEN": "t0k", "GMP_HOST": "127.0.0.2", "GMP_PORT": "9001"}
    )
    Service(config)
    assert config.section("token_auth").api_token == "t0k"
    assert config.section("rest").host == "127.0.0.2"
    assert config.section("rest").port == 9001


@pytest.mark.parametrize(
    ("tables", "environ", "expected"),
    [
        ({"service": {"default_priority": 7}}, {}, "[service] default_priority: Value error, must"),
        ({"service": {"max_retrys": 2}}, {}, "[service] max_retrys: unknown key"),
        (
            {},
            {"GMP_SEND_LOOP_INTERVAL": "soon"},
            "environment variable GMP_SEND_LOOP_INTERVAL: Input should be a valid number",
        ),
        ({"service": "x"}, {}, "[service] must be a table"),
    ],
)
def test_bad_values_name_the_key(tables: dict, environ: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config(tables, environ=environ)
    assert str(error.value).startswith(expected)


def test_plugin_tables_are_validated(tmp_path: Path) -> None:
    config = Config({"smtp": {"connect_timeout": "never"}}, environ={})
    with pytest.raises(ConfigError, match=r"\[smtp\] connect_timeout"):
        Service(config)


def test_errors_never_echo_values() -> None:
    with pytest.raises(ConfigError) as error:
        Config({"service": {"default_priority": "hunter2"}}, environ={})
    assert "hunter2" not in str(error.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[service\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad, environ={})
    with pytest.raises(ConfigError, match="configuration file not found"):
        Config.load(tmp_path / "missing.toml", environ={})


def test_disabled_plugins_are_never_loaded() -> None:
    config = Config({"plugins": {"disable": ["rest", "smtp"]}}, environ={})
    service = Service(config)
    names = {info.name: info.enabled for info in describe_plugins(service.pm)}
    assert names["rest"] is False and names["smtp"] is False and names["sql"] is True


def test_shipped_plugins_toml_is_valid() -> None:
    config = Config.load(Path(__file__).parent.parent / "plugins.toml", environ={})
    Service(config)
    assert config.unknown_tables() == []


def test_every_setting_is_documented() -> None:
    """Every setting of the core and the bundled plugins (installed third-party plugins, such
    as the examples CI installs, document their own)."""
    reference = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    installed = describe_plugins(make_plugin_manager())
    third_party = [info.name for info in installed if info.source == "installed"]
    config = Config({"plugins": {"disable": third_party}}, environ={})
    Service(config)
    for table, model in config.declared_tables().items():
        section = reference.split(f"## [{table}]", 1)
        assert len(section) == 2, f"docs/configuration.md has no [{table}] section"
        body = section[1].split("\n## ", 1)[0]
        for key in model.model_fields:
            assert f"| `{key}` |" in body, f"[{table}] {key} is not documented"


def test_check_config_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gmp_core.cli import cli

    good = tmp_path / "good.toml"
    good.write_text("[service]\ndefault_priority = 1\n[leftover]\nx = 1\n")
    result = CliRunner().invoke(cli, ["check-config", "--config", str(good)], env={})
    assert result.exit_code == 0
    assert "configuration OK" in result.output
    assert "[leftover] is not used by any enabled plugin" in result.output

    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\ncommand_timeout = "slow"\n')
    result = CliRunner().invoke(cli, ["check-config", "--config", str(bad)], env={})
    assert result.exit_code == 1
    assert "[smtp] command_timeout" in result.output


@pytest.mark.parametrize(
    ("file", "env"),
    [
        ('[rest]\nhost = "0.0.0.0"\n', {}),
        ("", {"GMP_HOST": "0.0.0.0"}),  # the original's Docker environment, without a token
    ],
)
def test_check_config_refuses_what_serve_refuses(
    tmp_path: Path, file: str, env: dict[str, str]
) -> None:
    """An open API on a public address: serve refuses to start, so check-config says so
    too (both run the plugins' gmp_check_config)."""
    from click.testing import CliRunner

    from gmp_core.cli import cli

    config = tmp_path / "plugins.toml"
    config.write_text(file)
    environ = {"GMP_API_TOKEN": "", **env}
    result = CliRunner().invoke(cli, ["check-config", "--config", str(config)], env=environ)
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0 without an API token" in result.output

    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        Service(Config.load(config, environ=environ)).check()  # what serve's start() runs

    environ["GMP_API_TOKEN"] = "a-token"
    result = CliRunner().invoke(cli, ["check-config", "--config", str(config)], env=environ)
    assert result.exit_code == 0, result.output


def test_check_config_refuses_a_key_file_others_may_read(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gmp_core.cli import cli

    key_file = tmp_path / "secrets.key"
    key_file.write_text("A" * 43 + "=\n")
    key_file.chmod(0o644)
    config = tmp_path / "plugins.toml"
    config.write_text(f'[secrets]\nkey_file = "{key_file}"\n')
    result = CliRunner().invoke(cli, ["check-config", "--config", str(config)], env={})
    assert result.exit_code == 1
    assert "other users may read or change it" in result.output
