"""Tooling around oplog, apart from what a running peer needs: the loopback launchers of
real nats-server processes and peers (``natsd``, ``processes``), ``oplog dev`` and its demo
load, the chaos suite, the benchmark, and the generator of docs/cli.md.

It sits above the runtime (``peer`` → ``materializer`` → ``epoch`` → ``oplog``): it may
import all of them, and none of them imports it. ``oplog dev`` and ``oplog bench`` reach
the CLI through the ``oplog.commands`` entry points, not an import.
"""
