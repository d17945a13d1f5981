"""The base install pulls neither boto nor aiohttp: they come only with the [s3] extra."""

from __future__ import annotations

import re
from importlib import metadata

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
    assert any(r.name == "genro-storage" and "s3" in r.extras for r in s3)
