"""`gmp serve` as a real process for the tests: started, driven over HTTP, stopped or killed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

TOKEN = "process-test-token"
LISTENING = re.compile(rb"REST API listening on (http://\S+)")


class ServeProcess:
    """`gmp serve` with a config of the test's, reachable at ``url`` once started."""

    def __init__(
        self, config: Path | None, *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        """``config`` None: no --config, as a container started with only environment
        variables, or to let gmp find a config file in ``cwd`` by itself (where it runs);
        ``env`` adds to this process's."""
        self.config = config
        self.cwd = cwd or (config.parent if config else Path.cwd())
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.log: list[bytes] = []
        self._logged = asyncio.Condition()

    async def start(self) -> ServeProcess:
        gmp = Path(sys.executable).parent / "gmp"
        config = ["--config", str(self.config)] if self.config else []
        self.proc = await asyncio.create_subprocess_exec(
            str(gmp),
            "serve",
            *config,
            "--log-level",
            "INFO",
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env={**os.environ, "GMP_CONFIG": "", **self.env},
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while not self.url:
                line = await self.proc.stderr.readline()
                assert line, "gmp serve exited during start-up:\n" + b"".join(self.log).decode()
                self.log.append(line)
                if found := LISTENING.search(line):
                    self.url = found.group(1).decode()
        self._drain = asyncio.create_task(self._drain_stderr())
        return self

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    async def wait_for_log(self, text: bytes) -> None:
        async with asyncio.timeout(30), self._logged:
            await self._logged.wait_for(lambda: any(text in line for line in self.log))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"X-API-Token": TOKEN}, timeout=30)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            code = await self.proc.wait()
            await self._drain
        return code


async def post(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> dict:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()
