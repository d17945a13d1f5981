"""One test per hook, named ``test_hook_<hook>`` (test_plugins.py checks that every hook has
one). Each is the example of its section in docs/plugins.md, run for real."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import gmp_sql
import pytest
from click.testing import CliRunner

from gmp_core import (
    Account,
    AttachmentError,
    Config,
    ConfigError,
    DeliveryReport,
    Event,
    OutgoingMessage,
    Principal,
    RateDecision,
    ReportReply,
    SendResult,
    Service,
    Settings,
    Store,
    hookimpl,
    setting,
)
from gmp_core.cli import cli
from gmp_core.plugins import make_plugin_manager
from gmp_core.testing import SmtpSink
from tests.support import (
    EventLog,
    ServiceFactory,
    account,
    base_tables,
    merge,
    message,
    status_of,
    wait_until,
)

# ---------------------------------------------------------------------------- settings


class GreetingSettings(Settings):
    text: str = setting("hello", description="what to say")
    times: int = setting(1, ge=1, description="how often")


class Greeting:
    @hookimpl
    def gmp_register_settings(self, register: Callable[[str, type[Settings]], None]) -> None:
        register("greeting", GreetingSettings)


def test_hook_gmp_register_settings() -> None:
    config = Config({"greeting": {"times": 2}}, environ={"GMP_GREETING_TEXT": "ciao"})
    Service(config, plugins=[Greeting()])
    assert config.section("greeting") == GreetingSettings(text="ciao", times=2)

    with pytest.raises(ConfigError, match=r"\[greeting\] times: Input should be greater"):
        Service(Config({"greeting": {"times": 0}}, environ={}), plugins=[Greeting()])


class PoliteGreeting(Greeting):
    @hookimpl
    def gmp_check_config(self, service: Service) -> None:
        if service.config.section("greeting").times > 3:
            raise ConfigError("[greeting] times: more than 3 is rude; at most 3")


async def test_hook_gmp_check_config(tmp_path: Path) -> None:
    config = Config(merge(base_tables(tmp_path), {"greeting": {"times": 5}}), environ={})
    service = Service(config, plugins=[PoliteGreeting()])
    with pytest.raises(ConfigError, match="more than 3 is rude"):
        service.check()  # what gmp check-config runs
    with pytest.raises(ConfigError, match="more than 3 is rude"):
        await service.start()
    assert not (tmp_path / "gmp.db").exists()  # refused before the store was opened


# ---------------------------------------------------------------------------- store


class RecordingStore:
    """Wraps the bundled SQL store and notes which of its methods the core used."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.used: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.used[name] += 1
        return getattr(self.inner, name)


class Recording:
    def __init__(self) -> None:
        self.store: RecordingStore | None = None

    @hookimpl(tryfirst=True)  # asked before gmp_sql, which would answer too
    def gmp_make_store(self, config: Config) -> RecordingStore | None:
        if not config.section("sql").url.endswith(".db"):
            return None  # not ours: let the next plugin answer
        self.store = RecordingStore(gmp_sql.gmp_make_store(config))
        return self.store


