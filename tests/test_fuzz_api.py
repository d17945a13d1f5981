"""schemathesis against the service's own ``/openapi.json``, over real HTTP (issue #9).

Every operation the document describes is called with generated requests, valid and invalid
alike, on a real service listening on 127.0.0.1 (token configured, sending suspended and the
account pointing at a closed port: nothing leaves the machine). These promises are checked for
every answer:

* no 5xx, whatever was sent;
* every 4xx is our JSON failure, ``{"ok": false, "error": "..."}``, with a reason in it;
* and the document tells the truth: each status answered is documented, with its body.

schemathesis and its requests client are synchronous, while the service is asyncio: the
service runs in an event loop of its own on a background thread, and the tests talk to it
over its socket like any client would.

The number of examples is bounded (``MAX_EXAMPLES`` per operation) so the whole run stays
well under 30 s in CI; ``GMP_FUZZ_EXAMPLES=500 pytest tests/test_fuzz_api.py`` digs deeper.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from gmp_rest.app import ROUTES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from gmp_core import Service
from tests.rest.rest_support import TOKEN, MemoryVolumes, account, rest_config

MAX_EXAMPLES = int(os.environ.get("GMP_FUZZ_EXAMPLES", "40"))


class BackgroundService:
    """A started :class:`Service` driven by an event loop on a thread of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gmp-fuzz-service")
        # A default account, so generated messages without account_id reach deeper.
        config = rest_config(tmp_path, service={"default_account": "acc"})
        self.service = Service(config, plugins=(MemoryVolumes(),))

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def __enter__(self) -> BackgroundService:
        self.thread.start()
        self.run(self.service.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    @property
    def url(self) -> str:
        return str(self.service.state["rest"].url)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with BackgroundService(tmp_path_factory.mktemp("fuzz")) as background:
        headers = {"X-API-Token": TOKEN}
        # Nothing may be sent: sending suspended, and the account points at a closed port.
        suspended = requests.post(f"{background.url}/commands/suspend", headers=headers, timeout=10)
        assert suspended.json() == {"ok": True, "active": False}
        added = requests.post(
            f"{background.url}/account", json=account(), headers=headers, timeout=10
        )
        assert added.status_code == 200
        yield background.url


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


def documented_operations() -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the REST plugin: ``/a/<path:x>`` -> ``/a/{x}``.

    Taken from the app's route table, because pytest collects before any service runs
    (schemathesis' own ``from_fixture`` loader does not work with pytest 9), plus the routes
    the bundled metrics and sandbox plugins add.
    ``test_every_documented_operation_is_fuzzed`` keeps this list and the document in step."""
    return [
        (method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule))
        for rule, _, methods in ROUTES
        for method in methods
    ] + [
        ("GET", "/metrics"),
        ("GET", "/sandbox/messages"),
        ("DELETE", "/sandbox/messages"),
        ("GET", "/sandbox/messages/{capture_id}"),
        ("GET", "/sandbox/messages/{capture_id}/raw"),
    ]


def test_every_documented_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    in_document = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert in_document == set(documented_operations())


@schemathesis.check
def failures_name_the_problem(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer is ``{"ok": false, "error": "<reason>"}``: never an HTML page, never empty."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict), f"4xx body is not a JSON object: {response.text[:200]}"
    assert body.get("ok") is False, f"4xx body without ok: false: {body}"
    error = body.get("error")
    assert isinstance(error, str) and error.strip(), f"4xx body without a reason: {body}"
    return None


def has_inputs(operation: Any) -> bool:
    return any(len(part) for part in (operation.path_parameters, operation.query, operation.body))


# status_code_conformance: every status the API answers is in the document (issue #14).
CHECKS = [
    not_a_server_error,
    failures_name_the_problem,
    response_schema_conformance,
    status_code_conformance,
]


ADD_MESSAGES = ("POST", "/commands/add-messages")


def deliverable(case: schemathesis.Case, fix: bool) -> schemathesis.Case:
    """Half the generated batches get real addresses and account: random strings are never
    valid addresses, and without this no generated message would get past intake into the
    store (and the listing endpoints would only ever see an empty queue)."""
    messages = case.body.get("messages") if isinstance(case.body, dict) else None
    if fix and isinstance(messages, list):
        for item in messages:
            if isinstance(item, dict):
                item.update(account_id="acc", to=["rcpt@example.com"])
                item["from"] = "Sender <sender@example.com>"
    return case


# Resuming sending would let queued messages go to the SMTP hosts of accounts the fuzzer
# created (any host name at all): nothing may leave the machine, so sending stays suspended.
# (POST /commands/activate is tested in tests/rest/test_rest_api.py.)
NOT_FUZZED = {("POST", "/commands/activate")}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), documented_operations())
def test_fuzz(
    api_schema: schemathesis.BaseSchema, live_url: str, method: str, path: str, mode: Any
) -> None:
    if (method, path) in NOT_FUZZED:
        pytest.skip("would resume sending (see NOT_FUZZED)")
    operation = api_schema[path][method]
    if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
        pytest.skip("no parameters and no body: there is nothing to get wrong")

    cases = operation.as_strategy(generation_mode=mode)
    if (method, path) == ADD_MESSAGES and mode is GenerationMode.POSITIVE:
        cases = st.tuples(cases, st.booleans()).map(lambda drawn: deliverable(*drawn))

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=bool(os.environ.get("CI")),  # CI: the same examples every run
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=live_url, headers={"X-API-Token": TOKEN}, checks=CHECKS)

    fuzz()


def test_sending_stayed_suspended(live_url: str) -> None:
    """Runs after the fuzzing above: nothing can have been sent anywhere."""
    status = requests.get(f"{live_url}/status", headers={"X-API-Token": TOKEN}, timeout=10)
    assert status.json()["active"] is False
    assert status.json()["queue"]["sent"] == 0
    print("queue after fuzzing:", status.json()["queue"])  # how deep generated data went
