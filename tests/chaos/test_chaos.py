"""The chaos run, reduced for CI: a real `gmp serve` SIGKILLed at random points, restarted,
and nothing lost (the full run: `bench/chaos.py`; the method: `tests/chaos/chaos.py`)."""

from __future__ import annotations

import dataclasses

from tests.chaos.chaos import run_chaos
from tests.chaos.faults import FAULTS


async def test_sigkill_at_random_points_loses_nothing_and_bounds_duplicates() -> None:
    result = await run_chaos(messages=300, kills=5, seed=6)  # a seed aiming at all four kinds
    print(result.summary())  # shown with pytest -s, or when the test fails
    result.check()
    assert len(result.kills) == 5
    assert result.duplicates == result.bound  # without faults, each send at risk goes again
    kinds = {kill.point.split(">=")[0] for kill in result.kills}
    assert kinds == {"mails", "reports", "intake", "shutdown"}


async def test_sigkill_with_a_misbehaving_sink_and_receiver() -> None:
    """4xx, 5xx, drops and stalls at the sink, failed posts at the receiver: every message
    still ends as sent or error, and is reported as such."""
    result = await run_chaos(messages=200, kills=4, seed=5, faults=dataclasses.replace(FAULTS))
    print(result.summary())
    result.check()
    assert result.states["sent"] > 0
