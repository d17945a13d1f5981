"""The Quart application: a thin HTTP layer over the public methods of :class:`Service`.

``create_app(service)`` builds one app per service (no module state). Every answer is JSON
with ``ok``; failures add ``error``. Authentication runs once, in ``before_request``, for every
endpoint but the open ones (``/health``, ``/ready``, and the documentation unless
``[rest] docs_public`` is false). What ``/openapi.json`` says about failures: openapi.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    operation_id,
    tag,
)
from quart_schema.validation import QuerystringValidationError
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import PathConverter

from gmp_core import (
    AccountBusy,
    Attachment,
    ConfigError,
    Event,
    Forbidden,
    InvalidInput,
    Message,
    MessageRecord,
    NotFound,
    Principal,
    RouteAnswer,
    RouteRequest,
    Service,
    StoreCannotWrite,
)
from gmp_core.intake import SURROGATE_REASON, shown
from gmp_core.models import format_address
from gmp_core.service import NOT_YOURS
from gmp_rest import schemas as s
from gmp_rest.docs_ui import BASIC_REALM as DOCS_BASIC_REALM
from gmp_rest.docs_ui import DOCS_ENDPOINTS, add_docs_routes, basic_auth_token
from gmp_rest.openapi import PLUGIN_ROUTE_ATTRIBUTE, GmpOpenAPIProvider, fails

log = logging.getLogger("gmp.rest")

_SURROGATE = re.compile("[\ud800-\udfff]")

M = TypeVar("M", bound=BaseModel)

API_KEY_HEADER = "X-API-Token"
OPEN_ENDPOINTS = frozenset({"health", "ready"})
UNAUTHORIZED = "Invalid or missing API token"
# What a caller limited to some accounts may not do: act on every account at once (plugin
# routes included, unless registered scoped: /metrics tells of every account).
WHOLE_PROXY_ENDPOINTS = frozenset({"status", "run_now", "suspend", "activate", "cleanup_messages"})
WHOLE_PROXY_ONLY = "this caller may act only on its own accounts, not on the whole proxy"
HTTP_ERRORS = {404: "not found", 405: "method not allowed"}
API_SUMMARY = (
    "Queue e-mail, follow it, manage accounts and attachment volumes. Every answer is JSON "
    "with `ok`; failures add `error`, a sentence naming the problem. Send the API token in "
    "the `X-API-Token` header (Authorize). Timestamps: `*_ts` fields, event `ts`, "
    "`started_at` and heartbeats are unix seconds as integers; `created_at` and `updated_at` "
    "are ISO 8601 text in UTC."
)


def create_app(service: Service) -> Quart:
    """The REST API of ``service``, configured from its ``[rest]`` settings."""
    settings = service.config.section("rest")
    app = Quart("gmp_rest", static_folder=None)  # no /static route: docs_ui.py serves files
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout
    app.extensions["gmp_service"] = service
    # An id is the client's text: "/x", "a//b" and "x/" are ids like any other, not paths to
    # tidy up (werkzeug would answer "/messages//x" with a redirect to "/messages/x").
    app.url_map.merge_slashes = False
    app.url_map.converters["id"] = IdConverter
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        # quart-schema's UIs load JavaScript from public CDNs; docs_ui.py serves our own.
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=GmpOpenAPIProvider,
        info={"title": "genro-mail-proxy", "version": _version(), "description": API_SUMMARY},
        tags=[{"name": name, "description": text} for name, (text, _) in TAGS.items()],
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
    add_docs_routes(app)
    open_endpoints = (OPEN_ENDPOINTS | DOCS_ENDPOINTS) if settings.docs_public else OPEN_ENDPOINTS
    app.extensions["gmp_open_endpoints"] = set(open_endpoints)
    app.extensions["gmp_scoped_endpoints"] = set()
    app.extensions["gmp_acts_on_the_whole_proxy"] = _acts_on_the_whole_proxy
    add_plugin_routes(app, service)
    return app


PLUGIN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class IdConverter(PathConverter):
    """A path parameter that is a whole id: any text, slashes included, also at its start."""

    regex = ".+"
    part_isolating = False  # it spans "/" (werkzeug guesses from a "/" in the regex)


def add_plugin_routes(app: Quart, service: Service) -> None:
    """Endpoints that plugins add through ``gmp_register_routes`` (``/metrics``, the
    sandbox's). Their views get a :class:`RouteRequest`, never a Quart object."""
    open_endpoints: set[str] = app.extensions["gmp_open_endpoints"]
    scoped_endpoints: set[str] = app.extensions["gmp_scoped_endpoints"]

    def register(
        path: str,
        view: Callable[..., Awaitable[RouteAnswer]],
        public: bool = False,
        methods: Sequence[str] = ("GET",),
        scoped: bool = False,
        responses: Mapping[int, str] | None = None,
        media_type: str = "text/plain",
    ) -> None:
        rule, verbs = _plugin_rule(path, methods)
        for verb in verbs:
            if any(r.rule == rule and verb in (r.methods or ()) for r in app.url_map.iter_rules()):
                raise ConfigError(f"two routes for {verb} {path}: plugin routes must be new")
        wants_request = bool(inspect.signature(view).parameters)

        async def serve(**path_params: str) -> ResponseReturnValue:
            if not wants_request:
                return _plugin_answer(await view())
            route_request = RouteRequest(
                method=request.method,
                path=request.path,
                path_params=path_params,
                query=request.args.to_dict(),
                json=None if request.method in ("GET", "HEAD") else await read_json(),
                principal=g.get("principal"),
            )
            return _plugin_answer(await view(route_request))

        endpoint = f"plugin:{','.join(verbs)}:{path}"
        # In /openapi.json under "Plugins", the view's docstring as summary and description.
        serve.__doc__ = view.__doc__ or f"{' '.join(verbs)} {path}\n\nAdded by a plugin."
        setattr(serve, PLUGIN_ROUTE_ATTRIBUTE, media_type)
        words = [verb.lower() for verb in verbs] + [p for p in re.split(r"[/{}]+", path) if p]
        operation_id("plugin_" + "_".join(words))(serve)
        tag(["Plugins"])(serve)
        for status, when in (responses or {}).items():  # failures the view answers itself
            fails(status, when)(serve)
        app.add_url_rule(rule, endpoint, serve, methods=verbs)
        if public:
            open_endpoints.add(endpoint)
        if scoped:
            scoped_endpoints.add(endpoint)

    service.pm.hook.gmp_register_routes(register=register, service=service)


def _plugin_rule(path: str, methods: Sequence[str]) -> tuple[str, list[str]]:
    """``/things/{id}`` -> Quart's ``/things/<id>``; the methods checked."""
    verbs = [method.upper() for method in methods]
    unknown = [verb for verb in verbs if verb not in PLUGIN_METHODS]
    if not verbs or unknown:
        raise ConfigError(f"route {path}: methods must be some of {sorted(PLUGIN_METHODS)}")
    if not path.startswith("/") or "<" in path or ">" in path:
        raise ConfigError(f"route {path}: a path starts with / and names parameters as {{name}}")
    return _PATH_PARAM.sub(r"<\1>", path), verbs


def _plugin_answer(answer: RouteAnswer) -> ResponseReturnValue:
    body, status, headers = answer
    if isinstance(body, dict | list):
        text = json.dumps(body, separators=(",", ":"))
        if not any(name.lower() == "content-type" for name in headers):
            headers = {"Content-Type": "application/json", **headers}
        return text, status, headers
    return body, status, headers


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
    if request.endpoint in DOCS_ENDPOINTS:
        return None if principal or _docs_token_is_good() else docs_unauthorized()
    if principal is None:
        return failure(401, UNAUTHORIZED)
    if principal.scoped and _acts_on_the_whole_proxy(request.endpoint):
        return failure(403, WHOLE_PROXY_ONLY)
    g.principal = principal
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()  # answered before a byte of the body is read
    return None


def _docs_token_is_good() -> bool:
    """The token as a Basic auth password: what a browser can send to open the docs."""
    token = basic_auth_token()
    return token is not None and _service().authenticate({API_KEY_HEADER: token}) is not None


def docs_unauthorized() -> ResponseReturnValue:
    """401 that makes a browser ask for the token (docs pages only: see docs_ui.py)."""
    body, status = failure(401, UNAUTHORIZED)
    return body, status, {"WWW-Authenticate": DOCS_BASIC_REALM}


def _acts_on_the_whole_proxy(endpoint: str | None) -> bool:
    """Plugin routes do too, unless registered ``scoped`` (they limit themselves)."""
    if endpoint in current_app.extensions["gmp_scoped_endpoints"]:
        return False
    return endpoint in WHOLE_PROXY_ENDPOINTS or (endpoint or "").startswith("plugin:")


def _principal() -> Principal:
    principal: Principal = g.principal
    return principal


def _check_account(account_id: str | None) -> None:
    """A caller limited to some accounts names only those (None: a thing of every account)."""
    if not _principal().may_use(account_id):
        raise Forbidden(f"account_id: {NOT_YOURS}")


async def read_json(*, plain: bool = True) -> Any:
    """The JSON body, whatever the Content-Type says; an empty body counts as ``{}``. Any
    body that cannot be read is a 400 saying why: not UTF-8, not JSON, nested too deep (a
    RecursionError in the parser).

    ``plain`` (every endpoint but add-messages, whose messages intake checks one by one, each
    rejected alone) also refuses a body that is valid JSON but not data a store can keep: a
    lone surrogate (``"\\ud800"``) anywhere, or nesting deeper than :data:`MAX_DEPTH`.

    Neither the body nor its parsed form is cached on the request: Quart's request objects
    live until the cyclic garbage collector reaches them, and a batch of 1,000 messages parses
    into some 6 MB of objects (with caching, peak RSS reached 130 MB over 100,000 messages).
    """
    raw = await request.get_data(cache=False)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid JSON body: not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise BadRequest("invalid JSON body: nested too deep") from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from None
    if plain:
        problem = _not_plain(data)
        if problem:
            raise BadRequest(f"invalid JSON body: {problem}")
    return data


MAX_DEPTH = 32  # no endpoint takes more than a few levels; deeper is an attack on recursion


def _not_plain(data: Any) -> str | None:
    """Where ``data`` holds a lone surrogate or is nested deeper than MAX_DEPTH, or None.
    Iterative: the check itself must not recurse."""
    pending: list[tuple[str, Any, int]] = [("", data, 0)]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return f"{path or 'the body'} {SURROGATE_REASON}"
            continue
        if not isinstance(value, dict | list):
            continue
        if depth >= MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{shown(key, 40)}".lstrip(".")
                if not key.isascii() and _SURROGATE.search(key):
                    return f"a key of {path or 'the body'} {SURROGATE_REASON}"
                pending.append((child, item, depth + 1))
        else:
            pending.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
    return None


def _not_json(constant: str) -> None:
    """Python's json module accepts NaN and Infinity, which JSON does not have: a deferral
    "until Infinity" must be a 400, not an overflow later on."""
    raise ValueError(f"{constant} is not a JSON value")


async def read_body(model: type[M], *, plain: bool = True) -> M:
    """The JSON body validated against ``model`` (``plain``: see :func:`read_json`)."""
    return read_model(model, await read_json(plain=plain))


def read_model(model: type[M], data: Any) -> M:
    """``data`` validated against ``model``: a 422 naming the field otherwise."""
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


# One rule for every answer (and for the reports, DeliveryReport.as_item): timestamps are
# unix seconds as integers, rounded down, as the original's _ts columns were; created_at and
# updated_at are ISO 8601 text in UTC (the original's were text).


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_or_none(value: float | None) -> str | None:
    return None if value is None else _iso(value)


def with_iso_times(item: dict[str, Any]) -> dict[str, Any]:
    """An account or a volume, its ``created_at``/``updated_at`` as ISO text."""
    return {
        **item,
        "created_at": _iso_or_none(item.get("created_at")),
        "updated_at": _iso_or_none(item.get("updated_at")),
    }


def status_out(status: dict[str, Any]) -> dict[str, Any]:
    """``Service.status()`` with its times in whole seconds."""
    reporters = {
        name: {
            **loop,
            "heartbeat": _ts(loop["heartbeat"]),
            "last_acknowledged": _ts(loop["last_acknowledged"]),
        }
        for name, loop in status["reporters"].items()
    }
    heartbeats = {name: _ts(ts) for name, ts in status["heartbeats"].items()}
    return {
        **status,
        "heartbeats": heartbeats,
        "reporters": reporters,
        "started_at": _ts(status["started_at"]),
    }


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
        "ts": _ts(event.ts),
        "code": event.code,
        "detail": event.detail,
        "data": event.data,
    }


