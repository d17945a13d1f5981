"""/openapi.json tells the whole truth (issue #14), checked against the running service.

Every route of the app is in the document with a summary and a description; every status an
endpoint answers to the probes below (no token, a token limited to some accounts, oversized
headers and bodies, malformed and misfit bodies, bad query values, unknown ids) is documented,
and the answer matches the body schema documented for it. tests/test_fuzz_api.py then does
the same with generated requests.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import schemathesis
from gmp_rest import create_app
from quart_schema.openapi import QUART_SCHEMA_HIDDEN_ATTRIBUTE

from gmp_core import Service
from gmp_core.testing import ReportReceiver
from tests.rest.rest_support import TOKEN, MemoryVolumes, ServiceFactory, account, base_url

SCOPED = "scoped-token-0123456789"
MAX_BODY = 4096
METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}


@pytest.fixture
async def probed(start_service: ServiceFactory, gmp_report_receiver: ReportReceiver) -> Service:
    """A service with every kind of caller and a reporter (so /status lists one)."""
    service = await start_service(
        MemoryVolumes(),
        rest={"max_body_bytes": MAX_BODY},
        token_auth={"api_token": TOKEN, "account_tokens": [{"token": SCOPED, "accounts": ["acc"]}]},
        proxy_sync={"url": gmp_report_receiver.url},
        reporting={"interval": 0},
    )
    async with caller(service, TOKEN) as admin:
        assert (await admin.post("/commands/suspend")).is_success  # nothing is sent
        assert (await admin.post("/account", json=account())).is_success
    return service


@pytest.fixture
async def spec(probed: Service) -> dict[str, Any]:
    async with caller(probed, None) as anonymous:
        document: dict[str, Any] = (await anonymous.get("/openapi.json")).json()
    return document


def caller(service: Service, token: str | None) -> httpx.AsyncClient:
    headers = {"X-API-Token": token} if token else {}
    return httpx.AsyncClient(base_url=base_url(service), headers=headers)


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def served_routes(service: Service) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves, but the pages that only show
    the document (hidden on purpose)."""
    app = create_app(service)
    routes = set()
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], QUART_SCHEMA_HIDDEN_ATTRIBUTE, False):
            assert rule.endpoint in {"openapi", "docs_swagger", "docs_redoc", "docs_asset"}
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(m, path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    return routes


async def test_every_route_is_documented_with_a_description(
    probed: Service, spec: dict[str, Any]
) -> None:
    assert {(method, path) for method, path, _ in operations(spec)} == served_routes(probed)
    for method, path, operation in operations(spec):
        where = f"{method} {path}"
        assert operation["summary"].strip(), where
        assert len(operation["description"]) > 20, where
        assert operation["tags"], where
        for status, response in operation["responses"].items():
            assert response["description"].strip(), (where, status)
            [(media_type, content)] = response["content"].items()
            assert media_type in ("application/json", "text/plain", "message/rfc822"), where
            assert content["schema"], (where, status)


async def test_the_failures_every_endpoint_shares_are_documented(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        statuses = set(operation["responses"])
        where = f"{method} {path}"
        if operation.get("security") != []:
            assert "401" in statuses, where
        if "requestBody" in operation:
            assert {"400", "408", "413", "422"} <= statuses, where
        assert "431" in statuses, where
        if operation["parameters"]:
            assert all(p.get("description") or p["in"] == "path" for p in operation["parameters"])


def fill_path(path: str) -> str:
    return re.sub(r"\{\w+\}", "no-such-thing", path)


async def probe_answers(
    service: Service, method: str, path: str, operation: dict[str, Any]
) -> list[httpx.Response]:
    """What the endpoint answers to calls that go wrong in every way the plumbing knows,
    and to a plain call with the admin token."""
    url = fill_path(path)
    answers = []
    async with caller(service, None) as anonymous:
        answers.append(await anonymous.request(method, url))
        answers.append(await anonymous.request(method, url, headers={"X-Big": "a" * 20_000}))
    async with caller(service, SCOPED) as scoped:
        answers.append(await scoped.request(method, url))
    async with caller(service, TOKEN) as admin:
        if method in METHODS_WITH_BODY:
            for body in (b"{", b"5", b"{}", b'{"x": "' + b"a" * MAX_BODY + b'"}'):
                answers.append(await admin.request(method, url, content=body))
        else:
            answers.append(await admin.request(method, url))
        for parameter in operation["parameters"]:
            if parameter["in"] == "query":
                bad = {parameter["name"]: "-1.5x"}
                answers.append(await admin.request(method, url, params=bad))
    return answers


async def test_every_status_an_endpoint_answers_is_documented_with_its_body(
    probed: Service, spec: dict[str, Any]
) -> None:
    document = schemathesis.openapi.from_dict(spec)
    seen: set[str] = set()
    for method, path, operation in operations(spec):
        for answer in await probe_answers(probed, method, path, operation):
            status = str(answer.status_code)
            seen.add(status)
            where = f"{method} {path} -> {status}: {answer.text[:200]}"
            assert status in operation["responses"], where
            document[path][method].validate_response(answer)  # raises when it does not match
    # The probes did reach each kind of failure (else the test above proves little).
    assert {"200", "400", "401", "403", "404", "413", "422", "431"} <= seen


async def test_status_documents_every_field_it_answers(
    probed: Service, spec: dict[str, Any]
) -> None:
    async with caller(probed, TOKEN) as admin:
        answer = (await admin.get("/status")).json()
    schemas = spec["components"]["schemas"]
    documented = spec["paths"]["/status"]["get"]["responses"]["200"]["content"]
    top = documented["application/json"]["schema"]
    assert set(answer) == set(top["properties"]) == set(top["required"])
    for field in ("queue", "heartbeats"):
        nested = schemas[top["properties"][field]["$ref"].rsplit("/", 1)[1]]
        assert set(answer[field]) == set(nested["properties"]), field
    reporter = schemas["ReporterStatus"]
    assert set(answer["reporters"]["proxy_sync"]) == set(reporter["properties"])
    # unix seconds as integers, like every timestamp of the API
    assert isinstance(answer["started_at"], int)
    assert all(isinstance(ts, int) for ts in answer["heartbeats"].values())
    assert isinstance(answer["reporters"]["proxy_sync"]["heartbeat"], int)


async def test_add_messages_documents_warnings_and_the_all_rejected_answer(
    spec: dict[str, Any],
) -> None:
    schemas = spec["components"]["schemas"]
    responses = spec["paths"]["/commands/add-messages"]["post"]["responses"]
    ok = responses["200"]["content"]["application/json"]["schema"]
    assert {"queued", "rejected", "warnings"} <= set(ok["properties"])
    assert set(schemas["WarningOut"]["properties"]) == {"id", "field", "warning"}
    failure = responses["400"]["content"]["application/json"]["schema"]
    kinds = {ref["$ref"].rsplit("/", 1)[1] for ref in failure["anyOf"]}
    assert kinds == {"AllRejected", "Failure"}
    rejected = schemas["AllRejected"]
    assert set(rejected["required"]) == {"ok", "error", "queued", "rejected", "warnings", "detail"}
    assert rejected["properties"]["error"]["const"] == "all messages rejected"
    detail = schemas["AllRejectedDetail"]
    assert set(detail["properties"]) == {"error", "rejected"}


async def test_health_documents_both_shapes(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/health"]["get"]["responses"]
    ok = responses["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["status"]["const"] == "ok"
    assert ok["properties"]["ok"]["const"] is True
    failed = responses["503"]["content"]["application/json"]["schema"]
    assert failed["properties"]["status"]["const"] == "error"
    assert set(failed["required"]) == {"ok", "error", "status"}
