"""The container image, reproduced without Docker for tests/test_container.py.

Docker cannot run on the test machines, so the image is rebuilt as far as plain Python can:
the build context ``.dockerignore`` leaves, the files the Dockerfile's ``COPY`` lines take from
it, its ``pip install`` into a fresh virtualenv, and then its ``CMD`` run with the environment
its ``ENV`` lines give, with the image's paths (``/opt/gmp``, ``/data``) mapped to temporary
directories.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).parent.parent
LISTENING = re.compile(rb"REST API listening on http://\S+:(\d+)")


# ---------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile and its instructions, in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for name, args in self.instructions if name == keyword]

    def one(self, keyword: str) -> str:
        [args] = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        """``ENV`` lines, in order (the ``KEY=value`` form, the one we write)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON argv of ``CMD [...]``, or of the ``CMD`` of ``HEALTHCHECK ... CMD [...]``."""
        args = self.one(keyword)
        if keyword == "HEALTHCHECK":
            args = args.split(" CMD ", 1)[1]
        argv: list[str] = json.loads(args)
        return argv


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        args = " ".join(args.split())
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append((keyword.upper(), args))
    return stages


# ---------------------------------------------------------------- the build context


def dockerignore_rules(text: str) -> list[tuple[bool, str]]:
    """(include?, pattern) per line; the last rule that matches a path decides."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.removeprefix("!").strip("/")))
    return rules


def _pattern(pattern: str) -> re.Pattern[str]:
    """Docker's glob: ``*`` and ``?`` stay within one path segment, ``**`` crosses them
    (``**/x`` matches ``x`` at any depth, the top included)."""
    regex = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern):
        if token == "**/":
            regex += "(?:.*/)?"
        elif token == "**":
            regex += ".*"
        elif token == "*":
            regex += "[^/]*"
        elif token == "?":
            regex += "[^/]"
        elif token.startswith("["):
            regex += token
        else:
            regex += re.escape(token)
    return re.compile(regex)


def _matches(path: str, pattern: str) -> bool:
    """A pattern that matches a directory matches everything in it."""
    parts = path.split("/")
    compiled = _pattern(pattern)
    return any(compiled.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))


def in_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether the build context holds ``path`` (relative, with forward slashes)."""
    included = True
    for include, pattern in rules:
        if _matches(path, pattern):
            included = include
    return included


def build_context(target: Path) -> None:
    """Copy into ``target`` the files of the repository the build context would hold."""
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            source = Path(root) / name
            relative = source.relative_to(REPO).as_posix()
            if in_context(relative, rules):
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / relative)


def copy_as_the_build_does(stage: Stage, context: Path, root: Path) -> None:
    """Run the stage's ``COPY src... dest`` lines from ``context`` into ``root`` (the image's
    ``/``)."""
    for args in stage.all("COPY"):
        *sources, dest = args.split()
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            where = root / dest.lstrip("/")
            if dest.endswith("/"):
                where = where / origin.name
            where.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, where)
            else:
                shutil.copy2(origin, where)


def install_as_the_build_does(stage: Stage, root: Path, venv: Path, python: str) -> None:
    """The stage's ``python -m venv /opt/gmp && /opt/gmp/bin/pip install "/src[...]"``, with
    ``/opt/gmp`` at ``venv`` and ``/src`` under ``root``."""
    [run] = stage.all("RUN")
    wanted = re.search(r'pip install "(/src\[[^\]]*\])"', run)
    assert wanted and "python -m venv /opt/gmp" in run, run
    requirement = str(root) + wanted.group(1)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", requirement],
        check=True,
        timeout=900,
    )


def image_environment(stage: Stage, venv: Path, data: Path, port: int) -> dict[str, str]:
    """The stage's ``ENV``, with the image's paths mapped (only the port differs: a free one)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(data), "LANG": "C.UTF-8"}
    for key, value in stage.env().items():
        value = value.replace("/data", str(data))  # first: the others may contain "/data"
        env[key] = value.replace("$PATH", env["PATH"]).replace("/opt/gmp", str(venv))
    env["GMP_PORT"] = str(port)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- the running image


class ImageProcess:
    """The image's command, as a process of its own with only the image's environment."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv, self.env, self.cwd = argv, env, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.log = b""
        self.port = 0

    async def start(self) -> ImageProcess:
        """Start it and wait until it listens; AssertionError (with its log) if it exits."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, cwd=self.cwd, stderr=asyncio.subprocess.PIPE
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while not self.port:
                line = await self.proc.stderr.readline()
                assert line, "the image's command exited:\n" + self.log.decode()
                self.log += line
                if found := LISTENING.search(line):
                    self.port = int(found.group(1))
        self._drain = asyncio.create_task(self._read_the_rest())
        return self

    async def exit_code(self, timeout: float = 60) -> int:
        """Its exit status, once it exits on its own; what it logged is then in ``log``."""
        assert self.proc is not None and self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            self.log += await self.proc.stderr.read()
            return await self.proc.wait()

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(60):
            code = await self.proc.wait()
            await self._drain
        return code

    async def _read_the_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self.log += await self.proc.stderr.read()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
