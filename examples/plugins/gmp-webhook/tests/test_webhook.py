"""The webhook reporter, installed with pip and loaded through its entry point: with the
core's reporter loop, and on its own (batches handed over directly)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from click.testing import CliRunner

from gmp_core import DeliveryReport, Reporter, Service
from gmp_core.cli import cli
from gmp_core.testing import (
    ReportReceiver,
    ServiceStarter,
    SmtpSink,
    account,
    message,
    wait_until,
)


def sent_report(message_id: str) -> DeliveryReport:
    return DeliveryReport(
        event_id=1, id=message_id, account_id="acc", priority=2, status="sent", ts=time.time()
    )


@pytest.fixture
async def webhook(
    make_gmp_service: ServiceStarter, gmp_report_receiver: ReportReceiver
) -> Reporter:
    """The webhook of a running service (which closes it when it stops)."""
    service = await make_gmp_service(
        webhook={"url": gmp_report_receiver.url + "reports", "token": "s3cret"}
    )
    return service.reporters["webhook"]


async def test_posts_each_batch_with_its_token(
    webhook: Reporter, gmp_report_receiver: ReportReceiver
) -> None:
    reports = [sent_report("m1"), sent_report("m2")]
    reply = await webhook.report(reports)

    assert reply.acknowledged
    [request] = gmp_report_receiver.requests
    assert (request.method, request.path) == ("POST", "/reports")
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.json() == {"reports": [r.as_item() for r in reports]}
    assert request.json()["reports"][0]["sent_ts"] == int(reports[0].ts)  # whole seconds


async def test_a_refusal_is_not_an_acknowledgement(
    webhook: Reporter, gmp_report_receiver: ReportReceiver
) -> None:
    gmp_report_receiver.reply = (503, {"error": "try later"})
    assert not (await webhook.report([sent_report("m1")])).acknowledged


async def test_an_unreachable_client_raises(
    webhook: Reporter, gmp_report_receiver: ReportReceiver
) -> None:
    await gmp_report_receiver.stop()  # its port is closed now
    with pytest.raises(httpx.ConnectError):
        await webhook.report([sent_report("m1")])


async def test_heartbeats_send_nothing(
    webhook: Reporter, gmp_report_receiver: ReportReceiver
) -> None:
    assert (await webhook.report([])).acknowledged
    assert gmp_report_receiver.requests == []


async def test_off_until_a_url_is_configured(make_gmp_service: ServiceStarter) -> None:
    service: Service = await make_gmp_service()
    assert "webhook" not in service.reporters


async def test_deferrals_on_request(
    make_gmp_service: ServiceStarter, gmp_report_receiver: ReportReceiver
) -> None:
    service = await make_gmp_service(
        webhook={"url": gmp_report_receiver.url, "report_deferred": True}
    )
    assert service.reporters["webhook"].report_deferred


def test_listed_as_an_installed_plugin() -> None:
    result = CliRunner().invoke(cli, ["plugins", "--json"], env={"GMP_CONFIG": ""})
    assert result.exit_code == 0, result.output
    [webhook] = [p for p in json.loads(result.output) if p["name"] == "webhook"]
    assert (webhook["source"], webhook["version"]) == ("installed", "0.1.0")
    assert webhook["hooks"] == ["gmp_register_reporters", "gmp_register_settings"]


async def test_reports_what_the_service_delivered(
    make_gmp_service: ServiceStarter,
    gmp_smtp_sink: SmtpSink,
    gmp_report_receiver: ReportReceiver,
) -> None:
    """End to end: the core's reporter loop hands the webhook each outcome."""
    service = await make_gmp_service(webhook={"url": gmp_report_receiver.url})
    await service.put_account(account(gmp_smtp_sink))
    gmp_smtp_sink.rcpt_replies["nobody@example.com"] = "550 5.1.1 User unknown"
    await service.add_messages([message("m1"), message("m2", to=["nobody@example.com"])])

    def reported(receiver: ReportReceiver) -> dict[str, str]:
        return {r["id"]: r["status"] for body in receiver.json_bodies() for r in body["reports"]}

    await gmp_report_receiver.wait(lambda receiver: len(reported(receiver)) == 2)
    assert reported(gmp_report_receiver) == {"m1": "sent", "m2": "error"}
    await wait_until(lambda: acknowledged(service, "m1", "m2"))


async def acknowledged(service: Service, *ids: str) -> bool:
    records = [(await service.get_message(id))[0] for id in ids]
    return all(record.reported_ts is not None for record in records)
