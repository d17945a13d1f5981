"""Callers limited to some accounts (``[token_auth] account_tokens``, or any auth plugin's
``Principal.accounts``): they see and change their accounts' messages, accounts and volumes,
and nothing of anyone else's; what acts on the whole proxy is the admin token's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gmp_core import ConfigError, Service
from tests.rest.rest_support import TOKEN, ServiceFactory, account, base_url, message, rest_config

SHOP = "shop-token-0123456789"
BOTH = "both-token-0123456789"


@pytest.fixture
async def service(start_service: ServiceFactory) -> Service:
    tokens = [{"token": SHOP, "accounts": ["shop"]}, {"token": BOTH, "accounts": ["shop", "blog"]}]
    service = await start_service(token_auth={"api_token": TOKEN, "account_tokens": tokens})
    async with caller(service, TOKEN) as admin:
        assert (await admin.post("/commands/suspend")).is_success  # messages stay queued
        for id_ in ("shop", "blog", "other"):
            assert (await admin.post("/account", json=account(id_))).is_success
        queued = await admin.post(
            "/commands/add-messages",
            json={"messages": [mail("s1", "shop"), mail("b1", "blog"), mail("o1", "other")]},
        )
        assert queued.json()["queued"] == 3
    return service


def caller(service: Service, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url(service), headers={"X-API-Token": token})


@pytest.fixture
async def shop(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with caller(service, SHOP) as http:
        yield http


def mail(id: str, account_id: str, **fields: Any) -> dict[str, Any]:
    return message(id, account_id=account_id, **fields)


async def test_queues_only_for_its_accounts(shop: httpx.AsyncClient) -> None:
    answer = await shop.post(
        "/commands/add-messages", json={"messages": [mail("s2", "shop"), mail("o2", "other")]}
    )
    assert answer.json() == {
        "ok": True,
        "queued": 1,
        "rejected": [{"id": "o2", "reason": "account_id: not allowed for this caller"}],
        "warnings": [],
    }


async def test_never_replaces_another_accounts_message(
    service: Service, shop: httpx.AsyncClient
) -> None:
    """Reusing the id of another account's queued message would otherwise move it."""
    answer = await shop.post(
        "/commands/add-messages", json={"messages": [mail("o1", "shop", subject="mine now")]}
    )
    assert answer.json()["rejected"] == [{"id": "o1", "reason": "id in use by another account"}]
    record, history = await service.get_message("o1")
    assert record.account_id == "other"
    assert [e.kind for e in history] == ["queued"]  # nothing written into another's history
    async with caller(service, TOKEN) as admin:  # the admin token may move it, as before
        moved = await admin.post("/commands/add-messages", json={"messages": [mail("o1", "shop")]})
    assert moved.json()["queued"] == 1


async def test_sees_only_its_accounts_messages(service: Service, shop: httpx.AsyncClient) -> None:
    listed = await shop.get("/messages")
    assert [m["id"] for m in listed.json()["messages"]] == ["s1"]
    other = await shop.get("/messages", params={"account_id": "other"})
    assert other.status_code == 403
    assert other.json()["error"] == "account_id: not allowed for this caller"
    assert (await shop.get("/messages/s1")).status_code == 200
    assert (await shop.get("/messages/o1")).json() == {"ok": False, "error": "message not found"}
    async with caller(service, BOTH) as both:
        unnamed = await both.get("/messages")
        assert [m["id"] for m in unnamed.json()["messages"]] == ["s1", "b1"]
        blog = await both.get("/messages", params={"account_id": "blog"})
        assert [m["id"] for m in blog.json()["messages"]] == ["b1"]
        page = await both.get("/messages", params={"limit": 1})  # paging within its accounts
        second = await both.get(
            "/messages", params={"limit": 1, "cursor": page.json()["next_cursor"]}
        )
        assert [m["id"] for m in second.json()["messages"]] == ["b1"]


async def test_deletes_only_its_accounts_messages(
    service: Service, shop: httpx.AsyncClient
) -> None:
    answer = await shop.post("/commands/delete-messages", json={"ids": ["s1", "o1", "nope"]})
    assert answer.json()["removed"] == 1
    assert sorted(answer.json()["not_found"]) == ["nope", "o1"]
    record, _ = await service.get_message("o1")  # untouched
    assert record.status == "queued"


