"""Fault injection against a real `gmp serve`: 5% 4xx, 1% 5xx, drops and stalls at the sink;
every message ends as predicted, and every outcome is reported (`tests/chaos/faults.py`)."""

from __future__ import annotations

from gmp_core.testing import Faults
from tests.chaos.faults import FAULTS, expected_outcome, run_faults


def test_the_plan_is_reproducible_and_near_the_shares_asked() -> None:
    attempts = [(f"r{i}@example.com", n) for i in range(5000) for n in (1, 2)]
    planned = [FAULTS.plan(recipient, n) for recipient, n in attempts]
    assert planned == [FAULTS.plan(recipient, n) for recipient, n in attempts]
    share = {kind: planned.count(kind) / len(planned) for kind in Faults.KINDS}
    assert 0.04 < share["rcpt_temporary"] + share["data_temporary"] < 0.06
    assert 0.005 < share["rcpt_permanent"] + share["data_permanent"] < 0.015
    assert expected_outcome(Faults(), "anyone@example.com", 3).status == "sent"
    always_busy = Faults(rcpt_temporary=1.0)
    gave_up = expected_outcome(always_busy, "anyone@example.com", 3)
    assert (gave_up.status, gave_up.code, gave_up.gave_up) == ("error", 451, True)


async def test_every_message_ends_as_the_faults_dictate_and_is_reported() -> None:
    result = await run_faults(messages=400)
    print(result.summary())  # shown with pytest -s, or when the test fails
    result.check()
    assert all(result.injected[kind] > 0 for kind in Faults.KINDS), result.injected
    assert result.outcomes["sent"] > 0 and result.outcomes["error"] > 0
    assert result.outcomes["sent after retries"] > 0
    assert result.outcomes["gave up"] >= 3  # the greylisted ones, at least
