"""Fault injection: a real ``gmp serve`` against a sink that misbehaves at random.

The sink (:class:`gmp_core.testing.SmtpSink` with :class:`gmp_core.testing.Faults`) answers
a share of RCPT and DATA with 4xx and 5xx, drops connections mid-DATA and stalls (never
answers: the proxy's ``command_timeout`` must cut in). Each message goes to a recipient of its
own, and the fault each attempt meets is drawn from the seed, the recipient and the attempt
number, so :func:`expected_outcome` knows beforehand how every message must end:

* a 5xx (at RCPT or DATA) ends it as ``error`` with that code;
* a 4xx, a drop or a stall is retried; the first clean attempt sends it; after
  ``retries`` temporary failures in a row it ends as ``error`` "gave up after N attempts",
  with the code of the last failure (none for a drop or a stall).

A few recipients are greylisted for good (every RCPT gets a 451), so the "gave up" path runs
in every run, whatever the seed.

Checked: every message ends as predicted, its final outcome is reported to the ``proxy_sync``
endpoint with that status and code, and each sent message reached the sink exactly once
(no fault here lets the sink keep a mail it did not acknowledge, so there is no excuse for a
duplicate).
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmp_core.testing import Faults, SmtpSink
from tests.processes import TOKEN, ServeProcess, post
from tests.receiver import ReportReceiver

# 5% of the attempts meet a 4xx, 1% a 5xx, 1% a dropped connection, 1% a stall.
FAULTS = Faults(
    seed=9,
    rcpt_temporary=0.03,
    data_temporary=0.02,
    rcpt_permanent=0.005,
    data_permanent=0.005,
    drop=0.01,
    stall=0.01,
)
RETRY_DELAYS = [0.05, 0.05, 0.05]  # three retries, quickly
COMMAND_TIMEOUT = 1.0  # a stall costs this long
GREYLISTED = "451 4.7.1 Greylisted, try again later"


@dataclass
class Expected:
    status: str  # "sent" | "error"
    code: int | None  # the error code reported; None for sent, or after a drop or stall
    gave_up: bool = False
    attempts: int = 1


def expected_outcome(faults: Faults, recipient: str, retries: int) -> Expected:
    """How a message to ``recipient`` must end, given what each attempt meets at the sink."""
    failures = 0
    while True:
        fault = faults.plan(recipient, failures + 1)
        if fault is None:
            return Expected("sent", None, attempts=failures + 1)
        code = int(faults.reply(fault)[:3]) if fault.startswith(("rcpt", "data")) else None
        if fault.endswith("permanent"):
            return Expected("error", code, attempts=failures + 1)
        failures += 1
        if failures > retries:
            return Expected("error", code, gave_up=True, attempts=failures)


@dataclass
class FaultsResult:
    messages: int
    seconds: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    # sent / error / gave up, and "sent after retries" (also counted in sent)
    outcomes: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # id: what was expected, what came
    unreported: list[str] = field(default_factory=list)
    copies_wrong: list[str] = field(default_factory=list)  # sent != exactly one mail
    exit_code: int | None = None

    def check(self) -> None:
        assert not self.wrong, f"{len(self.wrong)} ended wrongly: {self.wrong[:5]}"
        assert not self.unreported, f"{len(self.unreported)} unreported: {self.unreported[:5]}"
        assert not self.copies_wrong, f"wrong number of copies: {self.copies_wrong[:5]}"
        assert self.exit_code == 0, f"the proxy exited with {self.exit_code}"

    def summary(self) -> str:
        faults = ", ".join(f"{kind} {self.injected[kind]}" for kind in Faults.KINDS)
        outcomes = ", ".join(f"{kind} {n}" for kind, n in sorted(self.outcomes.items()))
        return (
            f"messages {self.messages:,}, {self.seconds:.1f} s\n"
            f"faults injected: {faults}\n"
            f"outcomes: {outcomes}\n"
            f"ended wrongly {len(self.wrong)}, unreported {len(self.unreported)}, "
            f"wrong copies {len(self.copies_wrong)}, exit code {self.exit_code}"
        )


def fault_message(message_id: str, recipient: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "account_id": "acc",
        "from": "sender@example.com",
        "to": [recipient],
        "subject": f"faults {message_id}",
        "body": f"body of {message_id}",
    }


async def run_faults(
    *, messages: int, greylisted: int = 3, faults: Faults = FAULTS, timeout: float = 120.0
) -> FaultsResult:
    started = time.monotonic()
    sink = await SmtpSink().start()
    sink.faults = faults
    recipients = {f"f{i:05d}": f"f{i:05d}@example.com" for i in range(messages)}
    for i in range(greylisted):
        recipients[f"grey{i}"] = f"grey{i}@example.com"
        sink.rcpt_replies[f"grey{i}@example.com"] = GREYLISTED
    receiver = await ReportReceiver().start()
    result = FaultsResult(len(recipients))
    with tempfile.TemporaryDirectory(prefix="gmp-faults-") as tmp:
        config = Path(tmp) / "plugins.toml"
        config.write_text(
            f'[sql]\nurl = "{Path(tmp) / "gmp.db"}"\n'
            "[rest]\nport = 0\n"
            f'[token_auth]\napi_token = "{TOKEN}"\n'
            f"[service]\nsend_loop_interval = 0.05\nretry_delays = {RETRY_DELAYS}\n"
            f"[smtp]\nconnect_timeout = 2\ncommand_timeout = {COMMAND_TIMEOUT}\n"
            f'[proxy_sync]\nurl = "{receiver.url}"\n'
            "[reporting]\ninterval = 0\nheartbeat_seconds = 0\n"
        )
        proxy = await ServeProcess(config).start()
        try:
            async with proxy.client() as client:
                account = {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
                await post(client, "/account", {**account, "max_connections": 5})
                ids = list(recipients)
                for first in range(0, len(ids), 500):
                    batch = [fault_message(i, recipients[i]) for i in ids[first : first + 500]]
                    answer = await post(client, "/commands/add-messages", {"messages": batch})
                    assert answer["rejected"] == [], answer
            everything = len(recipients)
            await receiver.wait(
                lambda r: len({x["id"] for x in r.reported()}) >= everything, timeout
            )
            result.exit_code = await proxy.stop(signal.SIGTERM)
        finally:
            await proxy.stop(signal.SIGKILL)
            await receiver.stop()
            await sink.stop()
    _tally(result, recipients, sink, receiver, faults)
    result.seconds = time.monotonic() - started
    return result


def _tally(
    result: FaultsResult,
    recipients: dict[str, str],
    sink: SmtpSink,
    receiver: ReportReceiver,
    faults: Faults,
) -> None:
    result.injected = Counter(sink.injected)
    reports: dict[str, dict[str, Any]] = {}
    for report in receiver.reported():
        reports.setdefault(report["id"], report)
    copies = Counter(mail.gmp_id for mail in sink.mails)
    retries = len(RETRY_DELAYS)
    for message_id, recipient in recipients.items():
        report = reports.get(message_id)
        if report is None:
            result.unreported.append(message_id)
            continue
        if recipient in sink.rcpt_replies:
            expected = Expected("error", int(GREYLISTED[:3]), gave_up=True)
        else:
            expected = expected_outcome(faults, recipient, retries)
        came = (report["status"], report["error_code"])
        gave_up = (report["error"] or "").startswith(f"gave up after {retries + 1} attempts")
        if came != (expected.status, expected.code) or gave_up != expected.gave_up:
            result.wrong.append(f"{message_id}: expected {expected}, reported {report}")
        result.outcomes["gave up" if gave_up else report["status"]] += 1
        if expected.status == "sent" and expected.attempts > 1:
            result.outcomes["sent after retries"] += 1
        wanted_copies = 1 if expected.status == "sent" else 0
        if copies[message_id] != wanted_copies:
            result.copies_wrong.append(f"{message_id}: {copies[message_id]} mails")
