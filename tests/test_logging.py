"""Logs: JSON lines that parse, delivery activity, and no secrets anywhere in the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gmp_core import Config, ConfigError, Service
from gmp_core.logs import configure_logging
from gmp_core.testing import SmtpSink
from tests.receiver import ReportReceiver
from tests.support import EventLog, ServiceFactory, account, message

TOKEN = "log-test-token-7f3a"
PASSWORD = "smtp-password-9c1e"
WRONG_PASSWORD = "wrong-smtp-password-41aa"
SYNC_PASSWORD = "sync-password-e08b"
SYNC_SECRET = "sync-signing-secret-3d6f"
BODY = "a-very-private-body-5b2d"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_writes_one_object_per_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(Config({"logging": {"format": "json"}}, environ={}).logging, stream=out)
    logging.getLogger("gmp.test").info("sent %s", "m1", extra={"event": "sent", "message_id": "m1"})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gmp.test").exception("it failed")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "sent m1" and first["level"] == "INFO"
    assert (first["logger"], first["event"], first["message_id"]) == ("gmp.test", "sent", "m1")
    assert first["time"].endswith("+00:00")  # ISO 8601, UTC
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]


def test_text_format_and_level(restore_logging: None) -> None:
    out = io.StringIO()
    settings = Config({"logging": {"level": "warning"}}, environ={}).logging
    configure_logging(settings, stream=out)
    logging.getLogger("gmp.test").info("not shown")
    logging.getLogger("gmp.test").warning("shown")
    assert out.getvalue().endswith("WARNING gmp.test: shown\n")


def test_logging_settings_are_validated_and_legacy_names_work() -> None:
    legacy = {"GMP_LOG_LEVEL": "debug", "GMP_LOG_DELIVERY_ACTIVITY": "true"}
    settings = Config({}, environ=legacy).logging
    assert (settings.level, settings.format, settings.delivery_activity) == ("DEBUG", "text", True)
    with pytest.raises(ConfigError, match=r"\[logging\] format"):
        Config({"logging": {"format": "xml"}}, environ={})
    with pytest.raises(ConfigError, match="GMP_LOG_LEVEL"):
        Config({}, environ={"GMP_LOG_LEVEL": "loud"})


async def test_delivery_activity_logs_each_attempt(
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await make_service(logging={"delivery_activity": True})
    await service.put_account(account(sink))
    replies = iter(["451 4.3.0 Try again later"])
    sink.data_reply = lambda envelope: next(replies, None)
    with caplog.at_level(logging.INFO, logger="gmp.activity"):
        await service.add_messages([message("m1"), {"id": "bad"}])
        await events.wait("sent", "m1")
    activity = {r.__dict__["event"]: r for r in caplog.records if r.name == "gmp.activity"}
    assert list(activity) == ["queued", "rejected", "deferred", "sent"]
    deferred = activity["deferred"].__dict__
    assert (deferred["message_id"], deferred["account_id"], deferred["code"]) == ("m1", "acc", 451)
    assert deferred["attempt"] == 1
    assert "451 4.3.0 Try again later" in activity["deferred"].getMessage()
    assert activity["rejected"].getMessage() == "rejected bad: missing from"


async def test_delivery_activity_is_off_by_default(
    service: Service, events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gmp.activity"):
        await service.add_messages([message("m1")])
        await events.wait("sent", "m1")
    assert not [r for r in caplog.records if r.name == "gmp.activity"]


# ---------------------------------------------------------------- the whole process


async def serve_with_json_logs(config: Path) -> tuple[asyncio.subprocess.Process, str]:
    """`gmp serve` logging JSON at DEBUG; returns the process and its API's URL."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "gmp"),
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        cwd=config.parent,
        env={**os.environ, "GMP_CONFIG": "", "GMP_LOG_FORMAT": "json"},
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await proc.stderr.readline()
            assert line, "gmp serve exited during start-up"
            message_ = json.loads(line)["message"]
            if message_.startswith("REST API listening on "):
                return proc, message_.rsplit(" ", 1)[1]


# plain-text AUTH is what the test sink offers without TLS; fine on 127.0.0.1
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_json_logs_of_a_real_process_parse_and_hold_no_secrets(tmp_path: Path) -> None:
    sink = await SmtpSink(credentials={"mailer": PASSWORD}).start()
    receiver = await ReportReceiver().start()
    config = tmp_path / "plugins.toml"
    config.write_text(
        f'[sql]\nurl = "{tmp_path / "gmp.db"}"\n'
        "[rest]\nport = 0\naccess_log = true\n"
        f'[token_auth]\napi_token = "{TOKEN}"\n'
        "[service]\nsend_loop_interval = 0.05\nretry_delays = [0.1]\n"
        '[logging]\nlevel = "DEBUG"\ndelivery_activity = true\n'
        f'[proxy_sync]\nurl = "{receiver.url}"\nuser = "proxy"\npassword = "{SYNC_PASSWORD}"\n'
        f'secret = "{SYNC_SECRET}"\n'
        "[reporting]\ninterval = 0\n"
    )
    proc, url = await serve_with_json_logs(config)
    try:
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Token": TOKEN}) as http:
            smtp_account = account(sink, user="mailer", password=PASSWORD)
            assert (await http.post("/account", json=smtp_account)).status_code == 200
            wrong = account(sink, id="wrong", user="mailer", password=WRONG_PASSWORD)
            assert (await http.post("/account", json=wrong)).status_code == 200
            messages = [
                message("m1", body=BODY, html=f"<p>{BODY}</p>"),
                message("m2", account_id="wrong", body=BODY),
            ]
            answer = await http.post("/commands/add-messages", json={"messages": messages})
            assert answer.json()["queued"] == 2
            await sink.wait_for(1)
            assert sink.logins == ["mailer"]  # the password was used, and must appear nowhere
            await receiver.wait(lambda got: {"m1", "m2"} <= {r["id"] for r in got.reported()})
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/accounts")).status_code == 200
            bad = await http.post("/account", json={**smtp_account, "port": "not-a-port"})
            assert bad.status_code == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        output = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0
        await sink.stop()
        await receiver.stop()

    records = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    activity = {
        (r["event"], r.get("message_id")): r for r in records if r["logger"] == "gmp.activity"
    }
    assert {("queued", "m1"), ("queued", "m2"), ("sent", "m1"), ("error", "m2")} <= activity.keys()
    assert activity[("sent", "m1")]["account_id"] == "acc"
    assert activity[("sent", "m1")]["code"] == 250
    assert activity[("error", "m2")]["code"] == 535  # authentication failed: logged, not secret
    assert ("report_posted", None) in activity
    assert any(r["logger"] == "gmp.rest.access" for r in records)  # requests were logged
    for secret in (PASSWORD, WRONG_PASSWORD, SYNC_PASSWORD, SYNC_SECRET, TOKEN, BODY):
        assert secret not in output, secret
