"""The ``oplog`` commands, one module per group; :mod:`peer.cli` assembles them.

Each module has ``register(subparsers)``, which adds its commands and sets each one's
``handler`` (an ``async def (args) -> exit status``). Configuration is read here and
only here — flags, with ``OPLOG_*`` environment defaults — and passed down as typed
values.
"""
