"""The Quart application: a thin HTTP layer over the public methods of :class:`Service`.

``create_app(service)`` builds one app per service (no module state). Every answer is JSON
with ``ok``; failures add ``error``. Authentication runs once, in ``before_request``, for every
endpoint but the open ones (``/health``, ``/openapi.json``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError
from quart import Quart, current_app, g, request
from quart.typing import ResponseReturnValue
from quart_schema import (
    QuartSchema,
    RequestSchemaValidationError,
    document_querystring,
    document_request,
    document_response,
    hide,
    security_scheme,
)
from quart_schema.validation import QuerystringValidationError
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, RequestEntityTooLarge

from gmp_core import (
    AccountBusy,
    Attachment,
    Event,
    Forbidden,
    InvalidInput,
    Message,
    MessageRecord,
    NotFound,
    Principal,
    Service,
    StoreCannotWrite,
)
from gmp_core.models import format_address
from gmp_core.service import NOT_YOURS
from gmp_rest import schemas as s

log = logging.getLogger("gmp.rest")

M = TypeVar("M", bound=BaseModel)

API_KEY_HEADER = "X-API-Token"
OPEN_ENDPOINTS = frozenset({"health", "ready", "openapi"})
UNAUTHORIZED = "Invalid or missing API token"
# What a caller limited to some accounts may not do: act on every account at once (plugin
# routes included: /metrics tells of every account).
WHOLE_PROXY_ENDPOINTS = frozenset({"status", "run_now", "suspend", "activate", "cleanup_messages"})
WHOLE_PROXY_ONLY = "this caller may act only on its own accounts, not on the whole proxy"
HTTP_ERRORS = {404: "not found", 405: "method not allowed"}


def create_app(service: Service) -> Quart:
    """The REST API of ``service``, configured from its ``[rest]`` settings."""
    settings = service.config.section("rest")
    app = Quart("gmp_rest")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout
    app.extensions["gmp_service"] = service
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path=None,  # the UIs load JavaScript from public CDNs: not offline-safe
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "genro-mail-proxy", "version": _version()},
        security_schemes={"token": {"type": "apiKey", "in_": "header", "name": API_KEY_HEADER}},
        security=[{"token": []}],
        # Our views return plain dicts. With pydantic preferred, quart-schema builds a
        # pydantic TypeAdapter for every response (a tenth of a request's time); with msgspec
        # preferred it leaves dicts alone (or converts them in C when msgspec is installed).
        conversion_preference="msgspec",
    )
    app.config["GMP_MAX_HEADER_BYTES"] = settings.max_header_bytes
    app.before_request(limit_headers)
    app.before_request(authenticate)
    app.register_error_handler(RequestSchemaValidationError, schema_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Forbidden, forbidden)
    app.register_error_handler(StoreCannotWrite, store_cannot_write)
    app.register_error_handler(Exception, internal_error)
    for rule, view, methods in ROUTES:
        app.add_url_rule(rule, view.__name__, view, methods=methods)
    app.extensions["gmp_open_endpoints"] = set(OPEN_ENDPOINTS)
    add_plugin_routes(app, service)
    return app


PluginView = Callable[[], Awaitable[tuple[bytes | str, int, dict[str, str]]]]


def add_plugin_routes(app: Quart, service: Service) -> None:
    """GET endpoints that plugins add through ``gmp_register_routes`` (``/metrics``)."""
    open_endpoints: set[str] = app.extensions["gmp_open_endpoints"]

    def register(path: str, view: PluginView, public: bool = False) -> None:
        async def serve() -> ResponseReturnValue:
            body, status, headers = await view()
            return body, status, headers

        endpoint = f"plugin:{path}"
        app.add_url_rule(path, endpoint, hide(serve), methods=["GET"])
        if public:
            open_endpoints.add(endpoint)

    service.pm.hook.gmp_register_routes(register=register, service=service)


# ---------------------------------------------------------------- plumbing


def _service() -> Service:
    service: Service = current_app.extensions["gmp_service"]
    return service


def failure(status: int, error: str) -> tuple[dict[str, Any], int]:
    return {"ok": False, "error": error}, status


async def limit_headers() -> ResponseReturnValue | None:
    """``before_request``: headers over ``[rest] max_header_bytes`` get 431, on every
    endpoint. (hypercorn's own limit only applies to headers that arrive in pieces.)"""
    size = sum(len(name) + len(value) + 4 for name, value in request.headers.items())
    if size > current_app.config["GMP_MAX_HEADER_BYTES"]:
        return failure(431, "request headers too large")
    return None


async def authenticate() -> ResponseReturnValue | None:
    """``before_request``: refuse unauthenticated calls and oversized bodies early."""
    if request.endpoint in current_app.extensions["gmp_open_endpoints"]:
        return None
    # werkzeug's Headers: a case-insensitive mapping, as auth plugins expect
    principal = _service().authenticate(cast(Mapping[str, str], request.headers))
    if principal is None:
        return failure(401, UNAUTHORIZED)
    if principal.scoped and _acts_on_the_whole_proxy(request.endpoint):
        return failure(403, WHOLE_PROXY_ONLY)
    g.principal = principal
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()  # answered before a byte of the body is read
    return None


def _acts_on_the_whole_proxy(endpoint: str | None) -> bool:
    return endpoint in WHOLE_PROXY_ENDPOINTS or (endpoint or "").startswith("plugin:")


def _principal() -> Principal:
    principal: Principal = g.principal
    return principal


def _check_account(account_id: str | None) -> None:
    """A caller limited to some accounts names only those (None: a thing of every account)."""
    if not _principal().may_use(account_id):
        raise Forbidden(f"account_id: {NOT_YOURS}")


async def read_json() -> Any:
    """The JSON body, whatever the Content-Type says; an empty body counts as ``{}``.

    Neither the body nor its parsed form is cached on the request: Quart's request objects
    live until the cyclic garbage collector reaches them, and a batch of 1,000 messages parses
    into some 6 MB of objects (with caching, peak RSS reached 130 MB over 100,000 messages).
    """
    raw = await request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_not_json)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid JSON body: not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from None


