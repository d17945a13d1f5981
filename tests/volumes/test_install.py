"""The base install brings every backend the README lists (base64, local, S3, HTTP/HTTPS,
WebDAV), their libraries are imported only when a volume of their kind is mounted, and a
backend whose library is missing anyway is refused with the exact pip command to run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

# What the s3 backend pulls in (s3fs, boto, aiohttp under aiobotocore and for the address
# guard's connector): some 17 MB when imported; and genro-storage with fsspec, which local and
# memory volumes need (some 10 MB).
S3_LIBRARIES = {"s3fs", "aiobotocore", "botocore", "aiohttp"}
STORAGE_LIBRARIES = {"genro_storage", "fsspec"}


def _base_closure(name: str) -> set[str]:
    """Distributions a plain ``pip install name`` needs (no extras), as installed here."""
    seen: set[str] = set()
    todo = [Requirement(name)]
    while todo:
        requirement = todo.pop()
        current = _normal(requirement.name)
        key = f"{current}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(current) or []:
            needed = Requirement(line)
            wanted = [{"extra": extra} for extra in requirement.extras or [""]]
            if needed.marker and not any(needed.marker.evaluate(env) for env in wanted):
                continue  # only with an extra not asked for, or not on this platform
            todo.append(needed)
    return {key.split("[")[0] for key in seen}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_requirements(name: str) -> list[str]:
    """Our base install's requirement lines on ``name`` (``s3fs>=2024.6``)."""
    lines = metadata.requires("genro-mail-proxy") or []
    return [line for line in lines if ";" not in line and Requirement(line).name == name]


def test_the_base_install_brings_every_backend() -> None:
    closure = _base_closure("genro-mail-proxy")
    assert {"genro-storage", "s3fs", "aiohttp", "httpx", "dnspython"} <= closure
    assert {"aiobotocore", "botocore"} <= closure


def test_the_old_extras_still_install_and_add_nothing() -> None:
    """`pip install "genro-mail-proxy[s3]"` of older docs keeps working."""
    dist = metadata.metadata("genro-mail-proxy")
    assert {"s3", "http", "webdav"} <= set(dist.get_all("Provides-Extra") or [])
    requirements = [Requirement(line) for line in metadata.requires("genro-mail-proxy") or []]
    for extra in ("s3", "http", "webdav"):
        assert not [r for r in requirements if r.marker and r.marker.evaluate({"extra": extra})]


def run_fresh(script: str) -> Any:
    """Run ``script`` in a new interpreter (fsspec caches backends; sys.modules starts clean);
    it prints one JSON value."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def service_script(tables: dict[str, Any], before: str = "", after: str = "") -> str:
    return f"""
import asyncio, json, sys
{before}
from gmp_core import Config, ConfigError, Service

async def main():
    service = Service(Config({tables!r}, environ={{}}))
    try:
        await service.start()
    except ConfigError as exc:
        return str(exc)
    try:
        {after or "pass"}
        watched = {sorted(S3_LIBRARIES | STORAGE_LIBRARIES)!r}
        return sorted(name for name in watched if name in sys.modules)
    finally:
        await service.stop()

print(json.dumps(asyncio.run(main())))
"""


def tables(tmp_path: Path, *mounts: dict[str, Any]) -> dict[str, Any]:
    return {
        "sql": {"url": str(tmp_path / "gmp.db")},
        "plugins": {"disable": ["rest"]},
        "volumes": {"mounts": list(mounts)},
    }


def test_backend_libraries_are_imported_only_with_a_volume_of_their_kind(tmp_path: Path) -> None:
    assert run_fresh(service_script(tables(tmp_path))) == []
    local = {"name": "docs", "backend": "local", "config": {"base_path": str(tmp_path)}}
    assert set(run_fresh(service_script(tables(tmp_path, local)))) == STORAGE_LIBRARIES
    bucket = {
        "name": "bucket",
        "backend": "s3",
        "config": {"bucket": "att", "endpoint_url": "http://127.0.0.1:9", "anon": True},
    }
    # s3 goes through s3fs directly (built on fsspec), not through genro-storage
    assert set(run_fresh(service_script(tables(tmp_path, bucket)))) == S3_LIBRARIES | {"fsspec"}
    loaded = run_fresh(service_script(tables(tmp_path, local, bucket)))
    assert set(loaded) == S3_LIBRARIES | STORAGE_LIBRARIES


def test_a_backend_whose_library_is_missing_is_refused_with_the_pip_command(
    tmp_path: Path,
) -> None:
    """The S3 backend imports s3fs and aiohttp (its guarded connector): either missing names
    the one command that brings both back, as our metadata requires them."""
    bucket = {"name": "bucket", "backend": "s3", "config": {"bucket": "att"}}
    s3fs, aiohttp = base_requirements("s3fs"), base_requirements("aiohttp")
    assert len(s3fs) == len(aiohttp) == 1
    for library in ("s3fs", "aiohttp"):
        missing = f'sys.modules["{library}"] = None  # as if uninstalled'
        message = run_fresh(service_script(tables(tmp_path, bucket), before=missing))
        assert message == (
            f"[volumes] volume 'bucket': the s3 backend's library is missing ({library} cannot "
            f'be imported): run pip install "{s3fs[0]}" "{aiohttp[0]}"'
        )


def test_a_local_volume_without_genro_storage_is_refused_with_the_pip_command(
    tmp_path: Path,
) -> None:
    local = {"name": "docs", "backend": "local", "config": {"base_path": str(tmp_path)}}
    missing = 'sys.modules["genro_storage"] = None  # as if uninstalled'
    message = run_fresh(service_script(tables(tmp_path, local), before=missing))
    [requirement] = base_requirements("genro-storage")
    assert message == (
        "[volumes] volume 'docs': the local backend's library is missing (genro_storage cannot "
        f'be imported): run pip install "{requirement}"'
    )


def test_an_api_volume_whose_library_is_missing_is_refused_with_the_pip_command(
    tmp_path: Path,
) -> None:
    """Over the API too: POST /volume's refusal (422) says what to run."""
    put = """
        from gmp_core import InvalidInput
        from gmp_volumes import registry_of
        try:
            bucket = {"name": "b", "backend": "s3", "config": {"bucket": "att"}}
            await registry_of(service).put(bucket)
        except InvalidInput as exc:
            return str(exc)
"""
    missing = 'sys.modules["s3fs"] = None  # as if uninstalled'
    message = run_fresh(service_script(tables(tmp_path), before=missing, after=put.strip()))
    [s3fs], [aiohttp] = base_requirements("s3fs"), base_requirements("aiohttp")
    assert message == (
        "volume 'b': the s3 backend's library is missing (s3fs cannot be imported): run "
        f'pip install "{s3fs}" "{aiohttp}"'
    )


def test_http_volumes_without_httpx_are_refused_with_the_pip_command(tmp_path: Path) -> None:
    web = {"name": "web", "backend": "http", "config": {"base_url": "https://example.com/"}}
    missing = 'sys.modules["httpx"] = None  # as if uninstalled'
    # the plugins that import httpx themselves (the example webhook, when installed) are off
    disabled = {**tables(tmp_path, web), "plugins": {"disable": ["rest", "proxy_sync", "webhook"]}}
    message = run_fresh(service_script(disabled, before=missing))
    [requirement] = base_requirements("httpx")
    assert message == (
        f"[volumes] volume 'web': HTTP and WebDAV volumes need httpx: pip install \"{requirement}\""
    )