# ---------------------------------------------------------------- routes
#
# Each view's docstring is its summary (first line) and description in /openapi.json. The
# failures every endpoint shares (401, 403 for scoped tokens, 400/408/413/422 for a body,
# 431) are documented by openapi.py; ``@fails`` documents those only the view answers.


@document_response(s.HealthAnswer)
@fails(503, "A background loop has died: restart the process.", s.HealthFailure)
async def health() -> ResponseReturnValue:
    """Liveness: is the process working?

    No token needed. 200 `{"ok": true, "status": "ok"}` (the original service answered
    `{"status": "ok"}`); 503 with `status: "error"` and the reason when a background loop
    has died or is stuck (no heartbeat for longer than its lease). For container health
    checks and load balancers.
    """
    problems = _service().health_problems()
    if problems:
        return health_failure(problems)
    return {"ok": True, "status": "ok"}


@document_response(s.HealthAnswer)
@fails(
    503,
    "A background loop has died, or the store did not answer within [rest] ready_timeout.",
    s.HealthFailure,
)
async def ready() -> ResponseReturnValue:
    """Readiness: can the process take requests now?

    No token needed. As `/health`, and also 503 `store unreachable (...)` while the store
    does not answer within `[rest] ready_timeout`: take the process out of rotation.
    """
    service = _service()
    problems = await service.readiness_problems(service.config.section("rest").ready_timeout)
    if problems:
        return health_failure(problems)
    return {"ok": True, "status": "ok"}


