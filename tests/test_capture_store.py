"""The capture store (gmp_core.CaptureStore) of the bundled SQL store, on SQLite and
PostgreSQL: what the sandbox keeps, bounded, paged, scoped and purged."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from gmp_sql import SqlStore

from gmp_core import Capture, CaptureStore
from tests.test_store import make_store, store_url  # noqa: F401 (the fixture, both databases)


@pytest.fixture
async def captures(store_url: str) -> AsyncIterator[SqlStore]:  # noqa: F811
    store = make_store(store_url)
    assert isinstance(store, SqlStore)
    await store.open()
    yield store
    await store.close()


def capture(gmp_id: str, account_id: str = "acc", **fields: object) -> Capture:
    data = f"Subject: {gmp_id}\r\n\r\nbody of {gmp_id}\r\n".encode()
    values: dict[str, object] = {
        "id": 0,
        "account_id": account_id,
        "gmp_id": gmp_id,
        "mail_from": "sender@example.com",
        "rcpt_to": ["a@example.com", "b@example.com"],
        "subject": gmp_id,
        "date": "Thu, 03 Dec 2026 10:00:00 GMT",
        "size": len(data),
        "captured_at": time.time(),
        "data": data,
    }
    values.update(fields)
    return Capture(**values)  # type: ignore[arg-type]


async def listed(store: CaptureStore, **filters: object) -> list[str]:
    found, _ = await store.list_captures(limit=100, **filters)  # type: ignore[arg-type]
    return [c.gmp_id for c in found]


async def test_the_sql_store_keeps_captures(captures: SqlStore) -> None:
    assert isinstance(captures, CaptureStore)


async def test_captures_keep_their_exact_bytes_and_envelope(captures: SqlStore) -> None:
    data = b"Subject: x\r\n\r\n\x00\xff\xfe not UTF-8 \r\n.\r\n..\r\n"
    [capture_id] = await captures.add_captures([capture("m1", data=data, size=len(data))], 10)
    stored = await captures.get_capture(capture_id)
    assert stored is not None
    assert stored.data == data
    assert (stored.id, stored.account_id, stored.gmp_id, stored.size) == (
        capture_id,
        "acc",
        "m1",
        len(data),
    )
    assert (stored.mail_from, stored.rcpt_to) == (
        "sender@example.com",
        ["a@example.com", "b@example.com"],
    )
    assert await captures.get_capture(capture_id + 1) is None


async def test_listing_is_newest_first_paged_and_leaves_the_bytes_out(captures: SqlStore) -> None:
    ids = await captures.add_captures([capture(f"m{i}") for i in range(5)], 100)
    assert ids == sorted(ids) and len(set(ids)) == 5  # in order, one each
    first, cursor = await captures.list_captures(limit=2)
    assert [c.gmp_id for c in first] == ["m4", "m3"]
    assert all(c.data is None for c in first)
    second, cursor = await captures.list_captures(limit=2, cursor=cursor)
    third, cursor = await captures.list_captures(limit=2, cursor=cursor)
    assert [c.gmp_id for c in second + third] == ["m2", "m1", "m0"]
    assert cursor is None


async def test_listing_and_deleting_by_account(captures: SqlStore) -> None:
    await captures.add_captures(
        [
            capture("s1", "shop"),
            capture("b1", "blog"),
            capture("o1", "other"),
            capture("s2", "shop"),
        ],
        100,
    )
    assert await listed(captures, account_id="shop") == ["s2", "s1"]
    assert await listed(captures, accounts=["blog", "shop"]) == ["s2", "b1", "s1"]
    assert await listed(captures, accounts=[]) == []
    assert await listed(captures, gmp_id="b1") == ["b1"]
    assert await listed(captures, gmp_id="b1", accounts=["shop"]) == []

    assert await captures.delete_captures(accounts=["blog"], account_id="shop") == 0
    assert await captures.delete_captures(account_id="shop") == 2
    assert await captures.delete_captures(accounts=["other", "nobody"]) == 1
    assert await listed(captures) == ["b1"]
    assert await captures.delete_captures() == 1
    assert await listed(captures) == []


async def test_only_the_newest_are_kept(captures: SqlStore) -> None:
    await captures.add_captures([capture(f"a{i}") for i in range(3)], 3)
    assert await listed(captures) == ["a2", "a1", "a0"]
    await captures.add_captures([capture("b0")], 3)
    assert await listed(captures) == ["b0", "a2", "a1"]  # the oldest went
    # A batch larger than the bound keeps its newest, in one transaction.
    await captures.add_captures([capture(f"c{i}") for i in range(5)], 3)
    assert await listed(captures) == ["c4", "c3", "c2"]
    # Deleted ones leave room: the bound counts what is there, not ids.
    await captures.delete_captures()
    await captures.add_captures([capture("d0"), capture("d1")], 3)
    await captures.add_captures([capture("d2")], 3)
    assert await listed(captures) == ["d2", "d1", "d0"]


async def test_purge_removes_what_was_captured_before_a_time(captures: SqlStore) -> None:
    now = time.time()
    await captures.add_captures(
        [capture("old", captured_at=now - 100), capture("new", captured_at=now)], 10
    )
    assert await captures.purge_captures(now - 50) == 1
    assert await listed(captures) == ["new"]


async def test_a_database_of_the_previous_version_gets_the_table(
    captures: SqlStore,
    store_url: str,  # noqa: F811
) -> None:
    from gmp_sql.schema import SCHEMA_VERSION

    assert SCHEMA_VERSION == 4

    def make_it_version_3() -> None:
        captures._sql("DROP TABLE captures")
        captures._sql("DELETE FROM gmp_schema WHERE version = 4")

    await captures.runner.run(make_it_version_3)
    reopened = make_store(store_url)
    assert isinstance(reopened, SqlStore)
    await reopened.open()
    try:
        await reopened.add_captures([capture("m1")], 10)
        assert await listed(reopened) == ["m1"]
    finally:
        await reopened.close()
