"""The installed GearKV version: one answer for ``gearkv --version``, the SDK and the build_info metrics."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The ``gearkv`` distribution's version; ``0+unknown`` when run from a source tree, not installed."""
    try:
        return metadata.version("gearkv")
    except metadata.PackageNotFoundError:
        return "0+unknown"
