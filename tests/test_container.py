"""Dockerfile, .dockerignore and docker-compose.yml, as the seed README's quick start uses them
(issue #14). Docker cannot run here; tests/container.py rebuilds the image in a fresh
virtualenv (its build context, its COPY lines, its pip install) and these tests run the
image's command with the image's environment, run its health check against it, and check the
compose file's services against what the proxy really reads.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gmp_core import Config, Service
from gmp_core.testing import ReportReceiver, wait_until
from tests.container import (
    REPO,
    ImageProcess,
    Stage,
    build_context,
    copy_as_the_build_does,
    dockerignore_rules,
    free_port,
    image_environment,
    in_context,
    install_as_the_build_does,
    parse_dockerfile,
)

TOKEN = "container-test-token"


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@dataclass
class Image:
    """The image, rebuilt: its run stage, and where its /opt/gmp and /data are here."""

    stage: Stage
    venv: Path
    data: Path

    def environment(self, port: int, **run_env: str) -> dict[str, str]:
        """What ``docker run -e ...`` gives the command: the image's ENV, then ``run_env``."""
        return {**image_environment(self.stage, self.venv, self.data, port), **run_env}

    def command(self) -> list[str]:
        return self.stage.exec_form("CMD")

    def health_check(self, env: dict[str, str]) -> int:
        """Run the image's HEALTHCHECK command as Docker would, in the container's place."""
        argv = self.stage.exec_form("HEALTHCHECK")
        return subprocess.run(argv, env=env, cwd=self.data, capture_output=True).returncode