def health_failure(problems: list[str]) -> tuple[dict[str, Any], int]:
    body, status = failure(503, "; ".join(problems))
    return {**body, "status": "error"}, status


@document_response(s.StatusAnswer)
async def status() -> ResponseReturnValue:
    """Whether sending is active, the queue, and the loops' heartbeats.

    `queue` counts the messages of the whole store by state; `in_hand` those this process
    has claimed; `heartbeats` and `reporters[...].heartbeat` say when each loop last turned
    (unix seconds), `worker` names this process as its claims do.
    """
    return {"ok": True, **status_out(await _service().status())}


@document_request(s.AddMessagesRequest)
@document_response(s.AddMessagesAnswer)
@fails(
    400,
    "Every message of the call was rejected for its content (all messages rejected), or the "
    "call itself is unusable (messages must be a list; more than [service] "
    "max_messages_per_call messages).",
    s.AddMessagesFailure,
)
async def add_messages() -> ResponseReturnValue:
    """Queue a batch of messages.

    Each message is checked on its own: a bad one is listed in `rejected` with a reason and
    the others are queued; fields the proxy does not know are ignored and listed in
    `warnings`. When every message is rejected for its content the answer is 400. An id
    already sent (or being sent) is rejected as such but does not make the call fail: a
    client's retry of a call that was stored stays a success. The answer comes once the
    messages are stored.
    """
    body = await read_body(s.AddMessagesBody, plain=False)
    try:
        result = await _service().add_messages(
            body.messages, body.default_priority, principal=_principal()
        )
    except InvalidInput as exc:  # the call itself: not a list, too many messages
        return refused_call(str(exc), [], [])
    rejected = [{"id": r.id, "reason": r.reason} for r in result.rejected]
    warnings = [{"id": w.id, "field": w.field, "warning": w.warning} for w in result.warnings]
    if result.all_rejected:
        return refused_call("all messages rejected", rejected, warnings)
    return {"ok": True, "queued": result.queued, "rejected": rejected, "warnings": warnings}


