"""The sandbox's endpoints, served by the REST plugin through ``gmp_register_routes``.

They are registered ``scoped``: a caller limited to some accounts (``Principal.accounts``)
reaches them, and sees and deletes only its own accounts' captured mail, as with messages:
another account's capture reads as not found, naming another account is 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gmp_core import Capture, CaptureStore, Principal, RouteAnswer, RouteRequest, Service
from gmp_sandbox.reading import details, summary

MAX_ID = 2**63 - 1
NOT_FOUND = "captured message not found"
NOT_YOURS = "account_id: not allowed for this caller"

Q = TypeVar("Q", bound=BaseModel)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: str | None = None
    gmp_id: str | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: int | None = Field(None, ge=0, le=MAX_ID)


class DeleteQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: str | None = None


NAMES_ANOTHER_ACCOUNT = "account_id names an account this caller may not use."
BAD_QUERY = "A query parameter is not valid; the error names it."


def register_routes(register: Callable[..., None], service: Service) -> None:
    def captures() -> CaptureStore:
        store = service.store
        assert isinstance(store, CaptureStore)  # checked when the transport was registered
        return store

    async def list_captures(request: RouteRequest) -> RouteAnswer:
        """Captured mail, newest first.

        A page of what sandbox accounts captured (id, account, envelope, subject, date, size);
        query `limit`, `cursor` (the previous page's `next_cursor`), `account_id`, `gmp_id`.
        A caller limited to some accounts sees theirs only."""
        query = _query(ListQuery, request)
        if isinstance(query, tuple):
            return query
        if query.account_id is not None and not _may_use(request.principal, query.account_id):
            return _failure(403, NOT_YOURS)
        found, next_cursor = await captures().list_captures(
            limit=query.limit,
            cursor=query.cursor,
            account_id=query.account_id,
            gmp_id=query.gmp_id,
            accounts=_visible(request.principal),
        )
        page = [summary(capture) for capture in found]
        return {"ok": True, "messages": page, "next_cursor": next_cursor}, 200, {}

    async def get_capture(request: RouteRequest) -> RouteAnswer:
        """One captured message in detail.

        Its headers (decoded, in order), its text parts and its attachments (named and
        sized, not their bytes); 404 when unknown or another account's."""
        capture = await _own_capture(captures(), request)
        if capture is None:
            return _failure(404, NOT_FOUND)
        return {"ok": True, "message": await asyncio.to_thread(details, capture)}, 200, {}

    async def get_raw(request: RouteRequest) -> RouteAnswer:
        """The exact bytes of one captured message.

        As `message/rfc822`: what SMTP would have carried; 404 when unknown or another
        account's."""
        capture = await _own_capture(captures(), request)
        if capture is None or capture.data is None:
            return _failure(404, NOT_FOUND)
        headers = {
            "Content-Type": "message/rfc822",
            "Content-Disposition": f'inline; filename="sandbox-{capture.id}.eml"',
        }
        return capture.data, 200, headers

    async def delete_captures(request: RouteRequest) -> RouteAnswer:
        """Delete captured mail.

        Every capture the caller may see, or with `account_id` one account's; answers how
        many were removed."""
        query = _query(DeleteQuery, request)
        if isinstance(query, tuple):
            return query
        if query.account_id is not None and not _may_use(request.principal, query.account_id):
            return _failure(403, NOT_YOURS)
        removed = await captures().delete_captures(
            account_id=query.account_id, accounts=_visible(request.principal)
        )
        return {"ok": True, "removed": removed}, 200, {}

    listing = {403: NAMES_ANOTHER_ACCOUNT, 422: BAD_QUERY}
    one = {404: "No captured message with this id (or it is another account's)."}
    json: dict[str, Any] = {"scoped": True, "media_type": "application/json"}
    register("/sandbox/messages", list_captures, responses=listing, **json)
    register("/sandbox/messages", delete_captures, methods=("DELETE",), responses=listing, **json)
    register("/sandbox/messages/{capture_id}", get_capture, responses=one, **json)
    register(
        "/sandbox/messages/{capture_id}/raw",
        get_raw,
        scoped=True,
        responses=one,
        media_type="message/rfc822",
    )


async def _own_capture(store: CaptureStore, request: RouteRequest) -> Capture | None:
    """The capture the path names, if it exists and the caller may see it."""
    text = request.path_params["capture_id"]
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        return None
    capture = await store.get_capture(int(text))
    if capture is None or not _may_use(request.principal, capture.account_id):
        return None
    return capture


def _may_use(principal: Principal | None, account_id: str) -> bool:
    return principal is None or principal.may_use(account_id)


def _visible(principal: Principal | None) -> list[str] | None:
    """The accounts a caller limited to some may see; None: every account."""
    if principal is None or principal.accounts is None:
        return None
    return sorted(principal.accounts)


def _query(model: type[Q], request: RouteRequest) -> Q | RouteAnswer:
    """The query string validated, or a 422 naming the first bad parameter."""
    values = {key: value for key, value in request.query.items() if value != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        return _failure(422, f"invalid {first['loc'][0]}: {first['msg']}")


def _failure(status: int, error: str) -> RouteAnswer:
    return {"ok": False, "error": error}, status, {}
