"""The exact ``pip install`` that brings back a backend's missing library.

Every backend comes with the base install; a library can still be missing (uninstalled by
hand, an installation built with ``--no-deps``). The command names our own requirement on
the distribution, as the installed metadata declares it, so it never drifts from
``pyproject.toml``.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "genro-mail-proxy"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def pip_install(distribution: str) -> str:
    """``pip install "genro-storage[s3]<0.9,>=0.8.4"``, for ``distribution`` as the base
    install requires it (or unversioned when this package's metadata cannot say)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        requirements = []
    for line in requirements:
        if ";" in line:  # an extra's, or another platform's
            continue
        name = _NAME.match(line)
        if name is not None and _normal(name.group()) == _normal(distribution):
            return f'pip install "{line.strip()}"'
    return f'pip install "{distribution}"'


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
