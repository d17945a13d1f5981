"""The plugin system: hooks are documented, typos fail, plugins extend without core changes."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pluggy
import pytest
from click.testing import CliRunner

from gmp_core import (
    Account,
    Config,
    Event,
    OutgoingMessage,
    SendResult,
    Service,
    Transport,
    hookimpl,
    hookspecs,
)
from gmp_core.cli import cli
from gmp_core.plugins import describe_plugins, make_plugin_manager
from gmp_core.testing import SmtpSink
from tests.support import EventLog, ServiceFactory, account, base_tables, message


def test_every_hook_is_documented() -> None:
    hooks = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("gmp_")
    ]
    assert len(hooks) >= 12
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, f"{name} needs a docstring"


def test_misspelt_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def gmp_register_transport(self, register: object) -> None:  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="gmp_register_transport"):
        make_plugin_manager(load_entrypoints=False, extra_plugins=[Typo()])


class MemoryTransport:
    """A third-party style transport: keeps messages in a list."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        self.sent.append(message)
        return SendResult.ok()

    async def forget_account(self, account_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


class MemoryPlugin:
    __name__ = "memory-transport"

    def __init__(self) -> None:
        self.transport = MemoryTransport()

    @hookimpl
    def gmp_register_transports(self, register: Callable[[str, Transport], None]) -> None:
        register("memory", self.transport)

    @hookimpl
    def gmp_prepare_message(self, message: OutgoingMessage) -> None:
        message.extra_headers["X-Prepared"] = f"attempt {message.attempt}"


async def test_a_plugin_transport_and_prepare_hook(tmp_path: Path, events: EventLog) -> None:
    plugin = MemoryPlugin()
    service = Service(Config(base_tables(tmp_path), environ={}), plugins=[plugin, events])
    await service.start()
    try:
        await service.put_account({"id": "mem", "host": "unused", "transport": "memory"})
        await service.add_messages([message("m1", account_id="mem")])
        await events.wait("sent", "m1")
    finally:
        await service.stop()
    [sent] = plugin.transport.sent
    assert sent.data is not None and b"X-Prepared: attempt 1" in sent.data


class Exploding:
    __name__ = "exploding"

    @hookimpl
    def gmp_event(self, event: Event) -> None:
        raise RuntimeError("observer bug")


async def test_a_failing_observer_never_stops_delivery(
    tmp_path: Path, sink: SmtpSink, events: EventLog
) -> None:
    service = Service(Config(base_tables(tmp_path), environ={}), plugins=[Exploding(), events])
    await service.start()
    try:
        await service.put_account(account(sink))
        await service.add_messages([message("m1")])
        await sink.wait_for(1)
        await events.wait("sent", "m1")
    finally:
        await service.stop()


class BrokenTransport(MemoryTransport):
    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        raise RuntimeError("transport bug")


async def test_a_crashing_transport_retries_then_errors(
    make_service: ServiceFactory, events: EventLog
) -> None:
    class Plugin:
        __name__ = "broken"

        @hookimpl
        def gmp_register_transports(self, register: Callable[[str, Transport], None]) -> None:
            register("broken", BrokenTransport())

    service = await make_service(plugins=[Plugin()], service={"retry_delays": [0.01]})
    await service.put_account({"id": "x", "host": "h", "transport": "broken"})
    await service.add_messages([message("m1", account_id="x")])
    [error] = await events.wait("error", "m1")
    assert events.kinds("m1") == ["queued", "deferred", "error"]
    assert error.detail == (
        "gave up after 2 attempts: internal error: RuntimeError: transport bug "
        "(raised by transport 'broken')"
    )


async def test_unknown_transport_is_retried_not_lost(service: Service, events: EventLog) -> None:
    await service.put_account({"id": "x", "host": "h", "transport": "carrier-pigeon"})
    await service.add_messages([message("m1", account_id="x")])
    [deferred] = await events.wait("deferred", "m1")
    assert deferred.detail == "no transport named 'carrier-pigeon' is enabled"


def test_plugins_can_add_commands() -> None:
    class Commands:
        @hookimpl
        def gmp_register_commands(self, cli: click.Group) -> None:
            @cli.command()
            def hello() -> None:
                click.echo("hello from a plugin")

    group = click.Group(commands=dict(cli.commands))
    make_plugin_manager(extra_plugins=[Commands()]).hook.gmp_register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"


def test_gmp_plugins_lists_bundled_plugins() -> None:
    result = CliRunner().invoke(cli, ["plugins"], env={"GMP_CONFIG": ""})
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()}
    assert lines["name"] == ["name", "state", "source", "version", "hooks"]
    assert set(lines) >= {"sql", "smtp", "rest", "token_auth", "ratelimit"}
    version = importlib.metadata.version("genro-mail-proxy")
    assert lines["smtp"][1:] == [
        "enabled",
        "bundled",
        version,
        "gmp_register_settings,",
        "gmp_register_transports",
    ]


def test_plugin_sources() -> None:
    class Local:
        __name__ = "local"

        @hookimpl
        def gmp_event(self, event: Event) -> None:
            pass

    pm = make_plugin_manager({"rest"}, extra_plugins=[Local()])
    infos = {info.name: info for info in describe_plugins(pm)}
    assert (infos["local"].source, infos["local"].version) == ("registered", None)
    assert infos["local"].hooks == ["gmp_event"]
    assert (infos["rest"].source, infos["rest"].enabled) == ("disabled", False)
    assert infos["sql"].source == "bundled"


def hook_names() -> list[str]:
    return [
        name
        for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("gmp_")
    ]


def test_every_hook_has_a_reference_section() -> None:
    """docs/plugins.md: a section per hook, headed by its signature, saying what it is given,
    what it returns and when it is called, with an example."""
    reference = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in hook_names():
        argnames = inspect.signature(getattr(hookspecs, name)).parameters
        heading = f"### {name}({', '.join(argnames)})"
        assert heading in reference, f"docs/plugins.md has no section {heading!r}"
        section = reference.split(heading, 1)[1].split("\n#", 1)[0]
        for part in ("- **Arguments:**", "- **Returns:**", "- **Called:**", "```python"):
            assert part in section, f"the section of {name} in docs/plugins.md lacks {part!r}"


def test_every_hook_has_a_test() -> None:
    """A test named test_hook_<hook> somewhere in tests/ (as datasette's suite requires)."""
    tests = set()
    for file in Path(__file__).parent.rglob("test_*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                tests.add(node.name)
    for name in hook_names():
        assert any(test.startswith(f"test_hook_{name}") for test in tests), (
            f"{name} has no test: write test_hook_{name}"
        )


def test_a_disabled_plugin_is_never_imported() -> None:
    """Blocked before entry points load: a broken or unwanted plugin runs no code at all."""
    script = (
        "import sys\n"
        "from gmp_core import Config, Service\n"
        "service = Service(Config({'plugins': {'disable': ['rest']}}, environ={}))\n"
        "print(sorted(m for m in ('gmp_rest', 'gmp_smtp') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "['gmp_smtp']"
