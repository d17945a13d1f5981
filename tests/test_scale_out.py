"""Several `gmp serve` processes on one PostgreSQL database: one queue, one set of limits.

Real processes, the real PostgreSQL of 127.0.0.1 (a schema of this test's own), one aiosmtpd
sink in this process counting what arrives.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gmp_core import testing
from gmp_core.testing import SmtpSink
from tests.processes import TOKEN, ServeProcess, post
from tests.support import message


def write_config(tmp_path: Path, database_url: str, lease_seconds: float = 5) -> Path:
    path = tmp_path / "plugins.toml"
    path.write_text(
        f'[sql]\nurl = "{database_url}"\npool_size = 4\n'
        "[rest]\nport = 0\n"
        f'[token_auth]\napi_token = "{TOKEN}"\n'
        f"[service]\nsend_loop_interval = 0.2\nlease_seconds = {lease_seconds}\n"
        "retry_delays = [0.2]\nshutdown_timeout = 10\nbatch_size_per_account = 200\n"
    )
    return path


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[ServeProcess]]:
    """Three processes on one database (``write_config`` may be called again first)."""
    config = write_config(tmp_path, postgres_url)
    started = [await ServeProcess(config).start() for _ in range(3)]
    yield started
    for process in started:
        await process.stop(signal.SIGKILL)


def report_to(config: Path, receiver: testing.ReportReceiver, **reporting: float) -> None:
    """Add proxy_sync to ``receiver`` and a ``[reporting]`` table (no interval, no
    heartbeat, plus ``reporting``) to the config file."""
    table = {"interval": 0, "heartbeat_seconds": 0, **reporting}
    with config.open("a") as file:
        file.write(f'[proxy_sync]\nurl = "{receiver.url}"\n[reporting]\n')
        file.writelines(f"{key} = {value}\n" for key, value in table.items())


async def add_account(proxy: ServeProcess, sink: SmtpSink, **fields: object) -> None:
    async with proxy.client() as client:
        account = {"id": "acc", "host": sink.host, "port": sink.port, "tls": "none"}
        await post(client, "/account", {**account, "max_connections": 4, **fields})


async def enqueue_across(cluster: list[ServeProcess], count: int, batch: int = 1000) -> None:
    """Queue ``count`` messages, each batch through the next process in turn."""
    for n, first in enumerate(range(0, count, batch)):
        messages = [message(f"m{i}") for i in range(first, min(count, first + batch))]
        async with cluster[n % len(cluster)].client() as client:
            answer = await post(client, "/commands/add-messages", {"messages": messages})
        assert answer["queued"] == len(messages)


async def queue_counts(proxy: ServeProcess) -> dict[str, int]:
    async with proxy.client() as client:
        counts: dict[str, int] = (await client.get("/status")).json()["queue"]
    return counts


async def wait_all_sent(proxy: ServeProcess, count: int, timeout: float = 120) -> None:
    async with asyncio.timeout(timeout), proxy.client() as client:
        while True:
            answer = await client.get("/status")  # fails while the database is down
            if answer.status_code == 200 and answer.json()["queue"]["sent"] >= count:
                return
            await asyncio.sleep(0.2)


def delivered_ids(sink: SmtpSink) -> tuple[set[str], int]:
    """The distinct ids the sink received, and how many arrived more than once."""
    by_id = sink.by_id()
    return set(by_id), sum(len(copies) - 1 for copies in by_id.values())


async def test_three_processes_send_ten_thousand_messages_once_each(
    cluster: list[ServeProcess], sink: SmtpSink
) -> None:
    await add_account(cluster[0], sink)
    await enqueue_across(cluster, 10_000)
    await wait_all_sent(cluster[1], 10_000)
    ids, duplicates = delivered_ids(sink)
    assert ids == {f"m{i}" for i in range(10_000)}
    assert duplicates == 0
    assert len(sink.mails) == 10_000


async def test_rate_limits_hold_across_processes(
    cluster: list[ServeProcess], sink: SmtpSink
) -> None:
    await add_account(cluster[0], sink, limit_per_minute=120)
    await enqueue_across(cluster, 300, batch=50)

    async def settled() -> bool:  # nothing due: what could go this minute went
        counts = await queue_counts(cluster[2])
        return counts["queued"] == 0 and counts["sending"] == 0 and counts["sent"] > 0

    async with asyncio.timeout(60):
        while not await settled():
            await asyncio.sleep(0.2)
    counts = await queue_counts(cluster[2])
    assert (counts["sent"], counts["scheduled"]) == (120, 180)
    assert len(sink.mails) == 120  # three processes together, never more than the limit


async def test_suspend_and_activate_reach_every_process(cluster: list[ServeProcess]) -> None:
    async def active_everywhere() -> list[bool]:
        states = []
        for proxy in cluster:
            async with proxy.client() as client:
                states.append((await client.get("/status")).json()["active"])
        return states

    async with cluster[0].client() as client:
        await post(client, "/commands/suspend", {})
    async with asyncio.timeout(30):
        while await active_everywhere() != [False] * 3:
            await asyncio.sleep(0.2)
    async with cluster[2].client() as client:
        await post(client, "/commands/activate", {})
    async with asyncio.timeout(30):
        while await active_everywhere() != [True] * 3:
            await asyncio.sleep(0.2)


async def test_a_killed_process_leaves_nothing_behind(
    cluster: list[ServeProcess], sink: SmtpSink
) -> None:
    sink.hold = asyncio.Event()  # every send waits in DATA: what is in flight is known
    await add_account(cluster[0], sink)
    await enqueue_across(cluster, 3000)
    await sink.wait_held(12)  # three processes, four connections each
    await cluster[1].stop(signal.SIGKILL)  # its claims come back when their leases end
    sink.hold.set()
    await wait_all_sent(cluster[0], 3000)
    ids, duplicates = delivered_ids(sink)
    assert ids == {f"m{i}" for i in range(3000)}
    # Only the four sends the dead process had in DATA can arrive twice (the server may
    # still take them after the client is gone).
    print(f"duplicates after SIGKILL: {duplicates}")
    assert duplicates <= 4


async def test_a_postgresql_restart_loses_nothing(
    tmp_path: Path, postgres_url: str, sink: SmtpSink
) -> None:
    cluster_name = restartable_cluster()
    config = write_config(tmp_path, postgres_url, lease_seconds=30)
    proxies = [await ServeProcess(config).start() for _ in range(2)]
    try:
        await add_account(proxies[0], sink)
        await enqueue_across(proxies, 2000)
        await sink.wait_for(300, timeout=60)
        restart = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster_name, "restart"]
        await asyncio.to_thread(subprocess.run, [*restart, "-m", "fast"], check=True)
        await wait_all_sent(proxies[1], 2000, timeout=180)
        ids, duplicates = delivered_ids(sink)
        assert ids == {f"m{i}" for i in range(2000)}
        print(f"duplicates after the restart: {duplicates}")
        assert duplicates <= 8  # sends in flight while outcomes could not be written
        await proxies[0].wait_for_log(b"PostgreSQL is reachable again")
        assert any(b"PostgreSQL is unreachable" in line for line in proxies[0].log)
        async with proxies[0].client() as client:
            assert (await client.get("/health")).status_code == 200
    finally:
        for proxy in proxies:
            await proxy.stop(signal.SIGKILL)


def restartable_cluster() -> list[str]:
    """The local cluster, as pg_ctlcluster names it (version, name)."""
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
    assert shutil.which("pg_ctlcluster") and versions, "this test restarts the local PostgreSQL"
    return [versions[-1], "main"]


async def test_a_message_queued_elsewhere_wakes_an_idle_process(
    tmp_path: Path, postgres_url: str, sink: SmtpSink
) -> None:
    """The process polls only once a minute: only NOTIFY can make it send within the test's
    time. The message comes from another process's store (here: this test's)."""
    from gmp_sql import SqlSettings, gmp_make_store

    from gmp_core import Config
    from gmp_core.intake import parse_message

    config = write_config(tmp_path, postgres_url)
    config.write_text(
        config.read_text().replace("send_loop_interval = 0.2", "send_loop_interval = 60")
    )
    proxy = await ServeProcess(config).start()
    try:
        await add_account(proxy, sink)
        await proxy.wait_for_log(b"listening for messages queued by other processes")
        settings = Config({"sql": {"url": postgres_url}}, environ={})
        settings.register("sql", SqlSettings)
        elsewhere = gmp_make_store(settings)
        assert elsewhere is not None
        await elsewhere.open()
        queued = parse_message(message("woken"), default_priority=2, default_account=None)
        await elsewhere.enqueue([queued], [], time.time(), 86400)
        await elsewhere.close()
        await sink.wait_for(1, timeout=10)  # the next poll is a minute away
        assert sink.mails[0].gmp_id == "woken"
    finally:
        await proxy.stop(signal.SIGKILL)


async def test_one_process_posts_each_report_once(
    tmp_path: Path, postgres_url: str, sink: SmtpSink
) -> None:
    """Three processes send; the one holding the reporter's lease posts every report, once."""
    from tests.receiver import ReportReceiver

    receiver = await ReportReceiver().start()
    config = write_config(tmp_path, postgres_url)
    report_to(config, receiver, poll_interval=0.2)
    cluster = [await ServeProcess(config).start() for _ in range(3)]
    try:
        await add_account(cluster[0], sink)
        await enqueue_across(cluster, 1500, batch=100)
        expected = {f"m{i}" for i in range(1500)}
        await receiver.wait(lambda r: {x["id"] for x in r.reported()} == expected, timeout=120)
        leading = []
        for proxy in cluster:
            async with proxy.client() as client:
                reporters = (await client.get("/status")).json()["reporters"]
            leading.append(reporters["proxy_sync"]["leading"])
        assert sorted(leading) == [False, False, True]
        assert len(receiver.reported()) == 1500  # none twice
    finally:
        for proxy in cluster:
            await proxy.stop(signal.SIGKILL)
        await receiver.stop()