def _not_json(constant: str) -> None:
    """Python's json module accepts NaN and Infinity, which JSON does not have: a deferral
    "until Infinity" must be a 400, not an overflow later on."""
    raise ValueError(f"{constant} is not a JSON value")


async def read_body(model: type[M]) -> M:
    """The JSON body validated against ``model``."""
    data = await read_json()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestSchemaValidationError(exc) from None


def parse_query(model: type[M]) -> M:
    """The query string validated against ``model``; empty values count as absent."""
    args = {key: value for key, value in request.args.items() if value != ""}
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise QuerystringValidationError(exc) from None


def describe_validation(error: Exception, where: str) -> str:
    """'missing ids', 'invalid status: Input should be ...': the first problem, field named."""
    if not isinstance(error, ValidationError):
        return f"invalid {where}"
    first = error.errors(include_url=False, include_input=False)[0]
    field = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    ).lstrip(".")
    if not field:
        return f"invalid {where}: expected a JSON object"
    if first["type"] == "missing":
        return f"missing {field}"
    return f"invalid {field}: {first['msg']}"


async def schema_error(exc: RequestSchemaValidationError) -> ResponseReturnValue:
    where = "query string" if isinstance(exc, QuerystringValidationError) else "body"
    return failure(422, describe_validation(exc.validation_error, where))


async def http_error(exc: HTTPException) -> ResponseReturnValue:
    code = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        message = f"request body too large (limit {request.max_content_length} bytes)"
    else:
        message = HTTP_ERRORS.get(code) or exc.description or exc.name
    body, status = failure(code, message)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        return body, status, {"Allow": ", ".join(exc.valid_methods)}
    return body, status


async def forbidden(exc: Forbidden) -> ResponseReturnValue:
    return failure(403, str(exc))


async def store_cannot_write(exc: StoreCannotWrite) -> ResponseReturnValue:
    """507 Insufficient Storage: nothing of the request was kept; try again later."""
    log.error("%s %s: %s", request.method, request.path, exc)
    return failure(507, str(exc))


async def internal_error(exc: Exception) -> ResponseReturnValue:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return failure(500, "internal error")


