"""One format for every timestamp in every answer (issue #14; docs/api.md, Timestamps).

``*_ts`` fields and event ``ts`` are unix seconds as integers, ``created_at``/``updated_at``
ISO 8601 text in UTC, wherever they appear: messages, events, accounts, volumes, /status.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.rest.rest_support import message

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def timestamps(answer: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (where, key, value) of a timestamp field anywhere in ``answer``."""
    if isinstance(answer, dict):
        for key, value in answer.items():
            if key == "ts" or key.endswith("_ts") or key in ("created_at", "updated_at"):
                yield f"{where}.{key}", key, value
            yield from timestamps(value, f"{where}.{key}")
    elif isinstance(answer, list):
        for index, item in enumerate(answer):
            yield from timestamps(item, f"{where}[{index}]")


async def test_every_timestamp_of_every_answer_has_the_documented_format(
    suspended: httpx.AsyncClient,
) -> None:
    volume = {"name": "files", "backend": "memory", "config": {}}
    assert (await suspended.post("/volume", json=volume)).status_code == 200
    ahead = int(time.time()) + 300 * 86400  # within [service] max_defer_seconds
    later = message("later", deferred_ts=ahead + 0.75)  # a fraction is kept, shown whole
    queued = await suspended.post(
        "/commands/add-messages", json={"messages": [message("m1"), later]}
    )
    assert queued.json()["queued"] == 2

    answers = {
        path: (await suspended.get(path)).json()
        for path in ("/accounts", "/volumes", "/volume/files", "/messages", "/messages/m1")
    }
    answers["POST /volume"] = (await suspended.post("/volume", json=volume)).json()
    found = [found for path, answer in answers.items() for found in timestamps(answer, path)]
    keys = {key for _, key, _ in found}
    assert {"ts", "deferred_ts", "sent_ts", "created_at", "updated_at"} <= keys
    for where, key, value in found:
        if key in ("created_at", "updated_at"):
            assert isinstance(value, str) and ISO_UTC.fullmatch(value), (where, value)
        else:
            assert value is None or type(value) is int, (where, value)
    [far] = [m for m in answers["/messages"]["messages"] if m["id"] == "later"]
    assert far["deferred_ts"] == ahead  # rounded down
