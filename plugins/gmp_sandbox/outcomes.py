"""What the sandbox answers each recipient, by its local part, like the simulator addresses of
commercial mail services:

* ``success@…`` and any other address: accepted;
* ``bounce@…``: refused for good, ``550 5.1.1``;
* ``defer@…``: refused for now, ``451 4.3.0``, on the first attempt; accepted on the next;
* ``slow@…``: accepted after ``[sandbox] slow_seconds``.

The domain does not matter, case does not either, and a ``+tag`` is ignored (``bounce+42@…``
bounces), so a test can make as many distinct addresses of each kind as it needs.
"""

from __future__ import annotations

from collections.abc import Iterable

BOUNCE = "550 5.1.1 User unknown (simulated by the sandbox)"
DEFER = "451 4.3.0 Try again later (simulated by the sandbox: accepted on the next attempt)"


def simulator(address: str) -> str:
    """The simulator an address names: its local part, lower-cased, without a ``+tag``."""
    local = address.rpartition("@")[0] or address
    return local.partition("+")[0].lower()


def refusal(address: str, attempt: int) -> str | None:
    """The SMTP reply refusing ``address`` on this attempt (1 for the first), or None when it
    is accepted."""
    kind = simulator(address)
    if kind == "bounce":
        return BOUNCE
    if kind == "defer" and attempt <= 1:
        return DEFER
    return None


def is_slow(recipients: Iterable[str]) -> bool:
    """Whether accepting these recipients takes ``slow_seconds``."""
    return any(simulator(address) == "slow" for address in recipients)


def reply_code(reply: str) -> int:
    return int(reply.split(" ", 1)[0])