# ---------------------------------------------------------------- formatting


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_out(record: MessageRecord) -> dict[str, Any]:
    """A record as ``GET /messages`` lists it: original field names, no payload."""
    return {
        "id": record.id,
        "account_id": record.account_id,
        "priority": record.priority,
        "status": record.status,
        "deferred_ts": _ts(record.deferred_ts),
        "sent_ts": _ts(record.sent_ts),
        "error_ts": _ts(record.error_ts),
        "error": record.error,
        "reported_ts": _ts(record.reported_ts),
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
    }


def message_out(record: MessageRecord) -> dict[str, Any]:
    """One message in detail: addresses and headers, but neither texts nor attachment data."""
    if record.payload is None:
        return record_out(record)
    message = Message.from_payload(
        record.payload,
        id=record.id,
        account_id=record.account_id,
        priority=record.priority,
        deferred_ts=record.deferred_ts,
    )
    return {
        **record_out(record),
        "from": format_address(message.sender),
        "to": [format_address(a) for a in message.to],
        "cc": [format_address(a) for a in message.cc],
        "bcc": [format_address(a) for a in message.bcc],
        "reply_to": format_address(message.reply_to) if message.reply_to else None,
        "return_path": message.return_path,
        "subject": message.subject,
        "content_type": message.content_type,
        "message_id": message.message_id,
        "headers": message.headers,
        "attachments": [attachment_out(a) for a in message.attachments],
        "body_size": len(message.body.encode()) + len((message.html or "").encode()),
    }


def attachment_out(attachment: Attachment) -> dict[str, Any]:
    return {
        "filename": attachment.filename,
        "storage_path": shorten_storage_path(attachment.storage_path),
        "mime_type": attachment.mime_type,
    }


def shorten_storage_path(path: str, keep: int = 80) -> str:
    """Never echo inline data (``base64:``) nor a query string; cut long paths."""
    volume, _, subpath = path.partition(":")
    if volume == "base64":
        return "base64:…"
    subpath, has_query, _ = subpath.partition("?")
    if has_query or len(subpath) > keep:
        subpath = subpath[:keep] + "…"
    return f"{volume}:{subpath}"


def event_out(event: Event) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "ts": event.ts,
        "code": event.code,
        "detail": event.detail,
        "data": event.data,
    }


# ---------------------------------------------------------------- routes


@security_scheme([])
@document_response(s.Ok)
@document_response(s.Failure, 503)
async def health() -> ResponseReturnValue:
    """Liveness: 503 when a background loop has died or is stuck."""
    problems = _service().health_problems()
    if problems:
        return failure(503, "; ".join(problems))
    return {"ok": True}


@security_scheme([])
@document_response(s.Ok)
@document_response(s.Failure, 503)
async def ready() -> ResponseReturnValue:
    """Readiness: 503 while a background loop is dead or the store does not answer."""
    service = _service()
    problems = await service.readiness_problems(service.config.section("rest").ready_timeout)
    if problems:
        return failure(503, "; ".join(problems))
    return {"ok": True}


@document_response(s.StatusAnswer)
@document_response(s.Failure, 403)
async def status() -> ResponseReturnValue:
    """Whether sending is active, queue counts by state, loop heartbeats."""
    return {"ok": True, **await _service().status()}


@document_request(s.AddMessagesRequest)
@document_response(s.AddMessagesAnswer)
@document_response(s.Failure, 400)
@document_response(s.Failure, 507)
async def add_messages() -> ResponseReturnValue:
    """Queue a batch; each bad message is rejected alone, with a reason."""
    body = await read_body(s.AddMessagesBody)
    try:
        result = await _service().add_messages(
            body.messages, body.default_priority, principal=_principal()
        )
    except InvalidInput as exc:
        return failure(400, str(exc))
    rejected = [{"id": r.id, "reason": r.reason} for r in result.rejected]
    return {"ok": True, "queued": result.queued, "rejected": rejected}


@document_response(s.Ok)
@document_response(s.Failure, 403)
async def run_now() -> ResponseReturnValue:
    """Wake the dispatcher (and the reporters) at once."""
    _service().run_now()
    return {"ok": True}


