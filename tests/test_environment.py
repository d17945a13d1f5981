"""The environment: which variables set what (``gmp check-config`` lists them, names only),
and the typo guard: a ``GMP_*`` variable that nothing reads is a warning at start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gmp_core import Config, Service, Settings, hookimpl, setting
from gmp_core.cli import cli
from gmp_core.config import CORE_ENVIRONMENT
from gmp_core.legacy_ini import NO_EFFECT_ENVIRONMENT
from gmp_core.plugins import make_plugin_manager
from tests.support import base_tables


def warnings_of(config: Config) -> list[str]:
    return [text for level, text in config.startup_notices() if level == logging.WARNING]


def built(environ: dict[str, str], plugins: list[object] | None = None) -> Config:
    config = Config({}, environ=environ)
    Service(config, plugins=plugins or [])
    return config


@pytest.mark.parametrize("name", ["GMP_URL", "GMP_TRACE_PLUGINS", "GMP_REST_PROT", "GMP_APITOKEN"])
def test_a_variable_nothing_reads_is_a_warning_naming_it(name: str) -> None:
    [warning] = warnings_of(built({name: "s3cr3t-value", "HOME": "/x"}))
    assert warning.startswith(f"environment variable {name} is set but nothing reads it")
    assert "s3cr3t-value" not in warning


def test_the_warning_suggests_the_name_meant() -> None:
    [warning] = warnings_of(built({"GMP_REST_PROT": "9000"}))
    assert "did you mean GMP_REST_PORT?" in warning


def test_names_that_are_read_raise_no_warning() -> None:
    environ = {
        "GMP_CONFIG": "",  # the --config option's
        "GMP_API_TOKEN": "t",  # a legacy flat name
        "GMP_REST_PORT": "9000",  # GMP_<TABLE>_<KEY>
        "GMP_SECRETS_KEY": "",  # read by the sql plugin's [secrets] table
        "GMP_TEST_MODE": "true",
        "GMP_LOG_LEVEL": "INFO",
        "PATH": "/bin",  # not ours
    }
    assert warnings_of(built(environ)) == []


def test_a_variable_of_a_disabled_plugin_is_unread() -> None:
    config = Config({"plugins": {"disable": ["rest"]}}, environ={"GMP_REST_PORT": "9000"})
    Service(config)
    assert config.unread_environment() == ["GMP_REST_PORT"]


class ReadsItsOwn(Settings):
    extra_environment = ("GMP_SIGNER_KEY_PATH",)  # read by the plugin itself
    level: int = setting(1, description="a setting")


class Signer:
    @hookimpl
    def gmp_register_settings(self, register: object) -> None:
        register("signer", ReadsItsOwn)  # type: ignore[operator]


def test_plugins_declare_the_variables_they_read_themselves() -> None:
    environ = {"GMP_SIGNER_KEY_PATH": "/k", "GMP_SIGNER_LEVEL": "2", "GMP_SIGNER_LEVLE": "3"}
    config = built(environ, [Signer()])
    assert config.unread_environment() == ["GMP_SIGNER_LEVLE"]
    assert config.section("signer").level == 2


def every_option_envvar(group: click.Group) -> Iterator[str]:
    for command in group.commands.values():
        for param in command.params:
            names = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            yield from (name for name in names if name)
        if isinstance(command, click.Group):
            yield from every_option_envvar(command)


def test_every_command_line_envvar_is_known() -> None:
    """Options of gmp and of the plugins' commands: an envvar added to one and not to
    CORE_ENVIRONMENT (or a plugin's extra_environment) fails here."""
    group = click.Group(commands=dict(cli.commands))  # a copy: leave the real one alone
    make_plugin_manager().hook.gmp_register_commands(cli=group)
    config = built({})
    known = config.known_environment()
    envvars = set(every_option_envvar(group))
    assert "GMP_CONFIG" in envvars and "GMP_CONFIG" in CORE_ENVIRONMENT
    assert envvars <= known, envvars - known


async def test_start_up_logs_the_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    environ = {"GMP_URL": "x", "GMP_SCHEDULER_ACTIVE": "true"}
    service = Service(Config(base_tables(tmp_path), environ=environ))
    with caplog.at_level(logging.WARNING, logger="gmp.config"):
        await service.start()
    await service.stop()
    logged = [r.getMessage() for r in caplog.records if r.name == "gmp.config"]
    assert any(line.startswith("environment variable GMP_URL is set but") for line in logged)
    assert any(line.startswith("GMP_SCHEDULER_ACTIVE has no effect") for line in logged)


def test_check_config_lists_what_came_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "plugins.toml"
    file.write_text("[service]\ndefault_priority = 1\n")
    env = {
        "GMP_API_TOKEN": "hunter2-token",
        "GMP_SERVICE_DEFAULT_PRIORITY": "3",
        "GMP_URL": "http://typo.example",
        "GMP_SCHEDULER_ACTIVE": "true",
    }
    result = CliRunner().invoke(cli, ["check-config", "--config", str(file)], env=env)
    assert result.exit_code == 0, result.output
    assert "from the environment: GMP_API_TOKEN sets [token_auth] api_token" in result.stdout
    assert "from the environment: GMP_SERVICE_DEFAULT_PRIORITY sets [service] default_priority" in (
        result.stdout
    )
    assert "warning: environment variable GMP_URL is set but nothing reads it" in result.stderr
    assert "warning: GMP_SCHEDULER_ACTIVE has no effect" in result.stderr
    assert "hunter2-token" not in result.output and "typo.example" not in result.output


def test_variables_the_file_names_as_references_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume's secret written ${GMP_S3_SECRET} in plugins.toml is read at start-up."""
    monkeypatch.setenv("GMP_S3_SECRET", "s")  # the volumes plugin reads the process's own
    secret = {"bucket": "bkt", "secret_key": "${GMP_S3_SECRET}"}
    mount = {"name": "b", "backend": "s3", "config": secret}
    environ = {"GMP_S3_SECRET": "s", "GMP_S3_SECERT": "s"}
    config = Config({"volumes": {"mounts": [mount]}}, environ=environ)
    Service(config)
    assert config.unread_environment() == ["GMP_S3_SECERT"]


def test_the_names_read_outside_tables_are_documented() -> None:
    """CORE_ENVIRONMENT (one line per name) and the table in docs/configuration.md agree."""
    reference = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for name in [*CORE_ENVIRONMENT, *NO_EFFECT_ENVIRONMENT]:
        assert f"| `{name}` |" in reference, f"{name} is not in docs/configuration.md"
