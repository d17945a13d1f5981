"""The store's contract (gmp_core/store.py), and that of the capabilities the bundled plugins
need (gmp_core/rate_windows.py, gmp_core/volume_records.py), checked directly on the bundled SQL
store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gmp_sql import SqlSettings, gmp_make_store

from gmp_core import (
    Account,
    Config,
    Event,
    Message,
    Outcome,
    RateWindowStore,
    State,
    Store,
    VolumeRecord,
    VolumeStore,
)
from gmp_core.intake import parse_message
from tests.support import message

WINDOW = 30 * 86400


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the bundled store supports: the contract is the same on all."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "store.db")


def make_store(url: str) -> Store:
    config = Config({"sql": {"url": url}}, environ={})
    config.register("sql", SqlSettings)
    made = gmp_make_store(config)
    assert made is not None
    return made


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    made = make_store(store_url)
    await made.open()
    await made.put_account(Account(id="acc", host="h"), time.time())
    yield made
    await made.close()


def msg(id: str, **fields: object) -> Message:
    return parse_message(message(id, **fields), default_priority=2, default_account=None)


async def enqueue(store: Store, *messages: Message, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    events = [Event("queued", m.id, m.account_id, now) for m in messages]
    return (await store.enqueue(messages, events, now, WINDOW)).queued


async def claim(
    store: Store,
    worker: str = "w1",
    *,
    limit: int = 100,
    lease: float = 60,
    now: float | None = None,
    batch: int = 50,
    max_priority: int = 3,
) -> list[str]:
    claims = await store.claim(
        worker,
        time.time() if now is None else now,
        limit=limit,
        lease_seconds=lease,
        default_batch_size=batch,
        max_priority=max_priority,
    )
    return [c.message.id for c in claims]


def sent(id: str, now: float) -> Outcome:
    return Outcome(id, State.SENT, Event("sent", id, "acc", now))


async def test_claims_follow_priority_then_arrival(store: Store) -> None:
    await enqueue(
        store,
        msg("low", priority=3),
        msg("mid1"),
        msg("now", priority=0),
        msg("mid2"),
        msg("high", priority=1),
    )
    assert await claim(store) == ["now", "high", "mid1", "mid2", "low"]
    assert await claim(store, "w2") == []  # each message goes to one claimant


async def test_claim_respects_limit_max_priority_and_batch_size(store: Store) -> None:
    await store.put_account(Account(id="big", host="h", batch_size=2), time.time())
    await enqueue(
        store,
        *(msg(f"big{i}", account_id="big") for i in range(5)),
        msg("small"),
        msg("urgent", priority=0),
    )
    assert await claim(store, max_priority=0) == ["urgent"]
    # At most two of "big" in one claim, so "small", queued after them, is not kept waiting.
    assert await claim(store) == ["big0", "big1", "small"]
    assert await claim(store, limit=1) == ["big2"]


async def test_scheduled_messages_wait_for_their_time(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("later", deferred_ts=now + 100), now=now)
    assert await claim(store, now=now) == []
    assert await store.next_due(now) == pytest.approx(now + 100)
    assert await claim(store, now=now + 101) == ["later"]


async def test_an_expired_lease_is_taken_again(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("m1"), now=now)
    assert await claim(store, "dead", lease=10, now=now) == ["m1"]
    assert await claim(store, "alive", now=now + 5) == []
    assert await store.next_due(now + 5) == pytest.approx(now + 10)
    assert await claim(store, "alive", now=now + 11) == ["m1"]
    # The dead claimant's late outcome no longer applies; the new holder's does.
    assert await store.record("dead", [sent("m1", now + 12)], now + 12) == []
    assert await store.record("alive", [sent("m1", now + 12)], now + 12) == ["m1"]
    record, history = await store.get_message("m1") or pytest.fail("missing")
    assert record.status == "sent"
    assert [e.kind for e in history] == ["queued", "sent"]


async def test_renewed_leases_are_kept(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("m1"), now=now)
    await claim(store, "w1", lease=10, now=now)
    await store.renew_leases("w1", ["m1"], now + 100)
    assert await claim(store, "w2", now=now + 50) == []


async def test_outcomes_and_events_in_one_write(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("ok"), msg("retry"), msg("bad"), msg("back"), now=now)
    await claim(store, now=now)
    applied = await store.record(
        "w1",
        [
            sent("ok", now),
            Outcome(
                "retry",
                State.SCHEDULED,
                Event("deferred", "retry", "acc", now),
                deferred_ts=now + 60,
                attempts=1,
                error="451 later",
            ),
            Outcome(
                "bad",
                State.ERROR,
                Event("error", "bad", "acc", now, code=550),
                attempts=1,
                error="550 no",
            ),
            Outcome("back", State.QUEUED, None),
        ],
        now,
    )
    assert sorted(applied) == ["back", "bad", "ok", "retry"]
    states = {
        r.id: (r.status, r.attempts, r.error)
        for r in (await store.list_messages(status=None, account_id=None, limit=10, cursor=None))[0]
    }
    assert states == {
        "ok": ("sent", 0, None),
        "retry": ("scheduled", 1, "451 later"),
        "bad": ("error", 1, "550 no"),
        "back": ("queued", 0, None),
    }
    counts = await store.queue_counts()
    assert counts == {"queued": 1, "scheduled": 1, "sending": 0, "sent": 1, "error": 1}


async def test_enqueue_replaces_unsent_and_refuses_in_flight_and_sent(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("a", subject="v1"), msg("b"), msg("c"), now=now)
    await claim(store, limit=2, now=now)  # a and b are in flight
    await store.record("w1", [sent("a", now)], now)
    result = await store.enqueue([msg("a"), msg("b"), msg("c", subject="v2")], [], now, WINDOW)
    assert result.queued == ["c"]
    assert result.refused == {"a": "already sent", "b": "in flight"}
    record, _ = await store.get_message("c") or pytest.fail("missing")
    assert record.payload is not None and record.payload["subject"] == "v2"


async def test_sent_ids_outlive_cleanup_for_the_idempotency_window(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("a"), now=now)
    await claim(store, now=now)
    await store.record("w1", [sent("a", now)], now)
    deleted = await store.delete_messages(["a", "ghost"])
    assert (deleted.removed, deleted.not_found) == (["a"], ["ghost"])
    result = await store.enqueue([msg("a")], [], now + 10, WINDOW)
    assert result.refused == {"a": "already sent"}
    # After the window the tombstone goes, and the id is new again.
    assert await store.cleanup(now, now + WINDOW + 1, WINDOW) == 0
    assert (await store.enqueue([msg("a")], [], now + WINDOW + 2, WINDOW)).queued == ["a"]


async def test_cleanup_removes_only_reported_final_messages(store: Store) -> None:
    await store.set_reporters({"client": False})
    now = time.time()
    await enqueue(store, msg("a"), msg("b"), msg("c"), now=now)
    await claim(store, now=now)
    await store.record("w1", [sent("a", now), sent("b", now)], now)
    # Nothing acknowledged yet: nothing may be purged, however old.
    assert await store.cleanup(now + 1000, now + 1000, WINDOW) == 0
    reports = await store.pending_reports("client", 10)
    await store.acknowledge_reports("client", [r.event_id for r in reports if r.id == "a"], now)
    assert await store.cleanup(now + 1000, now + 1000, WINDOW) == 1  # a only; c is unsent
    assert [r.id for r in await store.pending_reports("client", 10)] == ["b"]


def deferred(id: str, now: float) -> Outcome:
    event = Event("deferred", id, "acc", now, code=451, detail="later", data={"retry_at": now + 60})
    return Outcome(id, State.SCHEDULED, event, deferred_ts=now + 60, attempts=1)


async def test_each_reporter_acknowledges_on_its_own(store: Store) -> None:
    await store.set_reporters({"finals": False, "everything": True})
    now = time.time()
    await enqueue(store, msg("x"), msg("y"), now=now)
    await claim(store, now=now)
    await store.record("w1", [deferred("y", now)], now)
    await store.record("w1", [sent("x", now + 1)], now + 1)

    finals = await store.pending_reports("finals", 10)
    everything = await store.pending_reports("everything", 10)
    assert [(r.id, r.status) for r in finals] == [("x", "sent")]
    assert [(r.id, r.status) for r in everything] == [("y", "deferred"), ("x", "sent")]
    assert everything[0].as_item() == {
        "id": "y",
        "account_id": "acc",
        "priority": 2,
        "status": "deferred",
        "sent_ts": None,
        "error_ts": None,
        "error": "later",
        "error_code": 451,
        "deferred_ts": int(now + 60),  # unix seconds as integers, as the API answers
    }
    assert everything[1].as_item()["sent_ts"] == int(now + 1)

    await store.acknowledge_reports("finals", [finals[0].event_id], now + 2)
    record, _ = await store.get_message("x") or pytest.fail("missing")
    assert record.reported_ts is None  # "everything" has not acknowledged it yet
    assert len(await store.pending_reports("everything", 10)) == 2
    await store.acknowledge_reports("everything", [r.event_id for r in everything], now + 3)
    record, _ = await store.get_message("x") or pytest.fail("missing")
    assert record.reported_ts == now + 3
    assert await store.pending_reports("everything", 10) == []


async def test_a_batch_is_bounded_and_oldest_first(store: Store) -> None:
    await store.set_reporters({"client": False})
    now = time.time()
    ids = [f"m{i}" for i in range(7)]
    await enqueue(store, *map(msg, ids), now=now)
    await claim(store, now=now)
    for id_ in ids:  # one write each: event order is send order
        await store.record("w1", [sent(id_, now)], now)
    first = await store.pending_reports("client", 3)
    assert [r.id for r in first] == ids[:3]
    await store.acknowledge_reports("client", [r.event_id for r in first], now)
    assert [r.id for r in await store.pending_reports("client", 10)] == ids[3:]


async def test_keep_other_accounts_refuses_to_move_a_message(store: Store) -> None:
    await store.put_account(Account(id="b", host="h"), time.time())
    await enqueue(store, msg("m1"), msg("m2"))
    now = time.time()
    moved = [msg("m1", account_id="b"), msg("m2")]  # m2: same account, replaced as ever
    result = await store.enqueue(moved, [], now, WINDOW, keep_other_accounts=True)
    assert result.queued == ["m2"]
    assert result.refused == {"m1": "id in use by another account"}
    assert await store.accounts_of(["m1", "m2", "nope"]) == {"m1": "acc", "m2": "acc"}
    listing = {"status": None, "account_id": None, "limit": 10, "cursor": None}
    assert len((await store.list_messages(**listing, accounts=["acc", "b"]))[0]) == 2
    assert (await store.list_messages(**listing, accounts=["b"]))[0] == []
    result = await store.enqueue(moved[:1], [], now, WINDOW)  # without: it moves
    assert result.queued == ["m1"]
    assert await store.accounts_of(["m1"]) == {"m1": "b"}


async def test_a_lease_has_one_holder_at_a_time(store: Store) -> None:
    now = 1000.0
    assert await store.hold_lease("job", "p1", now, 30)
    assert not await store.hold_lease("job", "p2", now + 10, 30)  # p1's until 1030
    assert await store.hold_lease("job", "p1", now + 20, 30)  # renewed: until 1050
    assert not await store.hold_lease("job", "p2", now + 40, 30)
    assert await store.hold_lease("other job", "p2", now + 40, 30)  # leases are per name
    assert await store.hold_lease("job", "p2", now + 51, 30)  # p1's ran out: taken over
    assert not await store.hold_lease("job", "p1", now + 52, 30)


async def test_a_released_lease_is_free_at_once(store: Store) -> None:
    now = 1000.0
    assert await store.hold_lease("job", "p1", now, 30)
    await store.release_lease("job", "p2")  # not p2's: nothing changes
    assert not await store.hold_lease("job", "p2", now + 1, 30)
    await store.release_lease("job", "p1")
    assert await store.hold_lease("job", "p2", now + 2, 30)


async def test_concurrent_takers_get_one_lease(store_url: str) -> None:
    """Several store objects (as several processes would have) race for one lease."""
    stores = [make_store(store_url) for _ in range(4)]
    for each in stores:
        await each.open()
    try:
        now = time.time()
        taken = await asyncio.gather(
            *(each.hold_lease("job", f"p{i}", now, 30) for i, each in enumerate(stores))
        )
        assert sorted(taken) == [False, False, False, True]
    finally:
        for each in stores:
            await each.close()


async def test_without_reporters_final_messages_count_as_reported(store: Store) -> None:
    await store.set_reporters({"gone": False})
    now = time.time()
    await enqueue(store, msg("a"), now=now)
    await claim(store, now=now)
    await store.record("w1", [sent("a", now)], now)
    assert await store.set_reporters({}) == 1  # the report waiting for "gone" is dropped
    await enqueue(store, msg("b"), now=now)
    await claim(store, now=now)
    await store.record("w1", [sent("b", now)], now)
    record, _ = await store.get_message("b") or pytest.fail("missing")
    assert record.reported_ts == now
    # a waited for "gone" only: it counts as reported from the moment "gone" went.
    later = time.time() + 1
    assert await store.cleanup(later, later, WINDOW) == 2


async def test_rejections_are_kept_as_history(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("a"), now=now)
    await store.add_events([Event("rejected", "a", None, now, detail="already sent")])
    _, events = await store.get_message("a") or pytest.fail("missing")
    assert [(e.kind, e.detail) for e in events] == [("queued", ""), ("rejected", "already sent")]


async def test_sliding_window_reservations(store: Store) -> None:
    assert isinstance(store, RateWindowStore)
    now = 1_000_000.0
    granted, retry = await store.reserve_sends("acc", [(60, 3)], 2, now)
    assert (granted, retry) == (2, [])
    granted, retry = await store.reserve_sends("acc", [(60, 3)], 3, now + 10)
    # One slot left; the other two free up when the first two sends leave the window.
    assert granted == 1 and retry == [now + 60, now + 60]
    granted, _ = await store.reserve_sends("acc", [(60, 3)], 1, now + 61)
    assert granted == 1  # the first two left the window
    granted, retry = await store.reserve_sends("acc", [(60, 10), (3600, 4)], 1, now + 62)
    assert granted == 0 and retry == [now + 3600]


async def test_the_due_work_queries_read_an_index(store: Store) -> None:
    """Finding due work and waiting reports must not scan tables that keep days of rows."""
    db = store.db  # type: ignore[attr-defined]
    postgres = store.postgres  # type: ignore[attr-defined]

    def plan(sql: str) -> str:
        if postgres:  # the tables are tiny: ask whether an index can serve, not the cheapest
            for setting in ("enable_seqscan", "enable_bitmapscan"):
                db.execute_sql(f"SET {setting} = off")
            rows = db.execute_sql(f"EXPLAIN {sql}").fetchall()
            for setting in ("enable_seqscan", "enable_bitmapscan"):
                db.execute_sql(f"RESET {setting}")
        else:
            rows = db.execute_sql(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        return " | ".join(str(row[-1]) for row in rows)

    async def plan_of(sql: str) -> str:
        return await store.runner.run(lambda: plan(sql))  # type: ignore[attr-defined]

    queued = await plan_of(
        "SELECT pk FROM messages WHERE state = 'queued' AND priority <= 3 "
        "ORDER BY priority, pk LIMIT 10"
    )
    reports = await plan_of(
        "SELECT event_pk FROM report_queue WHERE reporter = 'r' ORDER BY event_pk LIMIT 500"
    )
    scheduled = await plan_of("SELECT MIN(deferred_ts) FROM messages WHERE state = 'scheduled'")
    if postgres:
        assert "ix_messages_queued" in queued and "Sort" not in queued
        assert "report_queue_pkey" in reports and "Sort" not in reports
        assert "ix_messages_scheduled" in scheduled
    else:
        assert "SEARCH messages USING INDEX ix_messages_queued" in queued
        assert "SEARCH report_queue USING" in reports and "TEMP B-TREE" not in reports
        assert "SEARCH messages USING INDEX ix_messages_scheduled" in scheduled


async def test_queue_depth_counts_unsent_messages_by_state_and_priority(store: Store) -> None:
    now = time.time()
    await enqueue(store, msg("later", deferred_ts=now + 100), now=now)
    assert (await store.queue_depth(now)).oldest_due is None  # scheduled, not due yet
    assert (await store.queue_depth(now + 101)).oldest_due == pytest.approx(now + 100)

    await enqueue(store, msg("urgent", priority=0), msg("low", priority=3), msg("done"), now=now)
    assert await claim(store, limit=1, max_priority=0, now=now) == ["urgent"]
    assert await claim(store, limit=1, max_priority=2, now=now) == ["done"]
    assert await store.record("w1", [sent("done", now)], now) == ["done"]

    depth = await store.queue_depth(now + 1)
    assert depth.counts == {("sending", 0): 1, ("queued", 3): 1, ("scheduled", 2): 1}
    assert depth.oldest_due == pytest.approx(now)  # "low" has been due since it arrived


async def test_opening_migrates_and_is_safe_from_several_processes_at_once(
    store: Store, store_url: str
) -> None:
    """Several stores (processes) opening one database together, one of them an old one."""
    from gmp_sql.schema import SCHEMA_VERSION

    def make_it_version_1() -> None:
        store._sql("DELETE FROM gmp_schema")  # type: ignore[attr-defined]
        store._sql("INSERT INTO gmp_schema (version) VALUES (1)")  # type: ignore[attr-defined]

    await store.runner.run(make_it_version_1)  # type: ignore[attr-defined]
    others = [make_store(store_url) for _ in range(3)]
    await asyncio.gather(*(other.open() for other in others))
    versions = await store.runner.run(  # type: ignore[attr-defined]
        lambda: store._sql("SELECT version FROM gmp_schema ORDER BY version")  # type: ignore[attr-defined]
    )
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    for other in others:
        await other.close()


async def test_volumes_are_keyed_by_name_and_account(store: Store) -> None:
    assert isinstance(store, VolumeStore)

    def volume(account_id: str | None, base: str, at: float) -> VolumeRecord:
        return VolumeRecord("docs", account_id, "local", {"base_path": base}, at, at)

    await store.put_volume(volume(None, "/shared", 1.0))
    await store.put_volume(volume("acc", "/own", 2.0))
    await store.put_volume(volume("acc", "/own-2", 3.0))  # replaces, keeps created_at
    listed = await store.list_volumes()
    assert [(v.account_id, v.config["base_path"], v.created_at, v.updated_at) for v in listed] == [
        (None, "/shared", 1.0, 1.0),
        ("acc", "/own-2", 2.0, 3.0),
    ]
    assert not await store.delete_volume("docs", "someone-else")
    assert await store.delete_volume("docs", "acc")
    assert [v.account_id for v in await store.list_volumes()] == [None]


async def test_opening_an_up_to_date_database_takes_no_table_locks(postgres_url: str) -> None:
    """A process starting beside busy ones must not wait for (or deadlock with) their
    writes: on a database already at the current version, opening runs no DDL, which would
    lock the tables (even CREATE INDEX IF NOT EXISTS does)."""
    import asyncpg

    first = make_store(postgres_url)
    await first.open()
    await first.close()
    url, _, search_path = postgres_url.partition("?search_path=")
    busy = await asyncpg.connect(url, server_settings={"search_path": search_path})
    try:
        transaction = busy.transaction()
        await transaction.start()
        await busy.execute("UPDATE messages SET priority = priority")  # holds ROW EXCLUSIVE
        second = make_store(postgres_url)
        async with asyncio.timeout(10):
            await second.open()
        await second.close()
        await transaction.rollback()
    finally:
        await busy.close()