@document_response(s.ActiveAnswer)
@document_response(s.Failure, 403)
async def suspend() -> ResponseReturnValue:
    """Stop sending (persisted); messages are still accepted."""
    return {"ok": True, "active": await _service().set_active(False)}


@document_response(s.ActiveAnswer)
@document_response(s.Failure, 403)
async def activate() -> ResponseReturnValue:
    """Resume sending."""
    return {"ok": True, "active": await _service().set_active(True)}


@document_request(s.DeleteMessagesBody)
@document_response(s.DeleteMessagesAnswer)
async def delete_messages() -> ResponseReturnValue:
    """Delete messages by id; one being sent right now is skipped."""
    body = await read_body(s.DeleteMessagesBody)
    result = await _service().delete_messages(body.ids, principal=_principal())
    skipped = [{"id": id_, "reason": "in flight"} for id_ in result.in_flight]
    return {
        "ok": True,
        "removed": len(result.removed),
        "not_found": result.not_found,
        "skipped": skipped,
    }


@document_request(s.CleanupBody)
@document_response(s.CleanupAnswer)
@document_response(s.Failure, 403)
async def cleanup_messages() -> ResponseReturnValue:
    """Remove reported final messages older than ``older_than_seconds``."""
    body = await read_body(s.CleanupBody)
    return {"ok": True, "removed": await _service().cleanup_messages(body.older_than_seconds)}


@document_querystring(s.ListMessagesQuery)
@document_response(s.MessagesAnswer)
@document_response(s.Failure, 403)
async def list_messages() -> ResponseReturnValue:
    """A page of messages in arrival order; pass ``next_cursor`` back as ``cursor``."""
    query = parse_query(s.ListMessagesQuery)
    records, next_cursor = await _service().list_messages(
        status=query.status,
        account_id=query.account_id,
        limit=query.limit,
        cursor=query.cursor,
        principal=_principal(),
    )
    return {"ok": True, "messages": [record_out(r) for r in records], "next_cursor": next_cursor}


@document_response(s.MessageAnswer)
@document_response(s.Failure, 404)
async def get_message(message_id: str) -> ResponseReturnValue:
    """One message with its event history."""
    try:
        record, events = await _service().get_message(message_id, principal=_principal())
    except NotFound:
        return failure(404, "message not found")
    return {"ok": True, "message": message_out(record), "events": [event_out(e) for e in events]}


@document_request(s.AccountRequest)
@document_response(s.Ok)
@document_response(s.Failure, 422)
@document_response(s.Failure, 403)
async def put_account() -> ResponseReturnValue:
    """Create or replace an account."""
    try:
        await _service().put_account(await read_json(), principal=_principal())
    except InvalidInput as exc:
        return failure(422, str(exc))
    return {"ok": True}


@document_response(s.AccountsAnswer)
async def list_accounts() -> ResponseReturnValue:
    """Every account; passwords are never returned."""
    accounts = await _service().list_accounts(principal=_principal())
    return {"ok": True, "accounts": [a.public() for a in accounts]}


@document_querystring(s.DeleteAccountQuery)
@document_response(s.Ok)
@document_response(s.Failure, 404)
@document_response(s.Failure, 409)
async def delete_account(account_id: str) -> ResponseReturnValue:
    """Delete an account; refused (409) while it has unsent messages unless ``force``."""
    query = parse_query(s.DeleteAccountQuery)
    try:
        await _service().delete_account(account_id, force=query.force, principal=_principal())
    except NotFound:
        return failure(404, "account not found")
    except AccountBusy as exc:
        return failure(409, str(exc))
    return {"ok": True}


# ---------------------------------------------------------------- volumes
#
# Attachment volumes belong to the gmp_volumes plugin, which leaves its registry in
# ``service.state["volumes"]``; without it these endpoints answer 404.


class VolumeAdmin(Protocol):
    async def put(self, payload: Any) -> dict[str, Any]: ...

    def list(self, account_id: str | None = None) -> list[dict[str, Any]]: ...

    def get(self, name: str, account_id: str | None = None) -> dict[str, Any] | None: ...

    async def delete(self, name: str, account_id: str | None) -> bool: ...


class _NoVolumes(LookupError):
    pass


