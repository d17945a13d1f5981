"""The chaos run, reduced for CI: a real `gmp serve` SIGKILLed at random points, restarted,
and nothing lost (the full run: `bench/chaos.py`; the method: `tests/chaos/chaos.py`)."""

from __future__ import annotations

from tests.chaos.chaos import run_chaos


async def test_sigkill_at_random_points_loses_nothing_and_bounds_duplicates() -> None:
    result = await run_chaos(messages=300, kills=5, seed=9)
    print(result.summary())  # shown with pytest -s, or when the test fails
    result.check()
    assert len(result.kills) == 5
    assert result.intake_retries > 0  # some kills did land while a batch was being posted
