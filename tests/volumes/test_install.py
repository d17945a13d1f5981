"""The base install pulls neither boto nor aiohttp: they come only with the [s3] extra."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

HEAVY = {"boto3", "botocore", "aiobotocore", "s3fs", "aiohttp"}


def _base_closure(name: str) -> set[str]:
    """Distributions a plain ``pip install name`` needs (no extras), as installed here."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = _normal(todo.pop())
        if current in seen:
            continue
        seen.add(current)
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # only with an extra, or not on this platform
            todo.append(requirement.name)
    return seen


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_base_install_pulls_no_boto_and_no_aiohttp() -> None:
    closure = _base_closure("genro-mail-proxy")
    assert "genro-storage" in closure
    assert closure.isdisjoint(HEAVY), closure & HEAVY


def test_the_s3_extra_brings_the_s3_backend() -> None:
    requirements = [Requirement(line) for line in metadata.requires("genro-mail-proxy") or []]
    s3 = [r for r in requirements if r.marker and r.marker.evaluate({"extra": "s3"})]
    assert {r.name for r in s3} >= {"s3fs", "aiohttp"}


def test_a_volume_whose_extra_is_missing_stops_start_up_naming_it(tmp_path: Path) -> None:
    """Run where s3fs cannot be imported (a fresh interpreter: fsspec caches backends)."""
    tables = {
        "sql": {"url": str(tmp_path / "gmp.db")},
        "plugins": {"disable": ["rest"]},
        "volumes": {"mounts": [{"name": "bucket", "backend": "s3", "config": {"bucket": "att"}}]},
    }
    script = f"""
import asyncio, sys
sys.modules["s3fs"] = None  # as if installed without the [s3] extra
from gmp_core import Config, ConfigError, Service
try:
    asyncio.run(Service(Config({tables!r}, environ={{}})).start())
except ConfigError as exc:
    print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == (
        "[volumes] volume 'bucket': the s3 backend is not installed: "
        "pip install 'genro-mail-proxy[s3]' (s3fs is not installed)"
    )