async def test_manages_only_its_accounts(service: Service, shop: httpx.AsyncClient) -> None:
    listed = (await shop.get("/accounts")).json()["accounts"]
    assert [a["id"] for a in listed] == ["shop"]
    assert (await shop.post("/account", json=account("shop", port=25))).is_success
    taken = await shop.post("/account", json=account("other", host="evil.example"))
    assert taken.status_code == 403 and taken.json()["error"] == "id: not allowed for this caller"
    assert (await shop.delete("/account/other", params={"force": "true"})).status_code == 404
    accounts = {a.id: a for a in await service.list_accounts()}
    assert accounts["other"].host == "127.0.0.1" and accounts["shop"].port == 25


async def test_manages_only_its_accounts_volumes(service: Service, shop: httpx.AsyncClient) -> None:
    async with caller(service, TOKEN) as admin:
        for owner in (None, "other"):
            volume = {"name": "files", "backend": "memory", "account_id": owner}
            assert (await admin.post("/volume", json=volume)).is_success
    own = {"name": "files", "backend": "memory", "account_id": "shop"}
    assert (await shop.post("/volume", json=own)).is_success
    shared = await shop.post("/volume", json={**own, "account_id": None})
    assert shared.status_code == 403  # a volume of every account is the admin's
    visible = (await shop.get("/volumes")).json()["volumes"]
    assert [v["account_id"] for v in visible] == [None, "shop"]
    assert (await shop.get("/volumes", params={"account_id": "other"})).status_code == 403
    assert (await shop.get("/volume/files", params={"account_id": "other"})).status_code == 403
    assert (await shop.delete("/volume/files")).status_code == 403
    assert (await shop.delete("/volume/files", params={"account_id": "other"})).status_code == 403
    assert (await shop.delete("/volume/files", params={"account_id": "shop"})).is_success


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/status"),
        ("POST", "/commands/run-now"),
        ("POST", "/commands/suspend"),
        ("POST", "/commands/activate"),
        ("POST", "/commands/cleanup-messages"),
    ],
)
async def test_cannot_act_on_the_whole_proxy(
    service: Service, shop: httpx.AsyncClient, method: str, path: str
) -> None:
    answer = await shop.request(method, path)
    assert answer.status_code == 403
    assert answer.json()["error"] == (
        "this caller may act only on its own accounts, not on the whole proxy"
    )
    assert service.active is False  # the admin suspended it; nobody resumed it


async def test_a_wrong_token_is_still_401(service: Service) -> None:
    async with caller(service, SHOP + "x") as wrong:
        assert (await wrong.get("/messages")).status_code == 401


async def test_account_tokens_alone_close_the_api(start_service: ServiceFactory) -> None:
    """No admin token, but account tokens: callers without a token are refused, so the API
    is not open (and may listen beyond loopback)."""
    tokens = [{"token": SHOP, "accounts": ["shop"]}]
    service = await start_service(token_auth={"api_token": "", "account_tokens": tokens})
    assert service.authenticate({}) is None
    async with httpx.AsyncClient(base_url=base_url(service)) as anonymous:
        assert (await anonymous.get("/messages")).status_code == 401
    async with caller(service, SHOP) as shop:
        assert (await shop.get("/messages")).status_code == 200


@pytest.mark.parametrize(
    ("tokens", "error"),
    [
        ([{"token": "short", "accounts": ["shop"]}], r"account_tokens\[0\]\.token: String"),
        ([{"token": SHOP, "accounts": []}], r"account_tokens\[0\]\.accounts: List should"),
        ([{"token": SHOP, "accounts": ["a"]}, {"token": SHOP, "accounts": ["b"]}], "used twice"),
    ],
)
def test_account_tokens_are_checked_at_start_up(
    tmp_path: Path, tokens: list[dict[str, Any]], error: str
) -> None:
    config = rest_config(tmp_path, token_auth={"account_tokens": tokens})
    with pytest.raises(ConfigError, match=error):
        Service(config)


@pytest.mark.parametrize("owner", [["shop"], {"id": "shop"}, 7, True], ids=repr)
async def test_a_volume_owner_of_the_wrong_type_is_422_before_any_authorisation(
    shop: httpx.AsyncClient, owner: Any
) -> None:
    # was: 500, TypeError (a list is unhashable) while checking the caller may use it
    volume = {"name": "v", "backend": "memory", "config": {}, "account_id": owner}
    response = await shop.post("/volume", json=volume)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid account_id: ")