async def test_readiness_follows_postgresql_down_and_up(tmp_path: Path, postgres_url: str) -> None:
    """/ready answers 503 while the database is down and 200 once it is back; /health, which
    says whether the process should be restarted, stays 200 throughout (restarting would not
    bring the database back)."""
    pg_ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", *restartable_cluster()]
    proxy = await ServeProcess(write_config(tmp_path, postgres_url)).start()

    async def answers() -> tuple[int, int, str]:
        async with proxy.client() as client:
            ready, health = await client.get("/ready"), await client.get("/health")
        return ready.status_code, health.status_code, ready.text

    async def until(check: Callable[[tuple[int, int, str]], bool]) -> tuple[int, int, str]:
        async with asyncio.timeout(60):
            while not check(state := await answers()):
                await asyncio.sleep(0.2)
        return state

    try:
        assert (await answers())[:2] == (200, 200)
        await asyncio.to_thread(subprocess.run, [*pg_ctl, "stop", "-m", "fast"], check=True)
        try:
            _, health, text = await until(lambda state: state[0] == 503)
            assert health == 200 and "store unreachable" in text
        finally:
            await asyncio.to_thread(subprocess.run, [*pg_ctl, "start"], check=True)
        assert (await until(lambda state: state[0] == 200))[1] == 200
    finally:
        await proxy.stop(signal.SIGKILL)


