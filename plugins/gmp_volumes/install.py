"""The exact ``pip install`` that brings back a backend's missing library.

Every backend comes with the base install; a library can still be missing (uninstalled by
hand, an installation built with ``--no-deps``). The command names our own requirements on
the distributions, as the installed metadata declares them, so it never drifts from
``pyproject.toml``.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "genro-mail-proxy"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class MissingLibrary(RuntimeError):
    """A backend's library cannot be imported; the text says what to run."""

    def __init__(self, backend: str, error: ImportError, *distributions: str) -> None:
        missing = error.name or str(error)
        super().__init__(
            f"the {backend} backend's library is missing ({missing} cannot be imported): "
            f"run {pip_install(*distributions)}"
        )


def pip_install(*distributions: str) -> str:
    """``pip install "s3fs>=2024.6" "aiohttp>=3.12"``: each of ``distributions`` as the base
    install requires it (unversioned when this package's metadata cannot say)."""
    wanted = {_normal(name): f'"{name}"' for name in distributions}
    for line in _base_requirements():
        name = _NAME.match(line)
        if name is not None and _normal(name.group()) in wanted:
            wanted[_normal(name.group())] = f'"{line.strip()}"'
    return "pip install " + " ".join(wanted.values())


def _base_requirements() -> list[str]:
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return []
    return [line for line in requirements if ";" not in line]  # not an extra's, nor a platform's


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