async def test_hook_gmp_make_store(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    plugin = Recording()
    service = await make_service(plugins=[plugin])
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    assert plugin.store is not None
    assert {"open", "enqueue", "claim", "record"} <= set(plugin.store.used)


# ---------------------------------------------------------------------------- transports


class OutboxTransport:
    def __init__(self) -> None:
        self.outbox: list[bytes] = []

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        assert message.data is not None
        self.outbox.append(message.data)
        return SendResult.ok()

    async def forget_account(self, account_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Outbox:
    def __init__(self) -> None:
        self.transport = OutboxTransport()

    @hookimpl
    def gmp_register_transports(
        self, register: Callable[[str, OutboxTransport], None], service: Service
    ) -> None:
        register("outbox", self.transport)


async def test_hook_gmp_register_transports(make_service: ServiceFactory, events: EventLog) -> None:
    plugin = Outbox()
    service = await make_service(plugins=[plugin])
    await service.put_account({"id": "acc", "host": "unused", "transport": "outbox"})
    await service.add_messages([message("m1")])
    await events.wait("sent", "m1")
    [data] = plugin.transport.outbox
    assert b"X-GMP-ID: m1" in data


# ---------------------------------------------------------------------------- volumes


class ReportsVolume:
    """Attachments of account ``acc`` from a dict: ``reports:<name>``."""

    files = {"q3.csv": b"month,sent\nJuly,12\n"}

    def accepts(self, account_id: str) -> bool:
        return account_id == "acc"

    async def read(self, subpath: str, account_id: str) -> bytes:
        try:
            return self.files[subpath]
        except KeyError:
            raise AttachmentError(f"no such report: {subpath}", temporary=False) from None


class Reports:
    @hookimpl
    def gmp_register_volume_backends(
        self, register: Callable[[str, ReportsVolume], None], service: Service
    ) -> None:
        register("reports", ReportsVolume())


async def test_hook_gmp_register_volume_backends(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service(plugins=[Reports()])
    await service.put_account(account(sink))
    await service.put_account(account(sink, id="other"))
    result = await service.add_messages(
        [
            message("m1", attachments=[{"filename": "q3.csv", "storage_path": "reports:q3.csv"}]),
            message("m2", attachments=[{"filename": "x.csv", "storage_path": "reports:q9.csv"}]),
            message(
                "m3",
                account_id="other",
                attachments=[{"filename": "q3.csv", "storage_path": "reports:q3.csv"}],
            ),
        ]
    )
    assert [(r.id, r.reason) for r in result.rejected] == [
        ("m3", "volume not allowed for this account: reports:q3.csv")
    ]
    [mail] = await sink.wait_for(1)
    [attachment] = mail.message.iter_attachments()
    assert attachment.get_content() == "month,sent\nJuly,12\n"
    [error] = await events.wait("error", "m2")
    assert error.detail == "attachment 'x.csv': no such report: q9.csv"


# ---------------------------------------------------------------------------- rate limits


class QuietHours:
    """Holds every send for an hour (a stand-in for 'not at night')."""

    async def decide(self, account: Account, wanted: int, now: float) -> RateDecision:
        return RateDecision(allowed=0, retry_at=[now + 3600] * wanted)


class Quiet:
    @hookimpl
    def gmp_register_rate_limit_policies(
        self, register: Callable[[str, QuietHours], None], service: Service
    ) -> None:
        register("quiet-hours", QuietHours())


async def test_hook_gmp_register_rate_limit_policies(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service(plugins=[Quiet()])
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])
    [deferred] = await events.wait("deferred", "m1")
    assert deferred.detail == "rate limited"
    assert deferred.data["retry_at"] == pytest.approx(deferred.ts + 3600, abs=5)
    assert await status_of(service, "m1") == "scheduled"
    assert sink.mails == []


# ---------------------------------------------------------------------------- reporters


class JsonLinesReporter:
    report_deferred = False

    def __init__(self, path: Path) -> None:
        self.path = path

    async def report(self, reports: Sequence[DeliveryReport]) -> ReportReply:
        with self.path.open("a") as out:
            for report in reports:
                out.write(json.dumps(report.as_item()) + "\n")
        return ReportReply(acknowledged=True)

    async def close(self) -> None:
        pass


async def test_hook_gmp_register_reporters(
    make_service: ServiceFactory, sink: SmtpSink, tmp_path: Path
) -> None:
    class JsonLines:
        @hookimpl
        def gmp_register_reporters(
            self, register: Callable[[str, JsonLinesReporter], None], service: Service
        ) -> None:
            register("jsonl", JsonLinesReporter(tmp_path / "reports.jsonl"))

    service = await make_service(plugins=[JsonLines()])
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])

    async def acknowledged() -> bool:
        record, _ = await service.get_message("m1")
        return record.reported_ts is not None

    await wait_until(acknowledged)
    [line] = (tmp_path / "reports.jsonl").read_text().splitlines()
    item = json.loads(line)
    assert (item["id"], item["status"], item["account_id"]) == ("m1", "sent", "acc")
    assert item["sent_ts"] is not None and item["error"] is None


# ---------------------------------------------------------------------------- authentication


