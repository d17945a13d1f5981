"""Crash safety, measured: a few thousand messages through a real `gmp serve`, SIGKILLed 20 times.

    .venv/bin/python bench/chaos.py                       # 3,000 messages, 20 kills, SQLite
    .venv/bin/python bench/chaos.py --postgresql          # the same on the local PostgreSQL
    .venv/bin/python bench/chaos.py --messages 500 --kills 5 --seed 3

The run itself, and how duplicates are bounded, is in ``tests/chaos/chaos.py`` (the test
suite runs a reduced form of it: ``tests/chaos/test_chaos.py``). Exits non-zero when a
message or a report was lost, or duplicates exceed the bound.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.*

from tests.chaos.chaos import main

if __name__ == "__main__":
    asyncio.run(main())
