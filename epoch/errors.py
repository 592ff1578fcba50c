"""Errors raised by the ``epoch`` package."""

from __future__ import annotations

from oplog.errors import OplogError


class EpochError(OplogError):
    """Base class for epoch arithmetic and assignment errors."""


class ConfigRejected(EpochError, ValueError):
    """A config message that cannot take effect (e.g. it would move a boundary that
    ops may already have been assigned by)."""
