"""The maildir transport, installed with pip and loaded through its entry point."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

from click.testing import CliRunner

from gmp_core import Config, Service
from gmp_core.cli import cli
from gmp_core.testing import EventLog, ServiceStarter, fast_tables, message


async def test_messages_land_in_the_maildir(
    make_gmp_service: ServiceStarter, gmp_events: EventLog, tmp_path: Path
) -> None:
    service = await make_gmp_service(maildir={"path": str(tmp_path / "mail")})
    await service.put_account({"id": "acc", "host": "unused", "transport": "maildir"})
    await service.add_messages([message("m1", bcc=["hidden@example.com"])])

    [sent] = await gmp_events.wait("sent", "m1")
    [stored] = mailbox.Maildir(tmp_path / "mail").values()
    assert stored["X-GMP-ID"] == "m1"
    assert stored["Subject"] == "subject m1"
    assert stored["Return-Path"] == "<sender@example.com>"
    assert stored["X-Envelope-To"] == "rcpt@example.com, hidden@example.com"
    assert stored["Bcc"] is None
    assert sent.detail.startswith(f"stored in {tmp_path / 'mail'} as ")


async def test_enabled_from_plugins_toml(tmp_path: Path) -> None:
    """A plain plugins.toml is all it takes: no code, no core change."""
    tables = fast_tables(tmp_path)
    toml = "\n".join(
        f"[{table}]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
        for table, keys in tables.items()
    )
    file = tmp_path / "plugins.toml"
    file.write_text(toml + f'\n[maildir]\npath = "{tmp_path / "dev-mail"}"\n')
    events = EventLog()
    service = Service(Config.load(file, environ={}), plugins=[events])
    await service.start()
    try:
        await service.put_account({"id": "acc", "host": "unused", "transport": "maildir"})
        await service.add_messages([message("m1")])
        await events.wait("sent", "m1")
    finally:
        await service.stop()
    assert [m["X-GMP-ID"] for m in mailbox.Maildir(tmp_path / "dev-mail")] == ["m1"]


def test_listed_as_an_installed_plugin() -> None:
    result = CliRunner().invoke(cli, ["plugins", "--json"], env={"GMP_CONFIG": ""})
    assert result.exit_code == 0, result.output
    [maildir] = [p for p in json.loads(result.output) if p["name"] == "maildir"]
    assert maildir["source"] == "installed"
    assert maildir["version"] == "0.1.0"
    assert maildir["hooks"] == ["gmp_register_settings", "gmp_register_transports"]
