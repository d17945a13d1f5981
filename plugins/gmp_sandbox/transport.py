"""The sandbox transport: delivers nowhere, answers like an SMTP server would, keeps a copy.

Each recipient meets its simulated outcome (``outcomes.py``); what is accepted is captured with
its envelope and the exact bytes the core built (``capturing.py``), and what is refused is
answered with the SMTP codes a real server gives, in the same shape as the SMTP transport's
results: the dispatcher then retries, fails and reports exactly as it would in production.
"""

from __future__ import annotations

import asyncio

from gmp_core import Account, OutgoingMessage, SendResult
from gmp_sandbox.capturing import CaptureWriter, capture_of
from gmp_sandbox.outcomes import is_slow, refusal, reply_code

ACCEPTED = 250


class SandboxTransport:
    def __init__(self, writer: CaptureWriter, slow_seconds: float) -> None:
        self.writer = writer
        self.slow_seconds = slow_seconds

    async def send(self, message: OutgoingMessage, account: Account) -> SendResult:
        refused = {
            recipient: reply
            for recipient in message.recipients
            if (reply := refusal(recipient, message.attempt)) is not None
        }
        accepted = [r for r in message.recipients if r not in refused]
        if not accepted:
            return _all_refused(refused)
        slow = is_slow(accepted)
        if slow:
            await asyncio.sleep(self.slow_seconds)
        try:
            capture_id = await self.writer.add(capture_of(message, account.id, accepted))
        except Exception as exc:  # the store is down, say: as a server whose disk is full
            return SendResult.failed(
                f"4.3.0 the sandbox could not keep the message: {type(exc).__name__}",
                temporary=True,
                code=451,
            )
        detail = f"2.0.0 Ok: captured as sandbox message {capture_id}"
        if slow:
            detail += f", after {self.slow_seconds:g} s"
        return SendResult(accepted=True, code=ACCEPTED, detail=detail, refused=refused)

    async def forget_account(self, account_id: str) -> None:
        pass  # nothing is kept per account

    async def close(self) -> None:
        await self.writer.close()


def _all_refused(refused: dict[str, str]) -> SendResult:
    """Nothing was accepted: temporary if any recipient may work later (as SMTP says it)."""
    first = next(iter(refused.values()))
    detail = "all recipients refused: " + "; ".join(f"{r}: {reply}" for r, reply in refused.items())
    temporary = any(reply.startswith("4") for reply in refused.values())
    result = SendResult.failed(detail, temporary=temporary, code=reply_code(first))
    result.refused = dict(refused)
    return result
