"""Crash safety, measured: messages through a real ``gmp serve``, SIGKILLed again and again.

The parts are all real: ``gmp serve`` as a subprocess (SQLite, or PostgreSQL), an SMTP sink
recording every mail (:class:`gmp_core.testing.SmtpSink`) and a ``proxy_sync`` endpoint
recording every report (:class:`tests.receiver.ReportReceiver`), both on 127.0.0.1 in this
process, so they outlive every proxy.

A feeder posts the messages in batches throughout the run (a few batches ahead of the sink,
so intake is still going on when most kills land). At ``kills`` points picked by a seeded
RNG, each "once the sink has N mails", "once the receiver has reports for N messages",
"past N mails, as the next batch is posted" or "past N mails, during a graceful shutdown"
(SIGTERM, then SIGKILL once it is under way: an orchestrator's grace period running out),
the proxy is killed with SIGKILL and started again. A batch whose POST died with the proxy is
posted again to the new one, like a client would: an id queued before the kill is then
replaced (same queue position), or refused as "in flight" or "already sent"; all mean the
proxy has it. At the end the last proxy runs until every message is delivered and reported,
and stops with SIGTERM.

With ``faults`` the sink also misbehaves at random (:class:`gmp_core.testing.Faults`: 4xx
and 5xx replies, dropped connections, stalls), so messages may also end as ``error``; and
the report receiver fails one post in six (a 500, an HTML page, ``{"ok": false}``).

What is checked (and printed):

* **lost**: messages the proxy accepted that are missing from the store, or ``sent`` in the
  store but never reached the sink: must be 0;
* **unfinished**: messages whose final state is not ``sent`` (or, with faults, ``error``):
  must be 0;
* **unreported**: messages without a report of their final state: must be 0;
* **duplicates**: copies at the sink beyond the first, against their bound below.

The bound on duplicates. A mail is sent again only when the process that sent it died
before writing the outcome: the store still shows the message ``sending`` (claimed by the
dead process), so a later process claims and sends it again once the lease runs out. It is a
*duplicate* only if the dead process's send had reached the sink. So, after each kill, once
the sink has no connection left (every transaction the dead process had open is settled:
either the sink recorded the mail, or it never will), we read the store the dead process
left and count the messages it claimed (``sending``, claimed since it started) of which the
sink got a copy since it started: its sends in flight at the kill that completed at the
server but whose outcome was not written. That covers both transactions open at the kill
(DATA sent, reply not yet read) and sends acknowledged but not yet recorded (the recorder
batches its writes). Each such message is sent again, once, by a later process: at most one
duplicate each. The run's bound is the sum over the kills, and ``duplicates <= bound`` must
hold. (A message sent again and killed again before its outcome was written counts at both
kills: it does arrive three times.) Its claims not at the sink are counted too (``claims``):
they go out again without any duplicate.

Without faults the bound is exact: every message at risk is sent again and arrives twice.
With ``faults`` it can be above the duplicates: a repeat may fail for good (a 5xx). On
PostgreSQL the server may still be running the dead process's last statements when it is
killed (a COMMIT that had arrived is carried out): we read the store once the server has no
session of the dead process left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from gmp_sql import SqlSettings, SqlStore, gmp_make_store

from gmp_core import Config
from gmp_core.testing import Faults, SmtpSink, postgresql_schema
from tests.chaos.faults import FAULTS
from tests.processes import TOKEN, ServeProcess, post
from tests.receiver import ReportReceiver

AHEAD = 4  # batches the feeder keeps queued beyond what the sink received
LEASE_SECONDS = 2  # short: a killed process's claims come back quickly
RETRY_DELAYS = [0.05, 0.05, 0.05]


@dataclass
class Kill:
    point: str  # where it was aimed: "mails>=N", "reports>=N", "intake>=N", "shutdown>=N"
    claims: int  # messages the dead process held ("sending" in the store it left)
    at_risk: int  # of those, sent to the sink by the dead process: each arrives once more


@dataclass
class ChaosResult:
    messages: int
    seconds: float
    kills: list[Kill] = field(default_factory=list)
    copies: Counter[str] = field(default_factory=Counter)  # id -> mails at the sink
    reports: Counter[str] = field(default_factory=Counter)  # id -> final reports received
    lost: list[str] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # not in a final state allowed
    intake_retries: int = 0  # batches posted again because the proxy died under them
    exit_code: int | None = None  # of the last proxy, stopped with SIGTERM
    states: Counter[str] = field(default_factory=Counter)  # final states in the store

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.copies.values() if n > 1)

    @property
    def bound(self) -> int:
        return sum(kill.at_risk for kill in self.kills)

    @property
    def report_repeats(self) -> int:
        return sum(n - 1 for n in self.reports.values() if n > 1)

    def check(self) -> None:
        """Raise AssertionError naming what went wrong."""
        assert not self.lost, f"{len(self.lost)} messages lost: {self.lost[:10]}"
        assert not self.unreported, f"{len(self.unreported)} unreported: {self.unreported[:10]}"
        assert not self.unfinished, f"{len(self.unfinished)} unfinished: {self.unfinished[:10]}"
        assert self.duplicates <= self.bound, f"{self.duplicates} duplicates > bound {self.bound}"
        assert self.exit_code == 0, f"the last proxy exited with {self.exit_code}"

    def summary(self) -> str:
        lines = [
            f"messages {self.messages:,}, kills {len(self.kills)}, {self.seconds:.1f} s",
            f"lost {len(self.lost)}, unreported {len(self.unreported)}, "
            f"unfinished {len(self.unfinished)}, final states {dict(self.states)}",
            f"duplicates {self.duplicates} (bound: {self.bound} sends in flight at the kills; "
            f"{sum(k.claims for k in self.kills)} claims held by the killed processes)",
            f"reports repeated {self.report_repeats}, intake batches posted again "
            f"{self.intake_retries}, last exit code {self.exit_code}",
            "kill  point            claims  at risk",
        ]
        lines += [
            f"{n:4}  {k.point:<16} {k.claims:6}  {k.at_risk:7}" for n, k in enumerate(self.kills, 1)
        ]
        return "\n".join(lines)


def chaos_message(message_id: str) -> dict[str, object]:
    return {
        "id": message_id,
        "account_id": "acc",
        "from": "Sender <sender@example.com>",
        "to": [f"{message_id}@example.com"],
        "subject": f"chaos {message_id}",
        "body": f"body of {message_id}",
    }


class Chaos:
    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        messages: int,
        kills: int,
        seed: int,
        batch: int,
        faults: Faults | None = None,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.ids = [f"c{i:05d}" for i in range(messages)]
        self.kills = kills
        self.rng = random.Random(seed)
        self.batch = batch
        self.sink = SmtpSink()
        self.sink.faults = faults
        self.receiver = ReportReceiver()
        if faults is not None:  # the client side misbehaves too
            answers = random.Random(seed + 1)
            self.receiver.choose = lambda: answers.choices(
                ["ok", "error", "html", "not_ok"], weights=[15, 1, 1, 1]
            )[0]
        self.proxy: ServeProcess | None = None
        self.generation = 0  # bumped by every start: a failed POST waits for the next one
        self.started_at = 0.0  # when the current proxy was started (its claims are newer)
        self.copies_at_start: Counter[str] = Counter()  # at the sink when it started
        self._restarted = asyncio.Condition()
        self._posting = asyncio.Event()  # the feeder is posting a batch right now
        self._feeder: asyncio.Task[None] | None = None
        self.result = ChaosResult(messages, 0.0)

    # ------------------------------------------------------------------ the run

    async def run(self, timeout: float) -> ChaosResult:
        started = time.monotonic()
        await self.sink.start()
        await self.receiver.start()
        self.config = self._write_config()
        try:
            await self._start_proxy(first=True)
            self._feeder = asyncio.create_task(self._feed())
            for point in self._kill_points():
                await self._reach(point, timeout)
                await self._kill(point)
            await self._feeder
            everything = len(self.ids)
            await self.receiver.wait(lambda r: len(self._final_reports()) >= everything, timeout)
            assert self.proxy is not None
            self.result.exit_code = await self.proxy.stop(signal.SIGTERM)
            await self._tally()
        finally:
            if self.proxy is not None:
                await self.proxy.stop(signal.SIGKILL)
            await self.receiver.stop()
            await self.sink.stop()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _write_config(self) -> Path:
        path = self.workdir / "plugins.toml"
        path.write_text(
            f'[sql]\nurl = "{self.database_url}"\n'
            "[rest]\nport = 0\n"
            f'[token_auth]\napi_token = "{TOKEN}"\n'
            f"[service]\nsend_loop_interval = 0.05\nlease_seconds = {LEASE_SECONDS}\n"
            f"retry_delays = {RETRY_DELAYS}\nshutdown_timeout = 10\n"
            # A stall must time out before the lease runs out. (Without faults the sink
            # never stalls: a timeout would only come from an overloaded machine.)
            f"[smtp]\ncommand_timeout = {1.0 if self.sink.faults else 60.0}\n"
            f'[proxy_sync]\nurl = "{self.receiver.url}"\n'
            "[reporting]\ninterval = 0\nretry_initial = 0.05\nretry_max = 0.2\n"
            # The killed process's report lease holds reports up until it runs out.
            f"heartbeat_seconds = 0\nlease_seconds = {LEASE_SECONDS}\n"
        )
        return path

    def _kill_points(self) -> list[tuple[str, int]]:
        """Sorted progress marks in (0, messages), each with the kind of kill aimed there."""
        count = len(self.ids)
        marks = sorted(self.rng.randrange(1, count) for _ in range(self.kills))
        kinds = ["mails", "reports", "intake", "shutdown"]
        return [(self.rng.choice(kinds), mark) for mark in marks]

    async def _reach(self, point: tuple[str, int], timeout: float) -> None:
        kind, mark = point
        if kind == "reports":
            await self.receiver.wait(lambda r: len(self._final_reports()) >= mark, timeout)
            return
        await self.sink.wait_for(mark, timeout)
        if kind == "intake":  # then as the next batch goes out (unless all went already)
            assert self._feeder is not None
            self._posting.clear()
            posting = asyncio.create_task(self._posting.wait())
            await asyncio.wait([posting, self._feeder], return_when=asyncio.FIRST_COMPLETED)
            posting.cancel()

    async def _start_proxy(self, *, first: bool = False) -> None:
        self.started_at = time.time()
        self.copies_at_start = Counter(mail.gmp_id for mail in self.sink.mails)
        proxy = await ServeProcess(self.config).start()
        if first:  # the account is in the store from then on
            async with proxy.client() as client:
                account = {"id": "acc", "host": self.sink.host, "port": self.sink.port}
                await post(client, "/account", {**account, "tls": "none", "max_connections": 5})
        async with self._restarted:
            self.proxy = proxy
            self.generation += 1
            self._restarted.notify_all()

    async def _kill(self, point: tuple[str, int]) -> None:
        assert self.proxy is not None and self.proxy.proc is not None
        if point[0] == "shutdown":
            self.proxy.proc.send_signal(signal.SIGTERM)
            await self.proxy.wait_for_log(b"stopping: finishing sends in flight")
        await self.proxy.stop(signal.SIGKILL)  # (if it has not exited already)
        await self.sink.wait_disconnected()  # what the dead process had open is settled
        if self.database_url.startswith("postgresql://"):
            await postgresql_sessions_gone(self.database_url)
        sending = await self._claimed_in_store(since=self.started_at)
        copies = Counter(mail.gmp_id for mail in self.sink.mails)
        at_risk = sum(1 for i in sending if copies[i] > self.copies_at_start[i])
        self.result.kills.append(Kill(f"{point[0]}>={point[1]}", len(sending), at_risk))
        await self._start_proxy()

    async def _claimed_in_store(self, since: float) -> list[str]:
        """Ids the dead process held, read from the store it left (nobody writes now): still
        ``sending``, and claimed since it started. (Claims of an earlier process not taken
        over yet are older: they were at risk at an earlier kill, and counted there.)"""
        async with open_store(self.database_url) as store:
            ids: list[str] = []
            cursor = None
            while True:
                page, cursor = await store.list_messages(
                    status="sending", account_id=None, limit=1000, cursor=cursor
                )
                ids += [record.id for record in page if record.updated_at >= since]
                if cursor is None:
                    return ids

    # ------------------------------------------------------------------ intake

    async def _feed(self) -> None:
        """Post the messages in batches, staying ``AHEAD`` batches ahead of the sink."""
        for first in range(0, len(self.ids), self.batch):
            await self.sink.wait_for(max(0, first - AHEAD * self.batch), timeout=300)
            batch = self.ids[first : first + self.batch]
            await self._post_until_taken(batch)

    async def _post_until_taken(self, batch: list[str]) -> None:
        body = {"messages": [chaos_message(message_id) for message_id in batch]}
        while True:
            async with self._restarted:
                proxy, generation = self.proxy, self.generation
            assert proxy is not None
            self._posting.set()
            try:
                async with proxy.client() as client:
                    answer = await post(client, "/commands/add-messages", body)
            except httpx.TransportError:  # the proxy died under us: post again to the next
                self.result.intake_retries += 1
                async with self._restarted:
                    await self._restarted.wait_for(lambda g=generation: self.generation > g)
                continue
            refused = {r["id"]: r["reason"] for r in answer["rejected"]}
            # A repeat after a crash: the proxy already has these (sending, or sent).
            assert set(refused.values()) <= {"in flight", "already sent"}, refused
            return

    # ------------------------------------------------------------------ the tally

    def _final_reports(self) -> set[str]:
        return {r["id"] for r in self._accepted_finals()}

    def _accepted_finals(self) -> list[dict[str, Any]]:
        """Final reports in the posts the receiver accepted (answered ``{"ok": true}``)."""
        return [
            report
            for post in self.receiver.posts
            if post.mode == "ok"
            for report in post.reports
            if report["status"] in ("sent", "error")
        ]

    async def _tally(self) -> None:
        result = self.result
        result.copies = Counter(mail.gmp_id for mail in self.sink.mails)
        finals = self._accepted_finals()
        result.reports = Counter(r["id"] for r in finals)
        async with open_store(self.database_url) as store:
            records, _ = await store.list_messages(
                status=None, account_id=None, limit=len(self.ids) + 1, cursor=None
            )
        state = {record.id: record.status for record in records}
        result.states = Counter(state.values())
        allowed = {"sent", "error"} if self.sink.faults else {"sent"}
        result.unfinished = [i for i in self.ids if i in state and state[i] not in allowed]
        result.lost = [
            i for i in self.ids if i not in state or (state[i] == "sent" and not result.copies[i])
        ]
        reported = {(r["id"], r["status"]) for r in finals}
        result.unreported = [i for i in self.ids if (i, state.get(i)) not in reported]


@contextlib.asynccontextmanager
async def open_store(database_url: str) -> AsyncIterator[SqlStore]:
    """The store a proxy with this database URL uses, opened here (to read what it left)."""
    config = Config({"sql": {"url": database_url}}, environ={})
    config.register("sql", SqlSettings)
    store = gmp_make_store(config)
    assert store is not None
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def run_chaos(
    *,
    messages: int,
    kills: int,
    seed: int = 9,
    batch: int | None = None,
    database_url: str | None = None,
    faults: Faults | None = None,
    timeout: float = 120.0,
) -> ChaosResult:
    """One run; SQLite in a temporary directory unless ``database_url`` is given."""
    with tempfile.TemporaryDirectory(prefix="gmp-chaos-") as tmp:
        url = database_url or str(Path(tmp) / "gmp.db")
        batch = batch or max(10, messages // 30)  # intake goes on for most of the run
        chaos = Chaos(
            Path(tmp), url, messages=messages, kills=kills, seed=seed, batch=batch, faults=faults
        )
        return await chaos.run(timeout)


async def postgresql_sessions_gone(database_url: str, timeout: float = 30.0) -> None:
    """Until the database has no session but ours: the killed process's last statements are
    carried out or rolled back. (The server announces nothing: we look again and again.)"""
    import asyncpg

    conn = await asyncpg.connect(database_url.split("?", 1)[0])
    try:
        async with asyncio.timeout(timeout):
            while await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SIGKILL a real gmp serve again and again.")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--postgresql",
        metavar="ADMIN_URL",
        nargs="?",
        const="postgresql://postgres@127.0.0.1:5432/postgres",
        help="run on a fresh schema of PostgreSQL (default: SQLite)",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="the sink also misbehaves: 5%% 4xx, 1%% 5xx, 1%% drops, 1%% stalls",
    )
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"messages": args.messages, "kills": args.kills, "seed": args.seed}
    if args.faults:
        options["faults"] = dataclasses.replace(FAULTS, seed=args.seed)
    timeout = max(120.0, args.messages / 10)
    if args.postgresql:
        async with postgresql_schema(args.postgresql, "gmp_chaos") as url:
            result = await run_chaos(**options, database_url=url, timeout=timeout)
    else:
        result = await run_chaos(**options, timeout=timeout)
    print(result.summary())
    result.check()
    print("OK: nothing lost, nothing unfinished or unreported, duplicates within the bound")
