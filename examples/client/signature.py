"""Checking the ``X-GMP-Signature`` header of a proxy_sync request (docs/reports.md).

Standard library only: copy this file into your application.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOLERANCE_SECONDS = 300  # older (or future) timestamps are refused: a replay, or a bad clock


def verify_signature(secret: str, header: str, body: bytes, *, now: float | None = None) -> bool:
    """True when ``header`` (``t=<unix>,v1=<hex>``) signs exactly ``body`` (the raw bytes, as
    received, before any JSON parsing) with ``secret``, within the tolerance."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), given)
