"""``python -m oplog`` and the ``oplog`` command: the command line of ``peer.cli``.

The command line is the composition root's (``peer``), and it needs the ``peer`` extra
(Dolt, the NATS server binary, ...). This is the one place the ``oplog`` package
reaches up to ``peer``: lazily, inside :func:`main`, only to hand the command line over
(decisions.md #39; ``tests/test_layers.py`` allows exactly this import). So importing
``oplog`` never imports ``peer``, and a producer-only install, which has no ``peer``
extra, gets one line saying what to install instead of a traceback.
"""

from __future__ import annotations

import sys

# Top-level modules of the `peer` extra's distributions.
PEER_EXTRA_MODULES = ("doltlite", "pycrdt", "pymysql", "prometheus_client", "apscheduler")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        import doltlite  # noqa: F401  (must be imported before anything imports sqlite3)

        from peer.cli import main as cli_main
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in PEER_EXTRA_MODULES:
            raise
        if args[:1] == ["--version"]:
            from oplog.version import version

            print(f"oplog {version()}")
            return 0
        print(f"oplog: the command line needs the peer extra (no module {e.name!r}): pip install 'oplog[peer]'",
              file=sys.stderr)  # fmt: skip
        return 2
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