def refused_call(
    error: str, rejected: list[dict[str, Any]], warnings: list[dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    """400 for an add-messages call that queued nothing. The original's body had the error
    under ``detail``: clients written for it find it there, ours read ``error``."""
    detail = {"error": error, "rejected": rejected}
    body = {"ok": False, "error": error, "queued": 0, "rejected": rejected, "warnings": warnings}
    return {**body, "detail": detail}, 400


@document_response(s.Ok)
async def run_now() -> ResponseReturnValue:
    """Wake the dispatcher and the reporters at once.

    Cuts any wait short: due messages are claimed now and pending delivery reports posted
    now (a report back-off ends too).
    """
    _service().run_now()
    return {"ok": True}


@document_response(s.ActiveAnswer)
async def suspend() -> ResponseReturnValue:
    """Stop sending.

    Stored: survives restarts and reaches every process sharing the database. Messages are
    still accepted, and queue until `activate`.
    """
    return {"ok": True, "active": await _service().set_active(False)}


@document_response(s.ActiveAnswer)
async def activate() -> ResponseReturnValue:
    """Resume sending.

    Undoes `suspend`, for every process sharing the database.
    """
    return {"ok": True, "active": await _service().set_active(True)}


@document_request(s.DeleteMessagesBody)
@document_response(s.DeleteMessagesAnswer)
async def delete_messages() -> ResponseReturnValue:
    """Delete messages by id.

    A message being sent right now is not deleted: it is listed in `skipped` (`in flight`).
    Unknown ids (and, for a token limited to some accounts, other accounts' messages) are
    listed in `not_found`.
    """
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
async def cleanup_messages() -> ResponseReturnValue:
    """Remove final messages whose report was acknowledged long ago.

    Removes sent or failed messages whose delivery report was acknowledged more than
    `older_than_seconds` ago (default: `[service] delivery_report_retention_seconds`; with
    a retention of 0 or less, every reported one). Unreported messages are never removed.
    """
    body = await read_body(s.CleanupBody)
    return {"ok": True, "removed": await _service().cleanup_messages(body.older_than_seconds)}


@document_querystring(s.ListMessagesQuery)
@document_response(s.MessagesAnswer)
@fails(422, "A query parameter is invalid; the error names it.")
@fails(403, "account_id names an account this token may not use.")
async def list_messages() -> ResponseReturnValue:
    """A page of messages, in arrival order.

    Filter by `status` and `account_id`; pass `next_cursor` back as `cursor` for the next
    page (null: this was the last one). Records keep the original's field names; the
    payload is never returned.
    """
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
@fails(404, "No message with this id (for a token limited to some accounts: not of them).")
async def get_message(message_id: str) -> ResponseReturnValue:
    """One message in detail, with its history.

    Addresses, subject, headers and attachments as understood, the size of the texts (not
    the texts), and `events`: what happened to it, oldest first.
    """
    try:
        record, events = await _service().get_message(message_id, principal=_principal())
    except NotFound:
        return failure(404, "message not found")
    return {"ok": True, "message": message_out(record), "events": [event_out(e) for e in events]}


@document_request(s.AccountRequest)
@document_response(s.Ok)
@fails(422, "An account field is invalid; the error names it.")
@fails(403, "The token is limited to some accounts, and this id is not one of them.")
async def put_account() -> ResponseReturnValue:
    """Create or replace an account.

    A full replacement: fields not given take their defaults. The password is stored
    sealed when a secrets key is configured, and never returned.
    """
    try:
        await _service().put_account(await read_json(), principal=_principal())
    except InvalidInput as exc:
        return failure(422, str(exc))
    return {"ok": True}


@document_response(s.AccountsAnswer)
async def list_accounts() -> ResponseReturnValue:
    """Every account.

    Every field but the password, plus `has_password`; a token limited to some accounts
    sees only those.
    """
    accounts = await _service().list_accounts(principal=_principal())
    return {"ok": True, "accounts": [with_iso_times(a.public()) for a in accounts]}


@document_querystring(s.DeleteAccountQuery)
@document_response(s.Ok)
@fails(404, "No account with this id (for a token limited to some accounts: not of them).")
@fails(409, "The account has unsent messages, and force is not true.")
@fails(422, "force is not a boolean.")
async def delete_account(account_id: str) -> ResponseReturnValue:
    """Delete an account.

    Refused (409) while it has unsent messages, unless `force=true`: those then end as
    `error` "account deleted" and are reported.
    """
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


NO_VOLUMES = "The volumes plugin is not enabled."


@document_request(s.VolumeRequest)
@document_response(s.VolumeSetAnswer)
@fails(
    422,
    "A field is invalid (named), the backend's extra is not installed, the volume is defined "
    "in plugins.toml, or it reaches beyond [volumes] api_local_roots / api_allow_networks.",
)
@fails(403, "account_id names an account this token may not use (or none: every account).")
@fails(404, NO_VOLUMES)
async def put_volume() -> ResponseReturnValue:
    """Create or replace an attachment volume.

    The volume with this `name` and `account_id` (none: every account may use it). Usable
    by the next message without a restart, kept in the store, mounted again at every start.
    Credentials in `config` are answered as `***`.
    """
    payload = await read_json()
    # The owner's type first: authorisation looks at its value (a list is a 422, not a 500)
    owner = read_model(s.VolumeOwner, payload if isinstance(payload, dict) else {})
    _check_account(owner.account_id)
    try:
        volume = await _volumes().put(payload)
    except _NoVolumes:
        return _volumes_disabled()
    except InvalidInput as exc:
        return failure(422, str(exc))
    return {"ok": True, "volume": with_iso_times(volume)}


@document_querystring(s.VolumeQuery)
@document_response(s.VolumesAnswer)
@fails(403, "account_id names an account this token may not use.")
@fails(404, NO_VOLUMES)
async def list_volumes() -> ResponseReturnValue:
    """Every attachment volume.

    With `account_id`, that account's own and the global ones. Credentials in `config` read
    `***`; `source` says `config` (plugins.toml) or `api`.
    """
    query = parse_query(s.VolumeQuery)
    principal = _principal()
    if query.account_id is not None:
        _check_account(query.account_id)
    try:
        volumes = _volumes().list(query.account_id)
    except _NoVolumes:
        return _volumes_disabled()
    visible = [v for v in volumes if v["account_id"] is None or principal.may_use(v["account_id"])]
    return {"ok": True, "volumes": [with_iso_times(v) for v in visible]}


@document_querystring(s.VolumeQuery)
@document_response(s.VolumeAnswer)
@fails(404, "No such volume, or the volumes plugin is not enabled.")
@fails(403, "account_id names an account this token may not use.")
async def get_volume(name: str) -> ResponseReturnValue:
    """One attachment volume.

    The account's own with `account_id` when it has one, else the global one. Its fields
    come next to `ok`, as the original service answered.
    """
    query = parse_query(s.VolumeQuery)
    if query.account_id is not None:
        _check_account(query.account_id)
    try:
        volume = _volumes().get(name, query.account_id)
    except _NoVolumes:
        return _volumes_disabled()
    if volume is None:
        return failure(404, f"volume {name!r} not found")
    return {"ok": True, **with_iso_times(volume)}


@document_querystring(s.VolumeQuery)
@document_response(s.Ok)
@fails(404, "No such volume, or the volumes plugin is not enabled.")
@fails(409, "The volume is defined in plugins.toml: change it there.")
@fails(403, "account_id names an account this token may not use (or none: a global volume).")
async def delete_volume(name: str) -> ResponseReturnValue:
    """Delete an attachment volume.

    The one with this name and `account_id` (none: the global one). Messages still naming
    it end as `error` when their turn comes.
    """
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
    ("/messages/<id:message_id>", get_message, ["GET"]),
    ("/account", put_account, ["POST"]),
    ("/accounts", list_accounts, ["GET"]),
    ("/account/<id:account_id>", delete_account, ["DELETE"]),
    ("/volume", put_volume, ["POST"]),
    ("/volumes", list_volumes, ["GET"]),
    ("/volume/<name>", get_volume, ["GET"]),
    ("/volume/<name>", delete_volume, ["DELETE"]),
]


# How the documentation pages group the endpoints, in this order.
TAGS: dict[str, tuple[str, list[View]]] = {
    "Messages": (
        "Queue messages and follow them.",
        [add_messages, list_messages, get_message, delete_messages, cleanup_messages],
    ),
    "Sending": ("Wake, suspend and resume the dispatcher.", [run_now, suspend, activate]),
    "Accounts": (
        "The SMTP accounts messages go out through.",
        [put_account, list_accounts, delete_account],
    ),
    "Volumes": (
        "Where attachments are read from (plugin volumes).",
        [put_volume, list_volumes, get_volume, delete_volume],
    ),
    "Health": ("For probes, load balancers and operators.", [health, ready, status]),
    "Plugins": ("Endpoints added by plugins (gmp_register_routes).", []),
}
for _name, (_, _views) in TAGS.items():
    for _view in _views:
        tag([_name])(_view)


def _version() -> str:
    try:
        return version("genro-mail-proxy")
    except PackageNotFoundError:
        return "0"
