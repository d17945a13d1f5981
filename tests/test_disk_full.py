"""A store that cannot write for lack of space: intake answers 507 ``store cannot write: …``
(no path in it), ``/ready`` answers 503 until a write works again, and nothing is lost.

The main test fills a real filesystem: a 4 MiB tmpfs mounted for the test (root only; it is
skipped, saying why, where mounting is refused). The others make writes fail for real where
that is always possible: SQLite past ``PRAGMA max_page_count`` (SQLITE_FULL, the same error a
full disk gives), and PostgreSQL raising SQLSTATE 53100 ``disk_full`` from a trigger (a
full disk is hard to make on a shared server; the error reaches the store as it would)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import Config, Service, StoreCannotWrite
from gmp_core.testing import SmtpSink, fast_tables, merge
from tests.support import EventLog, ServiceFactory, account, message

FULL = "store cannot write: database or disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(descriptor, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(descriptor, b"\0")
    finally:
        os.close(descriptor)
    return filler


def batch(prefix: str, count: int) -> list[dict[str, Any]]:
    return [message(f"{prefix}{i}", body="x" * 5000) for i in range(count)]


@pytest.fixture
async def on_small_disk(
    small_disk: Path, events: EventLog, sink: SmtpSink
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    tables = {
        "plugins": {"disable": []},  # with the REST API
        "rest": {"port": 0},
        "sql": {"url": str(small_disk / "gmp.db")},
    }
    config = Config(merge(fast_tables(small_disk), tables), environ={})
    service = Service(config, plugins=[events])
    await service.start()
    await service.put_account(account(sink))
    async with httpx.AsyncClient(base_url=str(service.state["rest"].url)) as http:
        yield service, http
    await service.stop()


async def test_a_full_disk_answers_507_and_ready_503_until_space_returns(
    on_small_disk: tuple[Service, httpx.AsyncClient],
    small_disk: Path,
    sink: SmtpSink,
    events: EventLog,
) -> None:
    service, http = on_small_disk
    answer = await http.post("/commands/add-messages", json={"messages": batch("before", 5)})
    assert answer.json()["queued"] == 5
    await sink.wait_for(5)
    await events.wait("sent", count=5)
    # SQLite reuses the space its write-ahead log already has: give it back first, so that
    # the next write needs new space like any write on a disk that filled up long ago.
    await service.store.runner.run(  # type: ignore[attr-defined]
        lambda: service.store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    )
    filler = fill(small_disk)

    answer = await http.post("/commands/add-messages", json={"messages": batch("m", 200)})
    assert answer.status_code == 507
    assert answer.json() == {"ok": False, "error": FULL}
    assert str(small_disk) not in answer.text
    ready = await http.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"ok": False, "status": "error", "error": FULL}
    assert (await http.get("/ready")).status_code == 503  # still: the probe write fails too
    assert (await http.get("/health")).status_code == 200  # alive: do not restart it

    filler.unlink()  # space again
    assert (await http.get("/ready")).json() == {"ok": True, "status": "ok"}
    answer = await http.post("/commands/add-messages", json={"messages": batch("m", 200)})
    assert answer.json()["queued"] == 200
    await sink.wait_for(205)
    assert len(sink.by_id()) == 205  # every one once


async def test_sqlite_past_its_page_limit_cannot_write(
    make_service: ServiceFactory, sink: SmtpSink, events: EventLog
) -> None:
    service = await make_service()
    await service.put_account(account(sink))
    store: Any = service.store

    def cap(pages: str) -> None:
        store.db.execute_sql(f"PRAGMA max_page_count = {pages}")

    pages = (await store.runner.run(lambda: store.db.execute_sql("PRAGMA page_count").fetchone()))[
        0
    ]
    await store.runner.run(lambda: cap(str(pages)))
    with pytest.raises(StoreCannotWrite) as refused:
        await service.add_messages(batch("m", 200))
    assert str(refused.value) == FULL
    assert (await service.store.queue_counts()).get("queued", 0) == 0  # all or nothing
    await store.runner.run(lambda: cap("1073741823"))
    assert await service.readiness_problems(2.0) == []
    assert (await service.add_messages(batch("m", 200))).queued == 200
    await events.wait("sent", count=200)


DISK_FULL_TRIGGER = """
CREATE FUNCTION gmp_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/24576": No space left on device'
        USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER full_messages BEFORE INSERT ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION gmp_test_disk_full();
CREATE TRIGGER full_flags BEFORE INSERT OR UPDATE ON flags
    FOR EACH STATEMENT EXECUTE FUNCTION gmp_test_disk_full();
"""


async def test_postgresql_disk_full_is_mapped_the_same_way(
    postgres_url: str,  # before make_service: the schema is dropped after the service stops
    make_service: ServiceFactory,
    sink: SmtpSink,
    events: EventLog,
) -> None:
    import asyncpg

    service = await make_service(sql={"url": postgres_url})
    await service.put_account(account(sink))
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(DISK_FULL_TRIGGER)
        with pytest.raises(StoreCannotWrite) as refused:
            await service.add_messages(batch("m", 3))
        assert str(refused.value) == "store cannot write: disk full"  # not the file's name
        assert await service.readiness_problems(5.0) == ["store cannot write: disk full"]
        await admin.execute("DROP FUNCTION gmp_test_disk_full() CASCADE")
    finally:
        await admin.close()
    assert await service.readiness_problems(5.0) == []
    assert (await service.add_messages(batch("m", 3))).queued == 3
    await events.wait("sent", count=3)
