"""The installed matmine version, for every program's ``--version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """``matmine``'s version as installed (``unknown`` when run from a bare source tree)."""
    try:
        return version("matmine")
    except PackageNotFoundError:
        return "unknown"
