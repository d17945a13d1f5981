"""Fault injection, measured: a real `gmp serve` against a sink failing 5% of attempts with a
4xx, 1% with a 5xx, dropping 1% of connections mid-DATA and stalling 1%.

    .venv/bin/python bench/faults.py                  # 3,000 messages, seed 9
    .venv/bin/python bench/faults.py --messages 10000 --seed 4

Every message must end as the faults dictate (5xx: error with that code; 4xx, drop, stall:
retried, then sent or "gave up" with the last code), be reported with that outcome, and
reach the sink exactly once if sent. The run and its checks: ``tests/chaos/faults.py``.
"""

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.*

from tests.chaos.faults import FAULTS, run_faults


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=FAULTS.seed)
    args = parser.parse_args()
    faults = dataclasses.replace(FAULTS, seed=args.seed)
    result = await run_faults(messages=args.messages, faults=faults, timeout=300)
    print(result.summary())
    result.check()
    print("OK: every message ended as the faults dictate, and was reported")


if __name__ == "__main__":
    asyncio.run(main())
