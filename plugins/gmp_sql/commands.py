"""``gmp secrets``: keys for the secrets the store keeps (docs/security.md, "Secrets at rest")."""

from __future__ import annotations

import asyncio
from typing import cast

import click

from gmp_core import Config, ConfigError
from gmp_core.cli import config_option
from gmp_sql.secrets import NO_KEY_TO_ROTATE_TO, new_key


@click.group()
def secrets() -> None:
    """Keys that encrypt SMTP passwords and volume credentials in the store."""


@secrets.command("new-key")
def new_key_command() -> None:
    """Print a new random key (base64) for [secrets] key, GMP_SECRETS_KEY or a key file."""
    click.echo(new_key())


@secrets.command()
@config_option
def rotate(config_path: str | None) -> None:
    """Re-encrypt every stored secret with the current key.

    Values in clear and values encrypted with an older key (listed in [secrets] old_keys or
    the key file) are rewritten; the proxy may keep running meanwhile."""
    try:
        resealed, current, key = asyncio.run(_rotate(Config.load(config_path)))
    except ConfigError as exc:  # SecretError is one: it names the account or volume
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-encrypted {resealed} secrets with key {key} ({current} already were)")


async def _rotate(config: Config) -> tuple[int, int, str]:
    from gmp_sql import SqlSettings, gmp_make_store  # the plugin module imports this one
    from gmp_sql.secrets import Keyring, SecretsSettings

    config.register("sql", SqlSettings)
    secrets = cast(SecretsSettings, config.register("secrets", SecretsSettings))
    if not Keyring.from_settings(secrets).encrypts:  # before the store: nothing created
        raise ConfigError(NO_KEY_TO_ROTATE_TO)
    store = gmp_make_store(config)
    assert store is not None  # the SQL plugin always makes one
    try:
        await store.open()  # also checks that every stored secret opens with the keys given
        resealed, current = await store.rotate_secrets()
    finally:
        await store.close()
    return resealed, current, str(store.keyring.current_id)
