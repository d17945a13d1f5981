"""The ``gmp`` command: ``serve``, ``plugins``, ``check-config``, ``migrate-config``, plus
plugins' own commands."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import asdict
from pathlib import Path

import click

from gmp_core import legacy_ini
from gmp_core.config import LOG_LEVELS, Config, ConfigError
from gmp_core.logs import configure_logging
from gmp_core.plugins import describe_plugins, make_plugin_manager
from gmp_core.service import Service

# The --config option of `gmp serve`, for plugins' own commands too (gmp_register_commands).
config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="GMP_CONFIG",
    help="plugins.toml, or the original service's config.ini, to use (default: $GMP_CONFIG, "
    "else ./plugins.toml, else ./config.ini, if present)",
)


@click.group()
@click.version_option(package_name="genro-mail-proxy")
def cli() -> None:
    """genro-mail-proxy: an email dispatch proxy."""


@cli.command()
@config_option
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="overrides [logging] level (GMP_LOG_LEVEL)",
)
def serve(config_path: str | None, log_level: str | None) -> None:
    """Run the proxy until SIGTERM or SIGINT, then stop gracefully."""
    config = _load(config_path)
    configure_logging(config.logging, level=log_level)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


async def _serve(config: Config) -> None:
    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
        logging.getLogger("gmp").info("stopping: finishing sends in flight")
    finally:
        await service.stop()


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(config_path: str | None, as_json: bool) -> None:
    """List installed plugins: enabled or not, version, source and hooks."""
    config = _load(config_path)
    infos = describe_plugins(make_plugin_manager(config.disabled_plugins))
    if as_json:
        click.echo(json.dumps([asdict(info) for info in infos], indent=2))
        return
    click.echo(f"{'name':<14} {'state':<9} {'source':<10} {'version':<8} hooks")
    for info in infos:
        state = "enabled" if info.enabled else "disabled"
        click.echo(
            f"{info.name:<14} {state:<9} {info.source:<10} {info.version or '-':<8} "
            f"{', '.join(info.hooks) or '-'}"
        )


@cli.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration (file and GMP_* environment) and exit."""
    config = _load(config_path)
    try:
        service = Service(config)
        service.check()  # what `gmp serve` checks before it opens anything
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None
    click.echo(f"configuration OK ({config.path or 'no file: built-in defaults'})")
    enabled = sorted(name for name, plugin in service.pm.list_name_plugin() if plugin)
    click.echo(f"enabled plugins: {', '.join(enabled)}")
    for variable, key in sorted(config.environment_used.items()):
        click.echo(f"from the environment: {variable} sets {key}")
    for level, text in config.startup_notices():
        if level >= logging.WARNING:
            click.echo(f"warning: {text}", err=True)
        else:
            click.echo(text)
    for table in config.unknown_tables():
        click.echo(f"warning: [{table}] is not used by any enabled plugin", err=True)


@cli.command("migrate-config")
@click.argument("ini_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def migrate_config(ini_file: Path) -> None:
    """Print the plugins.toml equivalent of the original service's config.ini.

    Keys that have no equivalent are listed on stderr and as comments at the top."""
    try:
        translation = legacy_ini.read(ini_file)
        Service(Config(translation.tables, environ={}, sources=translation.sources))
    except (legacy_ini.IniError, ConfigError) as exc:
        raise click.ClickException(f"configuration error: {exc}") from None
    click.echo(legacy_ini.to_toml(translation), nl=False)
    for label in translation.ignored:
        click.echo(f"not translated: {label}", err=True)


def _load(config_path: str | None) -> Config:
    try:
        return Config.load(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


def main() -> None:
    # Plugins may add sub-commands; a broken configuration must not hide the built-in ones.
    try:
        disabled = Config.load().disabled_plugins
    except ConfigError:
        disabled = set()
    make_plugin_manager(disabled).hook.gmp_register_commands(cli=cli)
    cli(prog_name="gmp")


if __name__ == "__main__":  # pragma: no cover
    main()
