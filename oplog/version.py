"""The installed version of oplog, from the package metadata (``oplog --version``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version


def version() -> str:
    """The version of the installed ``oplog`` distribution (``"unknown"`` when running
    from a checkout that was never installed)."""
    try:
        return _distribution_version("oplog")
    except PackageNotFoundError:
        return "unknown"