@pytest.fixture(scope="module")
def built(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> tuple[Stage, Path]:
    """The build stage run: (run stage, the virtualenv that stands for /opt/gmp)."""
    build, run = stages
    where = tmp_path_factory.mktemp("image")
    build_context(where / "context")
    copy_as_the_build_does(build, where / "context", where / "root")
    install_as_the_build_does(build, where / "root", where / "opt-gmp", sys.executable)
    assert run.one("COPY") == f"--from={build.name} /opt/gmp /opt/gmp"  # all it takes along
    return run, where / "opt-gmp"


@pytest.fixture
def image(built: tuple[Stage, Path], tmp_path: Path) -> Image:
    """A fresh /data for each test, as a new container with a new volume has."""
    run, venv = built
    data = tmp_path / "data"
    data.mkdir()
    return Image(run, venv, data)


@pytest.fixture
async def started() -> AsyncIterator[list[ImageProcess]]:
    processes: list[ImageProcess] = []
    yield processes
    for process in processes:
        await process.stop(signal.SIGKILL)


# ---------------------------------------------------------------- Dockerfile


def test_the_image_is_slim_unprivileged_and_keeps_its_data_in_a_volume(
    stages: list[Stage],
) -> None:
    run = stages[-1]
    assert all(stage.base.endswith("-slim") for stage in stages)
    assert run.one("USER") not in ("root", "0")
    assert run.one("VOLUME") == "/data" and run.one("WORKDIR") == "/data"
    env = run.env()
    assert env["GMP_HOST"] == "0.0.0.0" and env["GMP_DB_PATH"] == "/data/mail_service.db"
    assert run.one("EXPOSE") == env["GMP_PORT"] == "8000"
    assert not any("TOKEN" in key or "PASSWORD" in key or "KEY" in key for key in env)
    health = run.one("HEALTHCHECK")
    assert "/health" in health and "curl" not in health and "wget" not in health
    assert run.exec_form("CMD") == ["gmp", "serve"] and not run.all("ENTRYPOINT")


def test_the_build_context_keeps_secrets_and_local_state_out() -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    for wanted in (
        "pyproject.toml",
        "README.md",
        "gmp_core/service.py",
        "plugins/gmp_rest/ui/swagger.html",
    ):
        assert in_context(wanted, rules), wanted
    for unwanted in (
        "plugins.toml",  # a local configuration may hold tokens
        "config.ini",
        "gmp.db",
        "mail_service.db-wal",
        ".venv/bin/python",
        ".git/config",
        "gmp_core/__pycache__/service.cpython-311.pyc",
        "build/lib/gmp_core/service.py",
        "tests/test_container.py",
    ):
        assert not in_context(unwanted, rules), unwanted


async def test_the_image_command_serves_with_the_quick_start_environment(
    image: Image, started: list[ImageProcess], gmp_report_receiver: ReportReceiver
) -> None:
    # The seed README's `docker run -e ...` variables.
    env = image.environment(
        free_port(),
        GMP_API_TOKEN=TOKEN,
        GMP_CLIENT_SYNC_URL=gmp_report_receiver.url + "proxy_sync",
        GMP_CLIENT_SYNC_USER="syncuser",
        GMP_CLIENT_SYNC_PASSWORD="syncpass",
    )
    proxy = await ImageProcess(image.command(), env, image.data).start()
    started.append(proxy)
    assert b"REST API listening on http://0.0.0.0:" in proxy.log  # every interface

    async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
        health = await http.get("/health")
        assert (health.status_code, health.json()) == (200, {"ok": True, "status": "ok"})
        assert (await http.get("/status")).status_code == 401  # the token is needed
        status = (await http.get("/status", headers={"X-API-Token": TOKEN})).json()
        assert "proxy_sync" in status["reporters"]  # GMP_CLIENT_SYNC_URL was read
        # The docs pages' files are package data: present in a real (not editable) install.
        for path in ("/docs", "/docs/static/swagger-init.js", "/docs/static/swagger-ui-bundle.js"):
            assert (await http.get(path)).status_code == 200, path
    assert (image.data / "mail_service.db").exists()  # GMP_DB_PATH, in the volume

    assert image.health_check(env) == 0
    assert await proxy.stop(signal.SIGTERM) == 0  # STOPSIGNAL: a clean stop
    assert image.health_check(env) != 0  # and the check notices it is gone


async def test_without_a_token_the_image_refuses_to_start(image: Image) -> None:
    env = image.environment(free_port())
    assert "GMP_API_TOKEN" not in env
    proxy = ImageProcess(image.command(), env, image.data)
    with pytest.raises(AssertionError, match="exited"):
        await proxy.start()
    assert await proxy.exit_code() != 0
    log = proxy.log.decode()
    assert "refusing to listen on 0.0.0.0 without an API token" in log
    assert "GMP_API_TOKEN" in log  # it says what to set


# ---------------------------------------------------------------- docker-compose.yml


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def variables_the_proxy_reads() -> set[str]:
    """Every environment variable some setting of the core or a bundled plugin reads."""
    config = Config({}, environ={})
    Service(config)  # declares every enabled plugin's settings table
    names = {"GMP_CONFIG"}
    for table, model in config.declared_tables().items():
        for key, info in model.model_fields.items():
            names.add(f"GMP_{table}_{key}".upper())
            extra = info.json_schema_extra
            if isinstance(extra, dict) and isinstance(extra.get("legacy_env"), str):
                names.add(extra["legacy_env"])
    return names


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(found: re.Match[str]) -> str:
        name, kind, rest = found.group(1), found.group(2), found.group(3)
        if env.get(name):
            return env[name]
        assert kind != ":?", f"compose would stop: {rest}"
        return rest if kind == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def proxies(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("build") == "."}


def test_compose_runs_several_proxies_on_one_postgresql() -> None:
    services = compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    [data_volume] = postgres["volumes"]
    assert data_volume.split(":")[0] in compose()["volumes"]  # a named volume: kept

    several = proxies(services)
    assert len(several) >= 2
    readable = variables_the_proxy_reads()
    host_ports = set()
    for name, proxy in several.items():
        assert proxy["image"] == "genro-mail-proxy" and (REPO / "Dockerfile").exists()
        assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
        unknown = {key for key in proxy["environment"] if key not in readable}
        assert not unknown, f"{name}: the proxy reads no {unknown}"
        assert {"GMP_API_TOKEN", "GMP_SECRETS_KEY", "GMP_DB_PATH"} <= set(proxy["environment"])
        database = proxy["environment"]["GMP_DB_PATH"]
        assert re.fullmatch(
            r"postgresql://gmp:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432/gmp", database
        )
        assert (
            "python" in proxy["healthcheck"]["test"] and "curl" not in proxy["healthcheck"]["test"]
        )
        # SIGTERM may take the shutdown and last-report timeouts before the process exits.
        defaults = Config({}, environ={})
        needed = defaults.service.shutdown_timeout + defaults.reporting.flush_timeout
        assert float(proxy["stop_grace_period"].removesuffix("s")) > needed, name
        [port] = proxy["ports"]
        host, container = port.split(":")
        assert container == "8000"
        host_ports.add(host)
    assert len(host_ports) == len(several)  # each process on a port of its own
    # One queue only works with one secrets key and one token for all of them.
    environments = [proxy["environment"] for proxy in several.values()]
    assert all(env == environments[0] for env in environments)
    assert postgres["environment"]["POSTGRES_USER"] == "gmp"
    assert postgres["environment"]["POSTGRES_DB"] == "gmp"


async def test_the_compose_proxies_share_one_queue(
    image: Image, started: list[ImageProcess], postgres_url: str
) -> None:
    """Two processes started with the compose file's environment see one set of accounts
    and one suspend switch: they share the database."""
    # What `docker compose up` is given (the variables its comment asks for).
    compose_env = {
        "GMP_API_TOKEN": TOKEN,
        "GMP_SECRETS_KEY": base64.b64encode(os.urandom(32)).decode(),
        "POSTGRES_PASSWORD": "unused-here",
    }
    urls = []
    for name, proxy in proxies(compose()["services"]).items():
        env = {
            key: interpolate(str(value), compose_env) for key, value in proxy["environment"].items()
        }
        assert env["GMP_DB_PATH"].endswith("@postgres:5432/gmp"), name
        env["GMP_DB_PATH"] = postgres_url  # the compose file's `postgres` service, here
        process = ImageProcess(image.command(), image.environment(free_port(), **env), image.data)
        started.append(await process.start())
        urls.append(process.url)

    headers = {"X-API-Token": TOKEN}
    first, second = (httpx.AsyncClient(base_url=url, headers=headers, timeout=30) for url in urls)
    async with first, second:
        account = {"id": "shared", "host": "127.0.0.1", "port": 9, "tls": "none", "password": "pw"}
        assert (await first.post("/account", json=account)).status_code == 200
        listed = (await second.get("/accounts")).json()["accounts"]
        assert [(a["id"], a["has_password"]) for a in listed] == [("shared", True)]
        assert (await first.post("/commands/suspend")).json()["active"] is False

        async def second_is_suspended() -> bool:
            return (await second.get("/status")).json()["active"] is False

        await wait_until(second_is_suspended)
        for client in (first, second):
            assert (await client.get("/ready")).status_code == 200
    for process in started:
        assert await process.stop(signal.SIGTERM) == 0
    assert "stored in clear" not in "".join(p.log.decode() for p in started)  # the key was read
