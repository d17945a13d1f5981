"""``python -m tests.chaos [--messages N] [--kills K] [--seed S] [--postgresql [URL]]``"""

import asyncio

from tests.chaos.chaos import main

asyncio.run(main())