def _volumes() -> VolumeAdmin:
    admin: VolumeAdmin | None = _service().state.get("volumes")
    if admin is None:
        raise _NoVolumes()
    return admin


def _volumes_disabled() -> tuple[dict[str, Any], int]:
    return failure(404, "attachment volumes are not enabled (plugin 'volumes')")


@document_request(s.VolumeRequest)
@document_response(s.VolumeSetAnswer)
@document_response(s.Failure, 422)
@document_response(s.Failure, 403)
async def put_volume() -> ResponseReturnValue:
    """Create or replace a volume; usable by the next message, kept across restarts."""
    payload = await read_json()
    _check_account(payload.get("account_id") if isinstance(payload, dict) else None)
    try:
        volume = await _volumes().put(payload)
    except _NoVolumes:
        return _volumes_disabled()
    except InvalidInput as exc:
        return failure(422, str(exc))
    return {"ok": True, "volume": volume}


@document_querystring(s.VolumeQuery)
@document_response(s.VolumesAnswer)
@document_response(s.Failure, 403)
async def list_volumes() -> ResponseReturnValue:
    """Every volume; with ``account_id``, that account's and the global ones."""
    query = parse_query(s.VolumeQuery)
    principal = _principal()
    if query.account_id is not None:
        _check_account(query.account_id)
    try:
        volumes = _volumes().list(query.account_id)
    except _NoVolumes:
        return _volumes_disabled()
    visible = [v for v in volumes if v["account_id"] is None or principal.may_use(v["account_id"])]
    return {"ok": True, "volumes": visible}


@document_querystring(s.VolumeQuery)
@document_response(s.VolumeAnswer)
@document_response(s.Failure, 404)
@document_response(s.Failure, 403)
async def get_volume(name: str) -> ResponseReturnValue:
    """One volume: the account's own with ``account_id`` if it has one, else the global one."""
    query = parse_query(s.VolumeQuery)
    if query.account_id is not None:
        _check_account(query.account_id)
    try:
        volume = _volumes().get(name, query.account_id)
    except _NoVolumes:
        return _volumes_disabled()
    if volume is None:
        return failure(404, f"volume {name!r} not found")
    return {"ok": True, **volume}


@document_querystring(s.VolumeQuery)
@document_response(s.Ok)
@document_response(s.Failure, 404)
@document_response(s.Failure, 409)
@document_response(s.Failure, 403)
async def delete_volume(name: str) -> ResponseReturnValue:
    """Delete the volume with this name and ``account_id`` (none: the global one)."""
    query = parse_query(s.VolumeQuery)
    _check_account(query.account_id)
    try:
        deleted = await _volumes().delete(name, query.account_id)
    except _NoVolumes:
        return _volumes_disabled()
    except InvalidInput as exc:  # defined in plugins.toml
        return failure(409, str(exc))
    if not deleted:
        return failure(404, f"volume {name!r} not found")
    return {"ok": True}


View = Callable[..., Awaitable[ResponseReturnValue]]

ROUTES: list[tuple[str, View, list[str]]] = [
    ("/health", health, ["GET"]),
    ("/ready", ready, ["GET"]),
    ("/status", status, ["GET"]),
    ("/commands/add-messages", add_messages, ["POST"]),
    ("/commands/run-now", run_now, ["POST"]),
    ("/commands/suspend", suspend, ["POST"]),
    ("/commands/activate", activate, ["POST"]),
    ("/commands/delete-messages", delete_messages, ["POST"]),
    ("/commands/cleanup-messages", cleanup_messages, ["POST"]),
    ("/messages", list_messages, ["GET"]),
    ("/messages/<path:message_id>", get_message, ["GET"]),
    ("/account", put_account, ["POST"]),
    ("/accounts", list_accounts, ["GET"]),
    ("/account/<path:account_id>", delete_account, ["DELETE"]),
    ("/volume", put_volume, ["POST"]),
    ("/volumes", list_volumes, ["GET"]),
    ("/volume/<name>", get_volume, ["GET"]),
    ("/volume/<name>", delete_volume, ["DELETE"]),
]


def _version() -> str:
    try:
        return version("genro-mail-proxy")
    except PackageNotFoundError:
        return "0"