async def test_reports_recorded_elsewhere_wake_the_reporting_process(
    tmp_path: Path, postgres_url: str
) -> None:
    """The process looks for reports by itself only once a minute: only NOTIFY can make it
    post, within the test's time, a report another process recorded (here: this test's
    store, sending while the process is suspended)."""
    from gmp_sql import SqlSettings, gmp_make_store

    from gmp_core import Config, Event, Outcome, State
    from gmp_core.intake import parse_message
    from tests.receiver import ReportReceiver

    receiver = await ReportReceiver().start()
    config = write_config(tmp_path, postgres_url)
    report_to(config, receiver, poll_interval=60)
    proxy = await ServeProcess(config).start()
    settings = Config({"sql": {"url": postgres_url}}, environ={})
    settings.register("sql", SqlSettings)
    elsewhere = gmp_make_store(settings)
    assert elsewhere is not None
    try:
        async with proxy.client() as client:
            await post(client, "/commands/suspend", {})  # it claims nothing: the test sends
            await post(client, "/account", {"id": "acc", "host": "127.0.0.1", "tls": "none"})
        await proxy.wait_for_log(b"listening for messages queued by other processes")
        await elsewhere.open()
        await elsewhere.set_reporters({"proxy_sync": False})
        now = time.time()
        queued = parse_message(message("far"), default_priority=2, default_account=None)
        await elsewhere.enqueue([queued], [], now, 86400)
        (claim,) = await elsewhere.claim(
            "elsewhere", now, limit=1, lease_seconds=60, default_batch_size=10
        )
        outcome = Outcome("far", State.SENT, Event("sent", "far", "acc", now, code=250))
        await elsewhere.record("elsewhere", [outcome], now)
        await receiver.wait(lambda r: [x["id"] for x in r.reported()] == ["far"], timeout=20)
        assert claim.message.id == "far"
    finally:
        await elsewhere.close()
        await proxy.stop(signal.SIGKILL)
        await receiver.stop()


async def test_kills_across_two_processes_lose_no_message_and_no_report(
    tmp_path: Path, postgres_url: str, sink: SmtpSink
) -> None:
    """Two processes on one database, killed in turn (SIGKILL) and restarted while they send
    and report: every message arrives and ends ``sent``, and each has its report. A dead
    process's claims and report lease come back after their leases (2 s here)."""
    from tests.receiver import ReportReceiver

    receiver = await ReportReceiver().start()
    config = write_config(tmp_path, postgres_url, lease_seconds=2)
    report_to(config, receiver, poll_interval=0.2, lease_seconds=2)
    total, kills = 2000, 6
    pair = [await ServeProcess(config).start() for _ in range(2)]
    try:
        await add_account(pair[0], sink)
        await enqueue_across(pair, total, batch=100)
        for kill in range(kills):
            await sink.wait_for((kill + 1) * total // (kills + 2), timeout=60)
            victim = kill % 2
            await pair[victim].stop(signal.SIGKILL)
            pair[victim] = await ServeProcess(config).start()
        await wait_all_sent(pair[0], total, timeout=120)
        expected = {f"m{i}" for i in range(total)}
        await receiver.wait(lambda r: {x["id"] for x in r.reported("sent")} == expected, 120)
        ids, duplicates = delivered_ids(sink)
        assert ids == expected
        print(f"duplicates after {kills} kills: {duplicates}")
        # What goes again: a dead process's sends in flight (4 connections) and those done
        # but not yet recorded (the recorder writes every 10 ms: some 20 at these rates).
        # About 25 a kill; far more would mean claims are lost or sent twice while alive.
        assert duplicates <= kills * 64
    finally:
        for proxy in pair:
            await proxy.stop(signal.SIGKILL)
        await receiver.stop()
