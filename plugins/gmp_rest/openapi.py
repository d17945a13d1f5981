"""What ``/openapi.json`` says about failures, and how the description of each status is given.

A view documents the failures only it can answer, with :func:`fails`
(``@fails(404, "no message with this id")``). The failures that come from the plumbing around
every view are added here, from facts about the route, so no view can forget them:

* 401 on every endpoint that needs the token (``authenticate`` in app.py);
* 403 where a caller limited to some accounts may not go (what acts on the whole proxy);
* 413 on every endpoint that needs the token (checked there, before any body is read);
* 400, 408 and 422 on every endpoint that reads a body;
* 431 everywhere (``limit_headers``);
* 507 on every endpoint that writes (the store cannot write: disk full).

The facts come from ``app.extensions`` (set by ``create_app``), read when the document is
built, so plugin routes added after the extension was set up are covered too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from quart_schema import document_response
from quart_schema.openapi import OpenAPIProvider
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from werkzeug.routing import Rule

from gmp_rest.schemas import Failure

V = TypeVar("V", bound=Callable[..., Any])

FAILURES_ATTRIBUTE = "_gmp_failures"
PLUGIN_ROUTE_ATTRIBUTE = "_gmp_plugin_route"

UNAUTHORIZED = "Invalid or missing API token: send it in the X-API-Token header."
WHOLE_PROXY = "The token is limited to some accounts, and this acts on the whole proxy."
BODY_TOO_LARGE = "The body is larger than [rest] max_body_bytes; refused before it is read."
BODY_FAILURES = {
    400: "The body is not JSON (invalid JSON body: ...).",
    408: "The body did not arrive whole within [rest] body_timeout.",
    422: "The body does not fit this endpoint; the error names the field.",
}
HEADERS_TOO_LARGE = "Request line and headers are larger than [rest] max_header_bytes."
CANNOT_WRITE = "The store cannot write (disk full, say): nothing was changed; try again later."
WRITING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def fails(status: int, when: str, model: type[BaseModel] = Failure) -> Callable[[V], V]:
    """Document that the view answers ``status`` (body ``model``) ``when`` this happens."""

    def decorate(view: V) -> V:
        document_response(model, status)(view)
        reasons: dict[int, str] = getattr(view, FAILURES_ATTRIBUTE, {})
        reasons[status] = when
        setattr(view, FAILURES_ATTRIBUTE, reasons)
        return view

    return decorate


class GmpOpenAPIProvider(OpenAPIProvider):
    """quart-schema's document, with the shared failures and a description for each status."""

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        failure_response, failure_components = self.build_response_object(Failure, None)
        components.update(failure_components)
        for operations in paths.values():
            for method, operation in operations.items():
                self._complete(operation, rule.endpoint, view, failure_response, {method.upper()})
        return paths, components

    def _complete(
        self,
        operation: dict[str, Any],
        endpoint: str,
        view: Callable[..., Any],
        failure_response: dict[str, Any],
        methods: set[str],
    ) -> None:
        responses: dict[int, dict[str, Any]] = dict(operation["responses"])
        reasons = self._shared_failures(endpoint, view, methods)
        for status, when in getattr(view, FAILURES_ATTRIBUTE, {}).items():
            reasons.setdefault(status, []).append(when)
        for status, whys in reasons.items():
            response = dict(responses.get(status) or failure_response)
            response["description"] = " Or: ".join(whys)
            responses[status] = response
        media_type = getattr(view, PLUGIN_ROUTE_ATTRIBUTE, None)
        if media_type:
            responses.setdefault(200, _plugin_answer(media_type))
        for status, response in responses.items():
            if not response.get("description"):
                responses[status] = {**response, "description": "Success."}
        operation["responses"] = dict(sorted(responses.items()))
        operation["description"] = operation.get("description", "").strip()
        if endpoint in self._app.extensions["gmp_open_endpoints"]:
            operation["security"] = []

    def _shared_failures(
        self, endpoint: str, view: Callable[..., Any], methods: set[str]
    ) -> dict[int, list[str]]:
        extensions = self._app.extensions
        reasons: dict[int, list[str]] = {}
        if hasattr(view, QUART_SCHEMA_REQUEST_ATTRIBUTE):
            reasons.update({status: [why] for status, why in BODY_FAILURES.items()})
        if endpoint not in extensions["gmp_open_endpoints"]:
            reasons[401] = [UNAUTHORIZED]
            reasons[413] = [BODY_TOO_LARGE]  # checked with the token, whatever the endpoint
            if extensions["gmp_acts_on_the_whole_proxy"](endpoint):
                reasons[403] = [WHOLE_PROXY]
        reasons[431] = [HEADERS_TOO_LARGE]
        if WRITING_METHODS & set(methods):
            reasons[507] = [CANNOT_WRITE]
        return reasons


def _plugin_answer(media_type: str) -> dict[str, Any]:
    """What a plugin route answers, as it registered it (Prometheus text, JSON, mail)."""
    schema = {"type": "object"} if media_type == "application/json" else {"type": "string"}
    return {
        "description": f"Success: {media_type}, of the plugin's choosing.",
        "content": {media_type: {"schema": schema}},
    }
