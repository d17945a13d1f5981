"""Every extension point of genro-mail-proxy.

pluggy is synchronous and our work is asynchronous, so hooks come in two kinds:

* **registration hooks** (``gmp_register_*``) are called once at start-up and hand the core
  objects whose methods are ``async`` (the pattern of llm's ``register_models``);
* **notification hooks** (``gmp_event``, ``gmp_prepare_message``, ``gmp_startup``,
  ``gmp_shutdown``) may return an awaitable, which the core awaits (datasette's
  ``await_me_maybe``).

No ``firstresult`` hook may be ``async def``: a coroutine is never ``None``, so it would always
win. Each docstring here is that hook's reference; ``docs/plugins.md`` expands on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic import BaseModel

    from gmp_core.config import Config
    from gmp_core.interfaces import RateLimitPolicy, Reporter, Transport, VolumeBackend
    from gmp_core.models import Account, Event, OutgoingMessage, Principal
    from gmp_core.service import Service
    from gmp_core.store import Store

hookspec = pluggy.HookspecMarker("gmp")


@hookspec
def gmp_register_settings(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Declare a settings table: ``register("smtp", SmtpSettings)``.

    The table ``[smtp]`` of ``plugins.toml`` is validated against the pydantic model, with
    ``GMP_SMTP_<KEY>`` environment variables overriding it. Fetch the validated object later
    with ``config.section("smtp")``.
    """


@hookspec
def gmp_check_config(service: Service) -> None:
    """Refuse a configuration this plugin cannot run with: raise ``ConfigError`` naming the
    setting and the fix. Called by ``gmp check-config`` and first thing in ``start()``, so
    both refuse the same configurations. It may read files; it must not connect anywhere,
    listen, or change anything."""


@hookspec(firstresult=True)
def gmp_make_store(config: Config) -> Store | None:
    """Return the :class:`~gmp_core.store.Store` for the configured database, or ``None``
    when this plugin does not handle it. The first non-``None`` answer wins."""


@hookspec
def gmp_register_transports(register: Callable[[str, Transport], None], service: Service) -> None:
    """Register delivery transports by name: ``register("smtp", SmtpTransport(...))``.

    An account's ``transport`` field names the transport that delivers its messages."""


@hookspec
def gmp_register_volume_backends(
    register: Callable[[str, VolumeBackend], None], service: Service
) -> None:
    """Register attachment sources by volume name: ``register("base64", Base64Volume())``.

    An attachment's ``storage_path`` is ``volume:subpath``; the named backend's
    ``async read(subpath, account_id)`` returns its bytes. Volumes may also be added to or
    removed from ``service.volumes`` while running: it is looked up on every use."""


@hookspec
def gmp_register_rate_limit_policies(
    register: Callable[[str, RateLimitPolicy], None], service: Service
) -> None:
    """Register rate-limit policies. Before sending, every policy is asked how many of an
    account's claimed messages may go now; the strictest answer wins."""


@hookspec
def gmp_register_reporters(register: Callable[[str, Reporter], None], service: Service) -> None:
    """Register delivery reporters by name. The core's reporter loop gives each one, on its own,
    batches of :class:`~gmp_core.interfaces.DeliveryReport` (``async report(reports) ->
    ReportReply``) and marks a batch reported for that reporter only when it acknowledges."""


@hookspec(firstresult=True)
def gmp_authenticate(headers: Mapping[str, str], config: Config) -> Principal | None:
    """Return the :class:`~gmp_core.models.Principal` making an API request, or ``None`` to
    pass (another plugin may answer). Header names are lower-case. Must be a plain function,
    never ``async``. When no plugin answers, the request is refused."""


@hookspec
def gmp_prepare_message(message: OutgoingMessage, account: Account, service: Service) -> Any:
    """Last changes before a message is sent: add headers, sign, rewrite. May return an
    awaitable. Raising makes the attempt fail temporarily (it is retried). ``service`` gives
    the plugin its settings (``service.config.section(...)``) and ``service.state``."""


@hookspec
def gmp_event(event: Event, service: Service) -> Any:
    """Observe a lifecycle event (queued, sent, error, deferred, rejected, ...): metrics,
    logs, audit. May return an awaitable; exceptions are logged and never stop delivery.
    ``service`` gives the plugin its settings and ``service.state``."""


@hookspec
def gmp_startup(service: Service) -> Any:
    """The service has opened its store and is about to start its loops. May return an
    awaitable. The REST plugin starts its HTTP server here."""


@hookspec
def gmp_shutdown(service: Service) -> Any:
    """The service is stopping: sending has drained. Release what ``gmp_startup`` took."""


@hookspec
def gmp_register_routes(register: Callable[..., None], service: Service) -> None:
    """Add endpoints to the HTTP API:
    ``register(path, view, public=False, methods=("GET",), scoped=False, responses=None,
    media_type="text/plain")``.

    ``path`` may name parameters in braces (``/things/{id}``, one path segment each).
    ``view`` is ``async (request) -> (body, status, headers)``, so it does not depend on the
    web framework: ``request`` is a :class:`~gmp_core.RouteRequest` (method, path_params,
    query, json, principal); a view that takes no argument is called without one. ``body``
    is bytes, text, or a dict or list sent as JSON. ``public`` endpoints are served without
    authentication; the others need what every API endpoint needs. Callers limited to some
    accounts are refused (403), unless ``scoped``: the view then shows and changes only what
    belongs to ``request.principal.accounts``. ``responses`` (status -> when) and
    ``media_type`` (of a 200 answer) document the route in ``/openapi.json``, where the
    view's docstring is its summary and description. The bundled REST plugin serves them;
    the metrics plugin adds ``/metrics`` this way, the sandbox ``/sandbox/messages``."""


@hookspec
def gmp_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``gmp`` command line (a :class:`click.Group`)."""