class ClientCertificate:
    """Trusts the certificate subject a TLS-terminating proxy puts in a header."""

    @hookimpl(tryfirst=True)  # before token_auth
    def gmp_authenticate(self, headers: Mapping[str, str], config: Config) -> Principal | None:
        subject = headers.get("x-client-subject")
        if subject is None:
            return None  # not ours: the next plugin decides
        return Principal(subject, accounts=frozenset({subject}))


def test_hook_gmp_authenticate() -> None:
    config = Config({"token_auth": {"api_token": "t0k"}}, environ={})
    service = Service(config, plugins=[ClientCertificate()])
    assert service.authenticate({"X-Client-Subject": "billing"}) == Principal(
        "billing", accounts=frozenset({"billing"})
    )
    assert service.authenticate({"X-API-Token": "t0k"}) == Principal("token")
    assert service.authenticate({"X-API-Token": "wrong"}) is None


# ---------------------------------------------------------------------------- sending


class CampaignSettings(Settings):
    name: str = setting("spring", description="the campaign messages belong to")


class Campaign:
    @hookimpl
    def gmp_register_settings(self, register: Callable[[str, type[Settings]], None]) -> None:
        register("campaign", CampaignSettings)

    @hookimpl
    async def gmp_prepare_message(
        self, message: OutgoingMessage, account: Account, service: Service
    ) -> None:
        await asyncio.sleep(0)  # may await: look something up, sign
        campaign = service.config.section("campaign").name
        message.extra_headers["X-Campaign"] = f"{campaign}/{account.id}/{message.attempt}"


async def test_hook_gmp_prepare_message(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service(plugins=[Campaign()], campaign={"name": "autumn"})
    await service.put_account(account(sink))
    await service.add_messages([message("m1")])
    [mail] = await sink.wait_for(1)
    assert mail.message["X-Campaign"] == "autumn/acc/1"


class SentCounter:
    def __init__(self) -> None:
        self.sent: Counter[str | None] = Counter()

    @hookimpl
    def gmp_event(self, event: Event) -> None:  # takes only the arguments it needs
        if event.kind == "sent":
            self.sent[event.account_id] += 1


async def test_hook_gmp_event(
    service: Service, events: EventLog, register_gmp_plugin: Callable[[object], object]
) -> None:
    counter = SentCounter()
    register_gmp_plugin(counter)  # an observer may join a running service
    await service.add_messages([message("m1"), message("m2")])
    await events.wait("sent", count=2)
    assert counter.sent == {"acc": 2}


# ---------------------------------------------------------------------------- lifecycle


class Heartbeat:
    """A background task for the service's lifetime, in ``service.state``."""

    def __init__(self) -> None:
        self.queue_at_start: dict[str, int] | None = None

    @hookimpl
    async def gmp_startup(self, service: Service) -> None:
        self.queue_at_start = await service.store.queue_counts()  # the store is open
        service.state["heartbeat"] = asyncio.create_task(asyncio.Event().wait())

    @hookimpl
    async def gmp_shutdown(self, service: Service) -> None:
        task: asyncio.Task[None] = service.state.pop("heartbeat")
        task.cancel()


async def test_hook_gmp_startup(make_service: ServiceFactory) -> None:
    plugin = Heartbeat()
    service = await make_service(plugins=[plugin])
    assert plugin.queue_at_start is not None
    assert not service.state["heartbeat"].done()


async def test_hook_gmp_shutdown(make_service: ServiceFactory) -> None:
    service = await make_service(plugins=[Heartbeat()])
    task = service.state["heartbeat"]
    await service.stop()
    assert "heartbeat" not in service.state
    with pytest.raises(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------------------- commands


class Hello:
    @hookimpl
    def gmp_register_commands(self, cli: click.Group) -> None:
        @cli.command()
        @click.argument("name")
        def hello(name: str) -> None:
            """Say hello."""
            click.echo(f"hello, {name}")


def test_hook_gmp_register_commands() -> None:
    group = click.Group(commands=dict(cli.commands))  # a copy: leave the real one alone
    make_plugin_manager(extra_plugins=[Hello()]).hook.gmp_register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello", "world"])
    assert (result.exit_code, result.output) == (0, "hello, world\n")
